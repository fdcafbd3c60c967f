"""Writing files whole or not at all: a temporary file beside the target, fsync, rename, then fsync of
the folder (so that the rename itself survives a power loss)."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a part."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
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


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` through `write_atomic`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_atomic(path, buf.getvalue())
