"""Where data comes from, the tensor cache, name checks, subsets, and the real datasets."""
from __future__ import annotations

import dataclasses
import gzip
import os
import socket
import tarfile
import time
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.io import decode_image

from fixtures import (CIFAR10_CLASSES, assert_matches, make_tar, shared_cifar10_archive, simple_image_folder,
                      write_cifar10, write_idx)
from tricks.data import DATASETS, class_balanced_subset, default_cache_dir, load_dataset
from tricks.data import formats, sources
from tricks.errors import ConfigError, DataError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _no_defaults(monkeypatch, name="cifar10", locations=()):
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], locations=tuple(map(str, locations))))


# ------------------------------------------------------------------------------------------ names

def test_unknown_name_suggests_close_ones(data_env):
    with pytest.raises(ConfigError, match="unknown dataset 'cifar1'; did you mean 'cifar10'"):
        load_dataset("cifar1")


def test_datasets_spec():
    assert set(DATASETS) == {"cifar10", "cifar100", "fashion-mnist", "folder"}
    assert DATASETS["cifar10"].mean == (0.4914, 0.4822, 0.4465) and DATASETS["cifar10"].std == (0.2470, 0.2435, 0.2616)
    assert DATASETS["cifar100"].mean == (0.5071, 0.4865, 0.4409) and DATASETS["cifar100"].std == (0.2673, 0.2564, 0.2762)
    assert DATASETS["fashion-mnist"].mean == (0.2860,) and DATASETS["fashion-mnist"].std == (0.3530,)
    assert DATASETS["folder"].mean is None and DATASETS["folder"].std is None
    assert (DATASETS["fashion-mnist"].num_classes, DATASETS["fashion-mnist"].channels, DATASETS["fashion-mnist"].size) == (10, 1, (28, 28))
    assert "/usr/share/datasets/fashion-mnist" in DATASETS["fashion-mnist"].locations


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TRICKS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TRICKS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "fastai-tricks"


@pytest.mark.parametrize("size", [(0, 4), (4,), "32", (2.5, 3), (-1, 2)])
def test_bad_size_is_a_config_error(tmp_path, data_env, size):
    with pytest.raises(ConfigError, match="size must be"):
        load_dataset("folder", tmp_path, size=size)


# ---------------------------------------------------------------------------------------- sources

def test_missing_data_path(tmp_path, data_env):
    with pytest.raises(DataError, match=r"data path '.*nowhere' does not exist; pass --data PATH or set TRICKS_DATA"):
        load_dataset("cifar10", tmp_path / "nowhere")


def test_missing_tricks_data_path(tmp_path, data_env, monkeypatch):
    monkeypatch.setenv("TRICKS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="TRICKS_DATA path .*nowhere' does not exist"):
        load_dataset("cifar10")


def test_sources_order(tmp_path, data_env, monkeypatch):
    arg = write_cifar10(tmp_path / "arg", seed=1)
    env = write_cifar10(tmp_path / "env", seed=2)
    default = write_cifar10(tmp_path / "default", seed=3)
    _no_defaults(monkeypatch, locations=[tmp_path / "absent", tmp_path / "default"])
    monkeypatch.setenv("TRICKS_DATA", str(tmp_path / "env"))
    assert_matches(load_dataset("cifar10", tmp_path / "arg", download=False), arg)
    assert_matches(load_dataset("cifar10", download=False), env)
    monkeypatch.delenv("TRICKS_DATA")
    data = load_dataset("cifar10", download=False)
    assert_matches(data, default)
    assert data.source == str(tmp_path / "default")


def test_tricks_data_folder_of_datasets(tmp_path, data_env, monkeypatch):
    _no_defaults(monkeypatch)
    root = tmp_path / "datasets"
    fm = write_idx(root / "fashion-mnist")
    c10 = write_cifar10(tmp_path / "src" / "c10")
    make_tar(tmp_path / "src" / "c10", root / "cifar10.tar.gz")
    monkeypatch.setenv("TRICKS_DATA", str(root))
    assert_matches(load_dataset("cifar10", download=False), c10)
    assert torch.equal(load_dataset("fashion-mnist", download=False).train.images, fm["train"][0])
    assert load_dataset("cifar10").source == str(root / "cifar10.tar.gz")
    # a dataset path itself
    monkeypatch.setenv("TRICKS_DATA", str(root / "fashion-mnist"))
    assert load_dataset("folder").format == "idx"


def test_folder_needs_a_path(data_env):
    with pytest.raises(DataError, match="dataset 'folder' needs a path; pass --data PATH or set TRICKS_DATA"):
        load_dataset("folder")


def test_not_found_is_one_line_naming_where_it_looked(tmp_path, data_env, monkeypatch):
    _no_defaults(monkeypatch, locations=[tmp_path / "one", tmp_path / "two"])
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", download=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("no cifar10 data found")
    assert str(tmp_path / "one") in msg and str(tmp_path / "two") in msg
    assert "--data" in msg and "TRICKS_DATA" in msg and "download is off" in msg


def test_failed_download_is_fast_and_one_line(tmp_path, data_env, monkeypatch):
    import torchvision.datasets

    seen = {}

    class Offline:
        def __init__(self, root, train, download):
            seen.update(root=root, timeout=socket.getdefaulttimeout(), download=download)
            raise urllib.error.URLError("[Errno -2] Name or service not known\nsecond line")

    _no_defaults(monkeypatch)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(DataError) as e:
        load_dataset("cifar10")
    msg = str(e.value)
    assert "\n" not in msg and "download into" in msg and "URLError" in msg and "--data" in msg
    assert seen == {"root": str(data_env / "downloads"), "timeout": sources.DOWNLOAD_TIMEOUT_S, "download": True}
    assert socket.getdefaulttimeout() == before


def test_download_result_is_read_from_the_downloads_folder(tmp_path, data_env, monkeypatch):
    import torchvision.datasets

    class Fake:
        def __init__(self, root, train, download):
            self.expected = write_cifar10(Path(root) / "cifar-10-batches-py")

    _no_defaults(monkeypatch)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Fake)
    data = load_dataset("cifar10")
    assert data.source == str(data_env / "downloads" / "cifar-10-batches-py") and len(data.train) == 15


# ------------------------------------------------------------------------------------- validation

def test_name_checks_classes_and_shape(tmp_path, data_env):
    simple_image_folder(tmp_path / "five", classes=("a", "b", "c", "d", "e"), hw=(32, 32))
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path / "five")
    msg = str(e.value)
    assert "5 classes of 3x32x32" in msg and "cifar10 expects 10 classes of 3x32x32" in msg and "'folder'" in msg
    write_cifar10(tmp_path / "c10")
    with pytest.raises(DataError, match="fashion-mnist expects 10 classes of 1x28x28"):
        load_dataset("fashion-mnist", tmp_path / "c10")
    with pytest.raises(DataError, match="cifar100 expects 100 classes"):
        load_dataset("cifar100", tmp_path / "c10")
    assert load_dataset("folder", tmp_path / "five").num_classes == 5


def test_name_with_size_expects_that_size(tmp_path, data_env):
    write_cifar10(tmp_path / "c10")
    assert load_dataset("cifar10", tmp_path / "c10", size=(24, 20)).size == (24, 20)


# ------------------------------------------------------------------------------------------- cache

def _count_reads(monkeypatch) -> list:
    calls, real = [], formats.read_format

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(formats, "read_format", counting)
    return calls


def test_second_load_hits_the_cache(tmp_path, data_env, monkeypatch):
    expected = write_cifar10(tmp_path / "c10")
    calls = _count_reads(monkeypatch)
    first = load_dataset("cifar10", tmp_path / "c10")
    second = load_dataset("cifar10", tmp_path / "c10")
    assert len(calls) == 1
    assert_matches(second, expected)
    assert (second.format, second.source) == (first.format, first.source)
    assert len(list((data_env / "tensors").glob("*.pt"))) == 1
    load_dataset("cifar10", tmp_path / "c10", size=(16, 16))  # another size: another entry
    load_dataset("folder", tmp_path / "c10")  # another name: another entry
    assert len(calls) == 3


def test_a_changed_source_is_decoded_again(tmp_path, data_env, monkeypatch):
    write_cifar10(tmp_path / "c10", seed=1)
    calls = _count_reads(monkeypatch)
    load_dataset("cifar10", tmp_path / "c10")
    changed = write_cifar10(tmp_path / "c10", seed=2)
    st = (tmp_path / "c10" / "test_batch").stat()
    os.utime(tmp_path / "c10" / "test_batch", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert_matches(load_dataset("cifar10", tmp_path / "c10"), changed)
    assert len(calls) == 2


def test_a_changed_archive_is_decoded_again(tmp_path, data_env, monkeypatch):
    write_idx(tmp_path / "src" / "fm", seed=1)
    archive = make_tar(tmp_path / "src" / "fm", tmp_path / "fm.tar.gz")
    load_dataset("folder", archive)
    changed = write_idx(tmp_path / "src" / "fm", seed=5)
    make_tar(tmp_path / "src" / "fm", archive)
    st = archive.stat()
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert_matches(load_dataset("folder", archive), changed)


def test_a_new_image_in_a_folder_is_noticed(tmp_path, data_env):
    simple_image_folder(tmp_path / "imgs")
    assert len(load_dataset("folder", tmp_path / "imgs").train) == 9
    simple_image_folder(tmp_path / "imgs", n_train=4)
    assert len(load_dataset("folder", tmp_path / "imgs").train) == 12


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "wrong-dict"])
def test_a_corrupt_cache_file_is_ignored(tmp_path, data_env, monkeypatch, damage):
    expected = write_cifar10(tmp_path / "c10")
    load_dataset("cifar10", tmp_path / "c10")
    [file] = (data_env / "tensors").glob("*.pt")
    if damage == "truncate":
        file.write_bytes(file.read_bytes()[:1000])
    elif damage == "garbage":
        file.write_bytes(b"garbage" * 100)
    elif damage == "empty":
        file.write_bytes(b"")
    else:
        torch.save({"version": 1, "format": "cifar-pickle", "classes": ["a"]}, file)
    calls = _count_reads(monkeypatch)
    with pytest.warns(UserWarning, match="ignoring unreadable cache file"):
        assert_matches(load_dataset("cifar10", tmp_path / "c10"), expected)
    assert len(calls) == 1
    assert_matches(load_dataset("cifar10", tmp_path / "c10"), expected)  # rewritten: a hit, no warning
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------ subset

def _labels(counts) -> torch.Tensor:
    lab = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return lab[torch.randperm(len(lab), generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("n", [10, 25, 37, 100])
def test_subset_counts_are_exact(n):
    labels = _labels([20] * 10)
    idx = class_balanced_subset(labels, n, seed=3)
    assert idx.dtype == torch.int64 and len(idx) == n and len(set(idx.tolist())) == n
    assert torch.equal(idx, torch.sort(idx).values)
    counts = torch.bincount(labels[idx], minlength=10)
    assert counts.sum() == n and set(counts.tolist()) <= {n // 10, n // 10 + 1}
    assert int((counts == n // 10 + 1).sum()) == n % 10


def test_subset_is_deterministic_and_seeded():
    labels = _labels([50] * 4)
    a, b = class_balanced_subset(labels, 41, seed=1), class_balanced_subset(labels, 41, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, class_balanced_subset(labels, 41, seed=2))
    extra = [torch.bincount(labels[class_balanced_subset(labels, 6, seed=s)], minlength=4).argmax().item() for s in range(20)]
    assert len(set(extra)) > 1  # the leftover image goes to seed-chosen classes


def test_subset_of_everything_is_everything():
    labels = _labels([5, 5, 5])
    assert torch.equal(class_balanced_subset(labels, 15, seed=0), torch.arange(15))


@pytest.mark.parametrize("n", [2, 0, -1, 31, 100])
def test_subset_out_of_range(n):
    labels = _labels([10, 10, 10])
    with pytest.raises(ConfigError) as e:
        class_balanced_subset(labels, n, seed=0)
    msg = str(e.value)
    assert f"n={n}" in msg and "between 3 and 30" in msg and "\n" not in msg


def test_subset_with_a_small_class():
    labels = _labels([10, 3, 10])
    assert len(class_balanced_subset(labels, 9, seed=0)) == 9
    with pytest.raises(ConfigError, match=r"n=12 .*smallest with 3.*between 3 and 9"):
        class_balanced_subset(labels, 12, seed=0)


# ------------------------------------------------------------------------------------ real datasets

@pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} not installed")
def test_real_fashion_mnist_from_its_default_location(data_env):
    data = load_dataset("fashion-mnist", download=False)
    assert data.source == str(FASHION) and data.format == "idx"
    assert (len(data.train), len(data.test), data.channels, data.size) == (60000, 10000, 1, (28, 28))
    assert data.classes == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert torch.bincount(data.train.labels).tolist() == [6000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    raw = gzip.decompress((FASHION / "train-images-idx3-ubyte.gz").read_bytes())
    last = torch.frombuffer(bytearray(raw[-784:]), dtype=torch.uint8).reshape(1, 28, 28)
    assert torch.equal(data.train.images[-1], last)
    labels = gzip.decompress((FASHION / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert data.test.labels[:50].tolist() == list(labels[8:58])


def test_real_cifar10_jpeg_archive(cifar10_jpeg):
    data = cifar10_jpeg
    assert data.classes == CIFAR10_CLASSES and data.format == "image-folder"
    assert data.source == os.path.abspath(shared_cifar10_archive())
    assert (len(data.train), len(data.test), data.channels, data.size) == (50000, 10000, 3, (32, 32))
    assert torch.bincount(data.train.labels).tolist() == [5000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    with tarfile.open(shared_cifar10_archive()) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        names = {}
        for m in members:  # cifar10/<split>/<class>/<file>
            _, split, cls, file = m.name.split("/")
            names.setdefault((split, cls), []).append(file)
        for split, cls, k in [("train", "airplane", 0), ("train", "cat", 1234), ("train", "truck", 4999),
                              ("test", "bird", 0), ("test", "ship", 777), ("test", "truck", 999)]:
            label = CIFAR10_CLASSES.index(cls)
            file = sorted(names[(split, cls)])[k]
            index = sum(len(names[(split, c)]) for c in CIFAR10_CLASSES[:label]) + k
            raw = tar.extractfile(f"cifar10/{split}/{cls}/{file}").read()
            expected = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
            s = getattr(data, split)
            assert int(s.labels[index]) == label
            assert torch.equal(s.images[index], expected), f"{split}/{cls}/{file}"


def test_real_cifar10_cached_load_is_fast(cifar10_jpeg, cifar10_jpeg_cache, monkeypatch):
    calls = _count_reads(monkeypatch)
    start = time.perf_counter()
    data = load_dataset("cifar10", shared_cifar10_archive(), cache_dir=cifar10_jpeg_cache, download=False)
    elapsed = time.perf_counter() - start
    assert calls == [] and elapsed < 2.0, f"cached load took {elapsed:.2f} s"
    assert torch.equal(data.train.images, cifar10_jpeg.train.images)
    assert torch.equal(data.test.labels, cifar10_jpeg.test.labels)
