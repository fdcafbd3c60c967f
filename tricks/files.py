"""Writing files whole or not at all: a temporary file beside the target, fsync, rename, then fsync of
the folder (so that the rename itself survives a power loss).

A new file gets the mode the umask gives a file `open(..., "w")` creates (0644 under umask 022), a
replaced file keeps its mode: `tempfile.mkstemp` creates 0600, which a rename would keep. A write that
fails for want of space (ENOSPC, or EDQUOT: the user's quota) is a `DiskFullError` naming the file; the
temporary file is removed and the file it would have replaced is kept as it was.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable

from tricks.errors import DiskFullError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask: read from /proc/self/status (Linux), where setting and resetting it would race
    with other threads creating files; elsewhere by `os.umask` (set, then put back at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            found = re.search(r"^Umask:\s*([0-7]+)$", f.read(), re.MULTILINE)
        if found:
            return int(found.group(1), 8)
    except OSError:
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def no_space(e: BaseException | None) -> bool:
    """Whether `e`, or an error it was raised from or while handling, is an OSError saying the disk (or the
    quota) is full: torch's zip writer raises a RuntimeError ("unexpected pos") whose context is that OSError."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def disk_full(path: str | os.PathLike) -> DiskFullError:
    """The one-line error for `path` that could not be written for want of space (with the space left)."""
    path = Path(path)
    free = ""
    folder = next((p for p in (path.parent, *path.parents) if p.is_dir()), None)
    if folder is not None:
        try:
            free = f" ({_size(shutil.disk_usage(folder).free)} free there)"
        except OSError:
            pass
    return DiskFullError(f"no space left on device to write '{path}'{free}; free some space or give a path on "
                         "another disk (the files already written are kept)")


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def write_temporary(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], None],
                    prefix: str | None = None) -> Path:
    """Write `data` into a new temporary file beside `path` (named `prefix` + random + `.tmp`, by default
    `.<name>.`), fsync'd, with the mode `path` has or, if it does not exist, a new file's mode; return its path.
    `data` may be a function that writes into the open binary file (a torch.save of GBs, streamed).
    On any error the temporary file is removed; a full disk is a `DiskFullError` naming `path`."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = new_file_mode()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if no_space(e):  # an OSError, or the RuntimeError of torch's zip writer with that OSError as its context
            raise disk_full(path) from None
        raise
    return Path(tmp)


def write_atomic(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], None], *,
                 prefix: str | None = None, previous: str | os.PathLike | None = None) -> Path:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a part: the one writer
    of whole files in the project. `data`, `prefix`: as `write_temporary`. `previous`: the file `path` held
    is renamed to it first (the last checkpoint kept beside the new one)."""
    path = Path(path)
    tmp = write_temporary(path, data, prefix)
    try:
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder, so that the renames and removals in it are on disk (a no-op where not supported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
