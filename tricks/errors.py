"""The project's error types.

Library code raises these; only the command-line front ends (`recipes/cli.py`, `bench/cli.py`) turn
them into one line on stderr and exit code 2 (1 for a `TrainingError`: the input was valid, the
training went wrong). Each message is one line that names what was wrong and what would be right.
"""


class TricksError(Exception):
    """Base class of every error the user can fix by changing the input."""


class ConfigError(TricksError):
    """A recipe, trick, parameter, model or option that is unknown or out of range."""


class DataError(TricksError):
    """Data that cannot be found, read, or does not have the expected shape."""


class RunFolderError(TricksError):
    """A run folder that cannot be written without losing what is already there."""


class TrainingError(TricksError):
    """A fit that went wrong on valid input (e.g. a loss that became NaN or inf); the run folder is kept."""
