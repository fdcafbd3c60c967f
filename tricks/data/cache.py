"""Disk caches under the cache dir: archives extracted once, datasets decoded once into uint8 tensors.

`<cache_dir>/extracted/<key>/` holds an archive's contents; `<cache_dir>/tensors/<key>.pt` holds a
decoded dataset. Keys hash the source's fingerprint (paths, sizes, mtimes), so a changed source is
decoded again; an archive is keyed on the archive file, so a cache hit needs no extraction.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
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
from tricks.files import torch_save_atomic

FORMAT_VERSION = 1  # bump when readers change what they return, to drop old cache files
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(path: Path) -> bool:
    return Path(path).is_file() and Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()[:24]


def fingerprint(path: Path) -> list:
    """A file: [absolute path, size, mtime_ns]; a folder: [relative path, size, mtime_ns] per file."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]
    out = []

    def walk(folder: str, rel: str) -> None:
        for e in os.scandir(folder):
            if e.is_dir():
                walk(e.path, rel + e.name + "/")
            elif e.is_file():
                st = e.stat()
                out.append([rel + e.name, st.st_size, st.st_mtime_ns])

    walk(str(path), "")
    return sorted(out)


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
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob(f".{key}.*"):  # left by a killed extraction
        if time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".{key}."))
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
    torch_save_atomic({"version": FORMAT_VERSION, "format": fmt, "classes": list(classes),
                       "train_images": train.images, "train_labels": train.labels,
                       "test_images": test.images, "test_labels": test.labels}, file)
    return ImageData(name, classes, train, test, source, fmt)
