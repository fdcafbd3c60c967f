"""Disk caches under the cache dir: archives extracted once, datasets decoded once into uint8 tensors.

`<cache_dir>/extracted/<key>/` holds an archive's contents; `<cache_dir>/tensors/<key>.pt` holds a
decoded dataset. Keys hash the source's fingerprint (paths, sizes, mtimes), so a changed source is
decoded again; an archive is keyed on the archive file, so a cache hit needs no extraction.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tarfile
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import torch

from tricks.data import formats
from tricks.data.formats import ImageData, Split
from tricks.errors import DataError
from tricks.files import fsync_dir

FORMAT_VERSION = 1  # bump when readers change what they return, to drop old cache files
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(path: Path) -> bool:
    return Path(path).is_file() and Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()[:24]


def fingerprint(path: Path) -> list:
    """A file: [absolute path, size, mtime_ns]; a folder: [relative path, size, mtime_ns] per file (sub-folders
    and links to folders included; a link that loops is a DataError)."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]
    out = []
    for folder, name in formats.walk(path, hidden_dirs=True):
        full = os.path.join(folder, name)
        st = os.stat(full)
        out.append([os.path.relpath(full, path).replace(os.sep, "/"), st.st_size, st.st_mtime_ns])
    return sorted(out)


# ---- temporaries: named after the host and process that writes them, removed when that process is gone ----

HOST = socket.gethostname().replace(".", "_")
STALE_AFTER_S = 24 * 3600  # a temporary of another host (or an older version's, without a pid) is stale after this


def _tmp_prefix(name: str) -> str:
    return f".{name}.{HOST}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, another user's
        return True
    return True


def _stale(entry: os.DirEntry) -> bool:
    parts = entry.name.split(".")
    for i in range(1, len(parts) - 1):  # .NAME.HOST.PID.XXXX[.tmp]; NAME may hold dots
        if parts[i] == HOST and parts[i + 1].isdigit():
            pid = int(parts[i + 1])
            return pid != os.getpid() and not _pid_alive(pid)
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
    except OSError:
        return False


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Remove the temporaries in `folder` (`.NAME.HOST.PID.XXXX` files and folders) whose process has ended
    (killed during an extraction or a decode); returns their names."""
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return removed
    for e in entries:
        if e.name.endswith(".tmp") or e.is_dir(follow_symlinks=False):
            if _stale(e):
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)
                removed.append(e.name)
    return removed


def _unwritable(cache_dir: Path, e: OSError) -> DataError:
    where = f"'{e.filename}'" if e.filename else f"'{cache_dir}'"
    return DataError(f"the data cache '{cache_dir}' cannot be written ({where}: {e.strerror or e}); set "
                     "TRICKS_CACHE to a folder you can write to")


def _save(obj, file: Path, cache_dir: Path) -> None:
    """`torch.save` to `file` atomically, through a temporary this process owns (see `remove_stale_temporaries`)."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(file.parent)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=_tmp_prefix(file.name), suffix=".tmp")
    except OSError as e:
        raise _unwritable(cache_dir, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
        fsync_dir(file.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _unwritable(cache_dir, e) from None
        raise


def cache_key(name: str, fmt: str, fp: list, size: tuple[int, int] | None) -> str:
    return _hash([FORMAT_VERSION, name, fmt, fp, list(size) if size else None])


def extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Extract `archive` once into `<cache_dir>/extracted/<key>/` (via a temp dir and a rename)."""
    st = archive.stat()
    key = _hash([os.path.abspath(archive), st.st_size, st.st_mtime_ns])
    base = Path(cache_dir) / "extracted"
    dest = base / key
    if dest.is_dir():
        return dest
    try:
        base.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(base)  # left by a killed extraction
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=_tmp_prefix(key)))
    except OSError as e:
        raise _unwritable(Path(cache_dir), e) from None
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        os.rename(tmp, dest)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if dest.is_dir():  # another process finished first
            return dest
        raise DataError(f"cannot extract archive '{archive}' into '{base}': {type(e).__name__}: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _load(file: Path) -> dict | None:
    """The cached dict, or None when absent, unreadable or of another version (then decoded again)."""
    if not file.is_file():
        return None
    try:
        d = torch.load(file, weights_only=True)
        if d.get("version") != FORMAT_VERSION:
            return None
        d["train"] = Split(d.pop("train_images"), d.pop("train_labels"))
        d["test"] = Split(d.pop("test_images"), d.pop("test_labels"))
        d["classes"] = tuple(d["classes"])
        if not isinstance(d["format"], str) or not all(isinstance(c, str) for c in d["classes"]):
            raise TypeError("format and classes must be strings")
        return d
    except Exception as e:
        warnings.warn(f"ignoring unreadable cache file '{file}' ({type(e).__name__}); decoding the data again")
        return None


def load_cached(name: str, path: Path, cache_dir: Path, size: tuple[int, int] | None = None,
                prefer: tuple[str, ...] = ()) -> ImageData:
    """Load `path` (folder, file in a dataset folder, or archive) as dataset `name`, through the cache."""
    path = Path(os.path.abspath(path))
    archive = is_archive(path)
    if archive:
        fmt, folder = "archive", None
        key = cache_key(name, fmt, fingerprint(path), size)
    else:
        fmt, folder = formats.detect_format(path, max_depth=0 if path.is_file() else 3, prefer=prefer)
        key = cache_key(name, fmt, fingerprint(folder), size)
    file = Path(cache_dir) / "tensors" / f"{key}.pt"
    source = str(path if archive else folder)
    hit = _load(file)
    if hit is not None:
        return ImageData(name, hit["classes"], hit["train"], hit["test"], source, hit["format"])
    if archive:
        fmt, folder = formats.detect_format(extract_archive(path, cache_dir), prefer=prefer)
    classes, train, test = formats.read_format(fmt, folder, size)
    _save({"version": FORMAT_VERSION, "format": fmt, "classes": list(classes),
           "train_images": train.images, "train_labels": train.labels,
           "test_images": test.images, "test_labels": test.labels}, file, Path(cache_dir))
    return ImageData(name, classes, train, test, source, fmt)
