"""Disk caches under the cache dir: archives extracted once, datasets decoded once into uint8 tensors.

`<cache_dir>/extracted/<key>/` holds an archive's contents; `<cache_dir>/tensors/<key>.pt` holds a
decoded dataset. Keys hash the source's fingerprint (paths, sizes, mtimes), so a changed source is
decoded again; an archive is keyed on the archive file, so a cache hit needs no extraction.
"""
from __future__ import annotations

import contextlib
import gzip
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
from tricks.files import disk_full, no_space, write_atomic

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
    """`torch.save` to `file` atomically (`tricks.files.write_atomic`), streamed (a dataset can be GBs), through a
    temporary this process owns (see `remove_stale_temporaries`)."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(file.parent)
        write_atomic(file, lambda f: torch.save(obj, f), prefix=_tmp_prefix(file.name))
    except OSError as e:  # a full disk is already the DiskFullError naming `file`
        raise disk_full(file) if no_space(e) else _unwritable(cache_dir, e) from None


def cache_key(name: str, fmt: str, fp: list, size: tuple[int, int] | None) -> str:
    return _hash([FORMAT_VERSION, name, fmt, fp, list(size) if size else None])


# Bounds on what one archive may write, checked on each member's header before its bytes are written. The shared
# cifar10-jpeg.tar.gz (19,751,770 bytes) holds 60,023 members, 55,250,913 bytes in all (tests/test_hostile_data.py
# checks); torchvision's CIFAR archives (~163 MiB) hold under 10 members of about their own size in all, the largest
# cifar-100-python/train with 50,000 x 3,072 bytes of pixels (154 MB).
MAX_MEMBERS = 500_000
MAX_MEMBER_BYTES = 1 << 30          # 1 GiB
MAX_EXPANSION = 20                  # in all: at most 20 times the archive's size ...
MIN_TOTAL_BYTES = 1 << 30           # ... or 1 GiB, whichever is larger
BOUNDS_HINT = ("extract it yourself and pass the folder if you trust it (an archive may hold at most "
               f"{MAX_MEMBERS:,} members, {MAX_MEMBER_BYTES >> 30} GiB in one member, and {MAX_EXPANSION}x its size "
               f"or {MIN_TOTAL_BYTES >> 30} GiB in all)")


MAX_READ_BYTES = 1 << 20            # one read of tarfile's: a header, a GNU long name or a pax record (KiBs in
                                    # a real archive); member data is copied in 16 KiB reads


class BoundedReads:
    """The decompressed archive, every read at most `limit` bytes: tarfile reads a GNU long name or a pax header
    whole, before `bounded_members` sees its member, so a header claiming GiBs (a few MiB of gzip) would be read
    into memory. Written by hand: tarfile has no bound on them."""

    def __init__(self, stream, archive: Path, limit: int = MAX_READ_BYTES):
        self.stream, self.archive, self.limit = stream, archive, limit

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self.limit:
            raise DataError(f"archive '{self.archive}' has a header record of {size:,} bytes, over the "
                            f"{self.limit:,} allowed; refusing to extract it: {BOUNDS_HINT}")
        return self.stream.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()


@contextlib.contextmanager
def open_tar(archive: Path, read_limit: int = MAX_READ_BYTES):
    """`archive` (a tar, gzipped or not) as a TarFile reading through `BoundedReads`."""
    with open(archive, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        with (gzip.GzipFile(fileobj=raw) if gzipped else contextlib.nullcontext(raw)) as stream, \
                tarfile.open(fileobj=BoundedReads(stream, archive, read_limit), mode="r:") as tar:
            yield tar


def default_total_bytes(archive: Path) -> int:
    """The most bytes `archive` may extract to: `MAX_EXPANSION` times its size, or `MIN_TOTAL_BYTES`."""
    return max(MIN_TOTAL_BYTES, MAX_EXPANSION * Path(archive).stat().st_size)


def bounded_members(tar: tarfile.TarFile, archive: Path, max_members: int, max_member_bytes: int,
                    max_total_bytes: int):
    """`tar`'s members, read one header at a time; a DataError as soon as the member count, one member's size or
    the total size (headers' sizes: what extraction would write, a sparse member at its full size) is over its
    bound, before that member is written. Written by hand: tarfile checks paths and links (filter='data') only."""
    count = total = 0
    for member in tar:
        count += 1
        total += member.size
        if count > max_members:
            raise DataError(f"archive '{archive}' holds more than {max_members:,} members; refusing to extract it "
                            f"(an archive bomb?): {BOUNDS_HINT}")
        if member.size > max_member_bytes:
            raise DataError(f"archive '{archive}' member '{member.name}' is {member.size:,} bytes, over the "
                            f"{max_member_bytes:,} allowed for one member; refusing to extract it: {BOUNDS_HINT}")
        if total > max_total_bytes:
            raise DataError(f"archive '{archive}' would extract to more than {max_total_bytes:,} bytes (at member "
                            f"'{member.name}'); refusing to extract it: {BOUNDS_HINT}")
        yield member


def _new_cache_folders(cache_dir: Path) -> list[Path]:
    """The folders an extraction would create (deepest first), removed again when it fails and they are empty."""
    return [p for p in (Path(cache_dir) / "extracted", Path(cache_dir)) if not p.exists()]


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def extraction_folder(archive: Path, cache_dir: Path) -> Path:
    """`<cache_dir>/extracted/<key>`, the key from `archive`'s absolute path, size and mtime."""
    st = archive.stat()
    return Path(cache_dir) / "extracted" / _hash([os.path.abspath(archive), st.st_size, st.st_mtime_ns])


def extract_archive(archive: Path, cache_dir: Path, *, max_members: int = MAX_MEMBERS,
                    max_member_bytes: int = MAX_MEMBER_BYTES, max_total_bytes: int | None = None) -> Path:
    """Extract `archive` once into `<cache_dir>/extracted/<key>/` (via a temp dir and a rename), within the bounds
    (`max_total_bytes` None: `default_total_bytes`); a refused or failed extraction leaves nothing behind."""
    dest = extraction_folder(archive, cache_dir)
    base, key = dest.parent, dest.name
    if dest.is_dir():
        return dest
    total_bytes = default_total_bytes(archive) if max_total_bytes is None else max_total_bytes
    new_folders = _new_cache_folders(cache_dir)
    try:
        base.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(base)  # left by a killed extraction
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=_tmp_prefix(key)))
    except OSError as e:
        raise _unwritable(Path(cache_dir), e) from None
    try:
        with open_tar(archive) as tar:
            tar.extractall(tmp, members=bounded_members(tar, archive, max_members, max_member_bytes, total_bytes),
                           filter="data")
        os.rename(tmp, dest)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_if_empty(new_folders)
        if dest.is_dir():  # another process finished first
            return dest
        if no_space(e):
            raise disk_full(dest) from None
        raise DataError(f"cannot extract archive '{archive}' into '{base}': {type(e).__name__}: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_if_empty(new_folders)
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


def _read_archive(archive: Path, cache_dir: Path, size: tuple[int, int] | None,
                  prefer: tuple[str, ...]) -> tuple[tuple[str, ...], Split, Split, str]:
    """Extract `archive` and read it: (classes, train, test, format); an extraction this call made whose data
    cannot be read (a refused pickle, a bad image) is removed again, so a failed load leaves nothing in the cache
    (one another process made, and may be reading, is left to it)."""
    new_folders = _new_cache_folders(cache_dir)
    made_here = not extraction_folder(archive, cache_dir).is_dir()
    extracted = extract_archive(archive, cache_dir)
    try:
        fmt, folder = formats.detect_format(extracted, prefer=prefer)
        return (*formats.read_format(fmt, folder, size), fmt)
    except BaseException:
        if made_here:
            shutil.rmtree(extracted, ignore_errors=True)
            _remove_if_empty(new_folders)
        raise


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
        classes, train, test, fmt = _read_archive(path, cache_dir, size, prefer)
    else:
        classes, train, test = formats.read_format(fmt, folder, size)
    _save({"version": FORMAT_VERSION, "format": fmt, "classes": list(classes),
           "train_images": train.images, "train_labels": train.labels,
           "test_images": test.images, "test_labels": test.labels}, file, Path(cache_dir))
    return ImageData(name, classes, train, test, source, fmt)
