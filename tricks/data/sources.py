"""Where a dataset comes from, and `load_dataset`, the one entry point of the data layer.

Order: the `data` argument; else `$TRICKS_DATA` (a dataset, or a folder holding `<name>` or
`<name>.tar.gz`); else the dataset's default locations in `DATASETS`; else torchvision's download
into `<cache_dir>/downloads`. Known datasets are checked against their expected classes and shape.
"""
from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from tricks.data.cache import load_cached
from tricks.data.formats import ImageData
from tricks.errors import ConfigError, DataError
from tricks.registry import unknown_name_message

DOWNLOAD_TIMEOUT_S = 10


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset name expects, where to look for it, and how to normalise it."""

    num_classes: int | None = None          # None: any
    channels: int | None = None
    size: tuple[int, int] | None = None     # (H, W) before any `size=` resize
    mean: tuple[float, ...] | None = None   # per channel, of the 0..1 pixels; None: compute from data
    std: tuple[float, ...] | None = None
    formats: tuple[str, ...] = ()           # preferred when a folder holds several layouts
    folder_names: tuple[str, ...] = ()      # tried under $TRICKS_DATA (also + .tar.gz/.tgz/.tar)
    locations: tuple[str, ...] = ()         # default places; '{cache}' is the cache dir
    torchvision: str | None = None          # torchvision.datasets class that downloads it
    download_folder: str | None = None      # where that download lands under <cache>/downloads
    classes: tuple[str, ...] | None = None  # names for formats that carry none (idx)


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        formats=("cifar-pickle", "image-folder"), folder_names=("cifar10", "cifar-10-batches-py"),
        locations=("{cache}/downloads/cifar-10-batches-py", "~/.fastai/data/cifar10", "~/data/cifar10",
                   "~/data/cifar-10-batches-py", "/usr/share/datasets/cifar10"),
        torchvision="CIFAR10", download_folder="cifar-10-batches-py"),
    "cifar100": DatasetSpec(
        100, 3, (32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        formats=("cifar100-pickle", "image-folder"), folder_names=("cifar100", "cifar-100-python"),
        locations=("{cache}/downloads/cifar-100-python", "~/data/cifar100", "~/data/cifar-100-python",
                   "/usr/share/datasets/cifar100"),
        torchvision="CIFAR100", download_folder="cifar-100-python"),
    "fashion-mnist": DatasetSpec(
        10, 1, (28, 28), (0.2860,), (0.3530,),
        formats=("idx", "image-folder"), folder_names=("fashion-mnist", "fashion_mnist", "FashionMNIST"),
        locations=("/usr/share/datasets/fashion-mnist", "{cache}/downloads/FashionMNIST/raw",
                   "~/data/fashion-mnist", "~/data/FashionMNIST/raw"),
        torchvision="FashionMNIST", download_folder="FashionMNIST/raw",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
    "folder": DatasetSpec(),
}

HOW_TO_SUPPLY = "pass --data PATH or set TRICKS_DATA to a dataset folder or archive"


def default_cache_dir() -> Path:
    """`$TRICKS_CACHE`, else `~/.cache/fastai-tricks`."""
    return Path(os.environ.get("TRICKS_CACHE") or "~/.cache/fastai-tricks").expanduser()


def _download(spec: DatasetSpec, cache_dir: Path) -> Path:
    """torchvision's download, with a short socket timeout so that no network fails fast."""
    import torchvision.datasets

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        getattr(torchvision.datasets, spec.torchvision)(root=str(cache_dir / "downloads"), train=True, download=True)
    finally:
        socket.setdefaulttimeout(old)
    return cache_dir / "downloads" / spec.download_folder


def find_data(name: str, data: str | os.PathLike | None, cache_dir: Path, download: bool) -> Path:
    """The path to read dataset `name` from, by the order in the module docstring."""
    spec = DATASETS[name]
    if data is not None:
        path = Path(data).expanduser()
        if not path.exists():
            raise DataError(f"data path '{data}' does not exist; {HOW_TO_SUPPLY}")
        return path
    env = os.environ.get("TRICKS_DATA")
    if env:
        root = Path(env).expanduser()
        if not root.exists():
            raise DataError(f"TRICKS_DATA path '{env}' does not exist; "
                            "set it to a dataset folder or archive, or a folder holding them")
        names = (name, *spec.folder_names)
        for cand in (root / f"{n}{ext}" for n in names for ext in ("", ".tar.gz", ".tgz", ".tar")):
            if cand.exists():
                return cand
        return root
    if name == "folder":
        raise DataError(f"dataset 'folder' needs a path; {HOW_TO_SUPPLY}")
    looked = []
    for loc in spec.locations:
        path = Path(loc.replace("{cache}", str(cache_dir))).expanduser()
        looked.append(str(path))
        if path.exists():
            return path
    if not download or not spec.torchvision:
        tried = "download is off"
    else:
        try:
            return _download(spec, cache_dir)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            tried = f"download into '{cache_dir / 'downloads'}' failed ({type(e).__name__}: {first})"
    raise DataError(f"no {name} data found; looked in {', '.join(looked)}; {tried}; {HOW_TO_SUPPLY}")


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = size
        if int(h) == h and int(w) == w and h > 0 and w > 0:
            return int(h), int(w)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"size must be (height, width) with positive integers, got {size!r}")


def _validate(name: str, spec: DatasetSpec, d: ImageData, size: tuple[int, int] | None) -> None:
    want_size = size or spec.size
    if ((spec.num_classes and d.num_classes != spec.num_classes) or (spec.channels and d.channels != spec.channels)
            or (want_size and d.size != want_size)):
        got = f"{d.num_classes} classes of {d.channels}x{d.size[0]}x{d.size[1]} images"
        want = f"{spec.num_classes} classes of {spec.channels}x{want_size[0]}x{want_size[1]} images"
        raise DataError(f"'{d.source}' holds {got}; {name} expects {want} (load it as dataset 'folder' to accept any)")


def load_dataset(name: str, data: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
                 download: bool = True, size: tuple[int, int] | None = None) -> ImageData:
    """Find, read (through the tensor cache) and check dataset `name`; `size=(H, W)` resizes every image."""
    if name not in DATASETS:
        raise ConfigError(unknown_name_message("dataset", name, DATASETS))
    spec, size = DATASETS[name], _check_size(size)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = find_data(name, data, cache_dir, download)
    d = load_cached(name, path, cache_dir, size, spec.formats)
    if spec.classes and d.format == "idx" and d.num_classes <= len(spec.classes):
        d = dataclasses.replace(d, classes=spec.classes)
    _validate(name, spec, d, size)
    return d
