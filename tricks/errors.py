"""The project's error types.

Library code raises these; only the command-line front ends (`recipes/cli.py`, `bench/cli.py`) turn
them into one line on stderr and an exit code: 2 for bad input; `recipe` exits 1 for a `TrainingError`
(the input was valid, the training went wrong) and 128 + the signal for an interrupted fit
(`recipes.checkpoint.Interrupted`). Each message is one line that names what was wrong and what would be right.
"""


class TricksError(Exception):
    """Base class of every error the project raises on purpose: bad input (the subclasses below but
    `TrainingError`) or a training that went wrong on valid input (`TrainingError`)."""


class ConfigError(TricksError):
    """A recipe, trick, parameter, model or option that is unknown or out of range."""


class DataError(TricksError):
    """Data that cannot be found, read, or does not have the expected shape."""


class RunFolderError(TricksError):
    """A run folder that cannot be written without losing what is already there."""


class DiskFullError(RunFolderError):
    """A file that cannot be written because its filesystem (or the user's quota) is full; the file it would
    have replaced, and every other file already written, is kept (`tricks.files.write_atomic`)."""


class TrainingError(TricksError):
    """A fit that went wrong on valid input (e.g. a loss that became NaN or inf); the run folder is kept."""


def describe_os_error(e: OSError) -> str:
    """One line for an OSError no code turned into a TricksError: the file(s), what the system said, and for a
    file where a folder is needed (or the reverse), what to give instead. The front ends print it."""
    import errno

    where = (f"'{e.filename}'" + (f" -> '{e.filename2}'" if e.filename2 else "")) if e.filename else ""
    what = e.strerror or str(e) or type(e).__name__
    hint = {errno.EEXIST: "; it is not a folder: give another path",
            errno.ENOTDIR: "; a file stands where a folder is needed",
            errno.EISDIR: "; a folder stands where a file is needed",
            errno.EACCES: "; give a path you can write to", errno.EROFS: "; give a path on a writable filesystem",
            errno.ENOSPC: "; free some space or give a path on another disk",
            errno.EDQUOT: "; free some space or give a path on another disk"}.get(e.errno, "")
    return f"{where}: {what}{hint}" if where else f"{what}{hint}"


def one_line(error: BaseException) -> str:
    """The message alone, as one line: its last non-empty line, stripped (fastai prefixes errors raised in
    callbacks with a line naming the event); the error's type name when it has no message. The front ends
    print it and a bench job records it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
