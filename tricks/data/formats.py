"""On-disk image-classification formats: find which one a folder holds and read it into uint8 tensors.

Four layouts are read: torchvision's `cifar-10-batches-py` and `cifar-100-python` pickles, the idx
files of (Fashion-)MNIST, and fastai's image folder (`train/<class>/*.png` + `test|valid|val/...`).
Each reader returns class names and two `Split`s; `read_format` also resizes when a size is asked.
Images are ordered as stored: pickle/idx order, or for an image folder by class then file name.
"""
from __future__ import annotations

import collections
import contextlib
import gzip
import math
import os
import pickle
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from tricks.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TEST_FOLDERS = ("test", "valid", "val")
ACCEPTED_LAYOUTS = (
    "cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta); "
    "cifar-100-python (train, test, meta); "
    "idx files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...); "
    "an image folder (train/<class>/*.png|jpg and test|valid|val/<class>/...); "
    "or a .tar/.tar.gz/.tgz of one of these"
)


@dataclass(frozen=True, eq=False)
class Split:
    """One split: `images` uint8 (N, C, H, W) contiguous on CPU, `labels` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        im, lb = self.images, self.labels
        if im.dtype != torch.uint8 or im.dim() != 4 or not im.is_contiguous() or im.device.type != "cpu":
            raise ValueError(f"Split.images must be a contiguous CPU uint8 (N, C, H, W) tensor, "
                             f"got {im.dtype} {tuple(im.shape)}")
        if lb.dtype != torch.int64 or lb.shape != (im.shape[0],):
            raise ValueError(f"Split.labels must be int64 of shape ({im.shape[0]},), got {lb.dtype} {tuple(lb.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True, eq=False)
class ImageData:
    """A loaded dataset: class names (index = label), train and test splits, and where it came from."""

    name: str
    classes: tuple[str, ...]
    train: Split
    test: Split
    source: str
    format: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[2:])


# --------------------------------------------------------------------------------------- detection

def _files(folder: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(folder) if e.is_file()}
    except OSError:
        return set()


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _test_folder(folder: Path) -> Path | None:
    return next((folder / t for t in TEST_FOLDERS if (folder / t).is_dir()), None)


def format_at(folder: Path) -> str | None:
    """The format stored directly in `folder`, or None."""
    files = _files(folder)
    if {"batches.meta", "data_batch_1", "test_batch"} <= files:
        return "cifar-pickle"
    if {"meta", "train", "test"} <= files:
        return "cifar100-pickle"
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if all(_idx_file(folder, s) for s in stems):
        return "idx"
    if (folder / "train").is_dir() and _test_folder(folder):
        return "image-folder"
    return None


def detect_format(path: Path, max_depth: int = 3, prefer: tuple[str, ...] = ()) -> tuple[str, Path]:
    """(format, folder) found in `path` or up to `max_depth` levels down, shallowest first.

    Among several finds at the same depth, a format in `prefer` wins, else the first by name.
    """
    path = Path(path)
    level = [path] if path.is_dir() else [path.parent]
    for depth in range(max_depth + 1):
        found = [(f, d) for d in level if (f := format_at(d))]
        if found:
            return next((x for x in found if x[0] in prefer), found[0])
        if depth == max_depth:
            break
        nxt = []
        for d in level:
            try:
                nxt += sorted(Path(e.path) for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
            except OSError:
                pass
        level = nxt
    raise DataError(f"no known dataset layout found in '{path}' (searched {max_depth} levels down); "
                    f"accepted: {ACCEPTED_LAYOUTS}")


# ------------------------------------------------------------------------------------ cifar pickle

def _latin1(text: str, encoding: str) -> bytes:
    """`_codecs.encode` as protocol-2 pickles of `bytes` call it (`encode(text, 'latin1')`), and no other codec."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} (only 'latin1' makes bytes)")
    return text.encode("latin1")


def _empty_bytes(*args) -> bytes:
    """`bytes()` as protocol-2 pickles of b'' call it (an empty array's data), with no argument and so no size."""
    if args:
        raise pickle.UnpicklingError(f"bytes called with {len(args)} argument(s) (only bytes() makes b'')")
    return b""


# The only globals a CIFAR pickle names (checked with `pickletools.dis` on torchvision's files, written by Python 2
# and NumPy 1, and on files written by Python 3 and NumPy 2): NumPy's array reconstruction under both of NumPy's
# module names, the array and dtype types, and the calls that protocol 2 uses for bytes under Python 3.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct, whichever this NumPy has
CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
    ("__builtin__", "bytes"): _empty_bytes,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle that names a global outside `CIFAR_PICKLE_GLOBALS`: refused before anything is imported."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, tuples, bytes, strings, numbers and NumPy arrays: `find_class`
    answers from `CIFAR_PICKLE_GLOBALS` and raises `ForbiddenGlobal` for any other name, so no code a file names
    runs. The standard library's documented way to restrict unpickling (pickle docs, "Restricting Globals")."""

    def find_class(self, module: str, name: str):
        try:
            return CIFAR_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(module, name) from None


def _unpickle(file: Path) -> dict:
    """A CIFAR pickle, read by `CifarUnpickler` (a file naming any other global is a DataError; nothing runs)."""
    try:
        with open(file, "rb") as f:
            d = CifarUnpickler(f, encoding="bytes").load()
    except ForbiddenGlobal as e:
        raise DataError(f"refusing CIFAR pickle '{file}': it asks to load '{e.qualname}', which no CIFAR file holds "
                        "(only dicts, lists, bytes, strings, numbers and NumPy arrays are read); nothing was run: "
                        "replace it with an intact copy of the dataset") from None
    except Exception as e:
        why = (str(e).splitlines() or [""])[0]
        raise DataError(f"cannot read CIFAR pickle '{file}' ({type(e).__name__}: {why}); replace it with an intact "
                        "copy of the dataset") from None
    if not isinstance(d, dict):
        raise DataError(f"CIFAR pickle '{file}' does not hold a dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _field(d: dict, key: str, file: Path):
    if key not in d:
        raise DataError(f"CIFAR pickle '{file}' has no '{key}' entry")
    return d[key]


def _names(values) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _cifar_split(files: list[Path], label_key: str, num_classes: int) -> Split:
    images, labels = [], []
    for file in files:
        d = _unpickle(file)
        data = np.asarray(_field(d, "data", file))
        try:
            lab = np.asarray(_field(d, label_key, file), dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"CIFAR pickle '{file}' has '{label_key}' that are not integers; "
                            f"expected one integer 0..{num_classes - 1} per image") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or lab.shape != (data.shape[0],):
            raise DataError(f"CIFAR pickle '{file}' holds data {data.dtype} {data.shape} and {lab.size} labels; "
                            "expected uint8 (N, 3072) and N labels")
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            bad = int(lab.min()) if lab.min() < 0 else int(lab.max())
            raise DataError(f"labels in '{file}' must be 0..{num_classes - 1}, found {bad} "
                            f"(the dataset names {num_classes} classes)")
        images.append(torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32))
        labels.append(torch.from_numpy(lab))
    return Split(torch.cat(images).contiguous(), torch.cat(labels))


def read_cifar10(folder: Path) -> tuple[tuple[str, ...], Split, Split]:
    classes = _names(_field(_unpickle(folder / "batches.meta"), "label_names", folder / "batches.meta"))
    batches = sorted((int(p.name[11:]), p) for p in folder.glob("data_batch_*") if p.name[11:].isdigit())
    n = len(classes)
    return classes, _cifar_split([p for _, p in batches], "labels", n), _cifar_split([folder / "test_batch"], "labels", n)


def read_cifar100(folder: Path) -> tuple[tuple[str, ...], Split, Split]:
    classes = _names(_field(_unpickle(folder / "meta"), "fine_label_names", folder / "meta"))
    n = len(classes)
    return classes, _cifar_split([folder / "train"], "fine_labels", n), _cifar_split([folder / "test"], "fine_labels", n)


# --------------------------------------------------------------------------------------------- idx

IDX_MAX_BYTES = 1 << 30  # the most data read from one idx file: its header (in a small .gz, too) may claim any size


def _read_idx(file: Path, magic: int) -> torch.Tensor:
    """An idx file of unsigned bytes, read no further than the size its header gives, at most `IDX_MAX_BYTES` (so a
    small .gz cannot expand without bound in memory); parsed by hand since torchvision's reader is private API."""
    try:
        with gzip.open(file, "rb") if file.suffix == ".gz" else open(file, "rb") as f:
            head = f.read(4)
            got = int.from_bytes(head, "big") if len(head) == 4 else None
            if got != magic:
                raise DataError(f"idx file '{file}' has magic number {got}; expected {magic}")
            ndim = magic & 0xFF
            header = f.read(4 * ndim)
            dims = [int.from_bytes(header[4 * i: 4 * i + 4], "big") for i in range(len(header) // 4)]
            count = math.prod(dims)
            if len(dims) == ndim and count > IDX_MAX_BYTES:
                raise DataError(f"idx file '{file}' has a header {dims} that says {count:,} bytes of data, over the "
                                f"{IDX_MAX_BYTES:,} read from one idx file; give the idx files of an image dataset")
            data = f.read(count + 1) if len(dims) == ndim else b""
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"cannot read idx file '{file}': {e}") from None
    if len(dims) != ndim:
        raise DataError(f"idx file '{file}' ends inside its header; expected {ndim} sizes after the magic number")
    if len(data) != count:
        held = f"{len(data)}" if len(data) < count else f"more than {count}"
        raise DataError(f"idx file '{file}' holds {held} bytes of data; its header {dims} says {count}")
    if not count:  # torch.frombuffer refuses an empty buffer
        return torch.zeros(dims, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(dims)


def _idx_split(folder: Path, prefix: str) -> Split:
    images = _read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"), 2051)
    labels = _read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"), 2049).long()
    if len(labels) != len(images):
        raise DataError(f"idx files in '{folder}' hold {len(images)} {prefix} images but {len(labels)} labels")
    return Split(images.unsqueeze(1).contiguous(), labels)


def read_idx(folder: Path) -> tuple[tuple[str, ...], Split, Split]:
    """Idx files carry no class names: they are '0', '1', ... (sources.py names Fashion-MNIST's)."""
    train, test = _idx_split(folder, "train"), _idx_split(folder, "t10k")
    labels = torch.cat([train.labels, test.labels])
    n = int(labels.max()) + 1 if len(labels) else 0
    return tuple(str(i) for i in range(n)), train, test


# ------------------------------------------------------------------------------------ image folder

def _entry_kind(entry: os.DirEntry) -> str | None:
    """'file', 'dir' or None (anything else, or a link to nothing); a symbolic-link loop is a DataError."""
    try:
        return "dir" if entry.is_dir() else "file" if entry.is_file() else None
    except OSError as e:
        raise DataError(f"'{entry.path}' cannot be read ({e.strerror}: a symbolic-link loop?); remove or fix "
                        "it") from None


def walk(folder: str | os.PathLike, *, hidden_dirs: bool = False) -> list[tuple[str, str]]:
    """(folder, name) of every file under `folder`, sub-folders included, following links to folders;
    sorted by folder, then name (as torchvision's ImageFolder walks). A folder link that leads back to
    a folder it is in (a loop) is a DataError that names it."""
    out: list[tuple[str, str]] = []

    def visit(path: str, above: set[tuple[int, int]]) -> None:
        try:
            st = os.stat(path)
            entries = list(os.scandir(path))
        except OSError as e:
            raise DataError(f"folder '{path}' cannot be read ({e.strerror})") from None
        here = above | {(st.st_dev, st.st_ino)}
        for e in entries:
            kind = _entry_kind(e)
            if kind == "file":
                out.append((path, e.name))
            elif kind == "dir" and (hidden_dirs or not e.name.startswith(".")):
                inner = e.stat()
                if (inner.st_dev, inner.st_ino) in here:
                    raise DataError(f"'{e.path}' is a symbolic link that loops back to "
                                    f"'{os.path.realpath(e.path)}'; remove it")
                visit(e.path, here)

    visit(os.fspath(folder), set())
    return sorted(out)


def _images_in(folder: Path) -> list[str]:
    """Image files in `folder` and its sub-folders (as torchvision's ImageFolder reads a class folder),
    sorted by folder then name (str paths: pathlib is slow for 60,000 files)."""
    return [os.path.join(d, n) for d, n in walk(folder) if n.lower().endswith(IMAGE_EXTENSIONS)]


def _to_uint8(t: torch.Tensor) -> torch.Tensor:
    """A 16-bit image (a 16-bit grayscale or RGB PNG) as 8 bits: its top 8 bits, as torchvision's
    `to_dtype(scale=True)` (PIL's convert('L') would clip every value above 255 to white)."""
    if t.dtype == torch.uint8:
        return t
    return TF.to_dtype(t, torch.uint8, scale=True)


def _file_bytes(path: str) -> torch.Tensor:
    """A file's bytes as a uint8 tensor, read by NumPy: torchvision's `read_file` takes only names that are valid
    UTF-8, and a name with other bytes (e.g. b'\\xff') comes from `os.scandir` surrogate-escaped."""
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8))


@contextlib.contextmanager
def _native_stderr_dropped_on_error():
    """Hold what C code writes to file descriptor 2 meanwhile (libjpeg's own 'Corrupt JPEG data: ...' lines) in a
    temporary file: written back to fd 2 when the block ends normally, dropped when it raises (the DataError's one
    line then says what was wrong). Written by hand: torchvision keeps libjpeg's default message handler, which
    prints to fd 2, and has no option to silence it."""
    held = tempfile.TemporaryFile()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a daemon): nothing to hold
        held.close()
        yield
        return
    failed = True
    try:
        sys.stderr.flush()
        os.dup2(held.fileno(), 2)
        yield
        failed = False
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if not failed:
            held.seek(0)
            text = held.read()
            while text:
                text = text[os.write(2, text):]
        held.close()


def _decode(paths: list[str], mode: ImageReadMode = ImageReadMode.UNCHANGED) -> list[torch.Tensor]:
    """Decode image files in a thread pool (torchvision's decoders release the GIL)."""

    def chunk(ps):
        out = []
        for p in ps:
            try:
                out.append(_to_uint8(decode_image(_file_bytes(p), mode=mode)))
            except Exception as e:
                why = (str(e).splitlines() or [type(e).__name__])[0]
                why = why.rsplit(".cpp:", 1)[-1].split(", ", 1)[-1] if ".cpp:" in why else why  # not the C++ source
                raise DataError(f"cannot decode image '{p}': {why}; replace or remove it") from None
        return out

    step = 256
    with _native_stderr_dropped_on_error(), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        parts = pool.map(chunk, [paths[i:i + step] for i in range(0, len(paths), step)])
        return [t for part in parts for t in part]


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _same_channels(paths: list[str], images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gray(+alpha) -> 1 channel, RGB(+alpha) -> 3; the minority mode is decoded again as the majority."""
    modes = [1 if t.shape[0] <= 2 else 3 for t in images]
    counts = collections.Counter(modes)
    target = max(counts, key=lambda m: (counts[m], m == modes[0]))  # a tie goes to the first image's
    redo = [i for i, t in enumerate(images) if t.shape[0] != target]
    if redo:
        mode = ImageReadMode.GRAY if target == 1 else ImageReadMode.RGB
        for i, t in zip(redo, _decode([paths[i] for i in redo], mode)):
            images[i] = t
    return images


def _same_size(paths: list[str], images: list[torch.Tensor], size: tuple[int, int] | None) -> list[torch.Tensor]:
    """Resize to `size` if given, else check that every image has the most common size."""
    if size is not None:
        return [t if tuple(t.shape[1:]) == tuple(size) else TF.resize(t, list(size), antialias=True) for t in images]
    want = collections.Counter(tuple(t.shape[1:]) for t in images).most_common(1)[0][0]
    for p, t in zip(paths, images):
        if tuple(t.shape[1:]) != want:
            raise DataError(f"image '{p}' is {t.shape[1]}x{t.shape[2]} but the others are {want[0]}x{want[1]}; "
                            "resize or remove it (or pass a size to load_dataset to resize all images)")
    return images


def read_image_folder(folder: Path, size: tuple[int, int] | None = None) -> tuple[tuple[str, ...], Split, Split]:
    """fastai's layout: classes are train/'s sorted subfolders; a class may be absent from test."""
    train_dir, test_dir = folder / "train", _test_folder(folder)
    classes = tuple(_subfolders(train_dir))
    if not classes:
        raise DataError(f"image folder '{train_dir}' has no class folders; expected train/<class>/*.png|jpg")
    extra = [c for c in _subfolders(test_dir) if c not in classes]
    if extra:
        raise DataError(f"'{test_dir}' has class folders not in train/: {', '.join(extra)}")
    paths, labels = {}, {}
    for split, root in (("train", train_dir), ("test", test_dir)):
        paths[split], labels[split] = [], []
        for label, c in enumerate(classes):
            files = _images_in(root / c) if (root / c).is_dir() else []
            if split == "train" and not files:
                raise DataError(f"class folder '{root / c}' has no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths[split] += files
            labels[split] += [label] * len(files)
    if not paths["test"]:
        raise DataError(f"'{test_dir}' has no images in class folders; expected {test_dir.name}/<class>/*.png|jpg")

    every = paths["train"] + paths["test"]
    images = _same_size(every, _same_channels(every, _decode(every)), size)
    n = len(paths["train"])
    return (classes,
            Split(torch.stack(images[:n]), torch.tensor(labels["train"], dtype=torch.int64)),
            Split(torch.stack(images[n:]), torch.tensor(labels["test"], dtype=torch.int64)))


# ----------------------------------------------------------------------------------------- reading

READERS = {"cifar-pickle": read_cifar10, "cifar100-pickle": read_cifar100, "idx": read_idx,
           "image-folder": read_image_folder}


def _resize(split: Split, size: tuple[int, int] | None) -> Split:
    if size is None or tuple(split.images.shape[2:]) == tuple(size):
        return split
    return Split(TF.resize(split.images, list(size), antialias=True).contiguous(), split.labels)


def read_format(fmt: str, folder: Path, size: tuple[int, int] | None = None) -> tuple[tuple[str, ...], Split, Split]:
    """Read `folder` as format `fmt`: (class names, train, test), resized to `size` if given."""
    if fmt == "image-folder":
        classes, train, test = read_image_folder(folder, size)
    else:
        classes, train, test = READERS[fmt](folder)
    if len(classes) < 2:
        named = f" ('{classes[0]}')" if classes else ""
        raise DataError(f"'{folder}' holds {len(classes)} class{named}; a classifier needs at least two: add the "
                        "other classes' images (e.g. a second train/<class> folder)")
    for name, s in (("train", train), ("test", test)):
        if not len(s):
            raise DataError(f"'{folder}' holds no {name} images; a dataset needs at least one train and one test "
                            "image")
        if int(s.labels.min()) < 0 or int(s.labels.max()) >= len(classes):
            raise DataError(f"{name} labels in '{folder}' range over {int(s.labels.min())}..{int(s.labels.max())} "
                            f"but there are {len(classes)} classes")
    if train.images.shape[1:] != test.images.shape[1:] and size is None:
        raise DataError(f"train images in '{folder}' are {tuple(train.images.shape[1:])} "
                        f"but test images are {tuple(test.images.shape[1:])}")
    return classes, _resize(train, size), _resize(test, size)


def read_images(folder: Path, channels: int, size: tuple[int, int]) -> tuple[list[str], torch.Tensor]:
    """Every png/jpg directly in `folder`, decoded to `channels` and resized to `size`: (paths, uint8 (N, C, H, W))."""
    paths = _images_in(Path(folder)) if Path(folder).is_dir() else []
    if not paths:
        raise DataError(f"no .png or .jpg images in '{folder}'; give a folder of images to predict")
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    images = _same_size(paths, _decode(paths, mode), size)
    return paths, torch.stack(images).contiguous()
