"""The readers of tricks/data/formats.py and archive extraction, on small files in the real formats."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import pytest
import torch
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

from fixtures import (assert_matches, make_tar, pixels, simple_image_folder, write_cifar10, write_cifar100,
                      write_idx, write_image, write_image_folder)
from tricks.data import ImageData, Split, load_dataset
from tricks.data import cache, formats
from tricks.data.formats import detect_format
from tricks.errors import DataError


def test_cifar10_pickle_round_trip(tmp_path, data_env):
    folder = tmp_path / "cifar-10-batches-py"
    expected = write_cifar10(folder)
    data = load_dataset("cifar10", folder, download=False)
    assert_matches(data, expected)
    assert (data.name, data.format, data.source) == ("cifar10", "cifar-pickle", str(folder))
    assert (data.num_classes, data.channels, data.size) == (10, 3, (32, 32))
    assert isinstance(data, ImageData) and isinstance(data.train, Split) and len(data.train) == 15


def test_cifar10_pixel_layout_is_rgb_planes(tmp_path, data_env):
    folder = tmp_path / "c10"
    write_cifar10(folder, per_batch=1, n_test=1)
    with open(folder / "data_batch_1", "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][0]
    img = load_dataset("cifar10", folder).train.images[0]
    assert img[0, 0, 0] == row[0] and img[0, 0, 1] == row[1] and img[0, 1, 0] == row[32]
    assert img[1, 0, 0] == row[1024] and img[2, 31, 31] == row[3071]


def test_cifar100_uses_fine_labels(tmp_path, data_env):
    folder = tmp_path / "cifar-100-python"
    expected = write_cifar100(folder)
    data = load_dataset("cifar100", folder)
    assert_matches(data, expected)
    assert data.format == "cifar100-pickle" and data.num_classes == 100 and int(data.train.labels.max()) == 99


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, data_env, gz):
    expected = write_idx(tmp_path / "fm", gz=gz)
    data = load_dataset("folder", tmp_path / "fm")
    assert_matches(data, expected)
    assert data.format == "idx" and (data.channels, data.size) == (1, (28, 28))
    named = load_dataset("fashion-mnist", tmp_path / "fm")
    assert named.classes[0] == "T-shirt/top" and named.classes[9] == "Ankle boot"
    assert torch.equal(named.train.images, expected["train"][0])


def test_idx_bad_magic_is_a_data_error(tmp_path, data_env):
    write_idx(tmp_path / "fm")
    bad = tmp_path / "fm" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(bad.read_bytes()))
    raw[3] = 3
    bad.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz.*magic number 2051; expected 2049"):
        load_dataset("folder", tmp_path / "fm")


def test_truncated_idx_is_a_data_error(tmp_path, data_env):
    write_idx(tmp_path / "fm", gz=False)
    f = tmp_path / "fm" / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_dataset("folder", tmp_path / "fm")


def test_corrupt_pickle_is_a_data_error(tmp_path, data_env):
    write_cifar10(tmp_path / "c10")
    (tmp_path / "c10" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read CIFAR pickle .*test_batch"):
        load_dataset("cifar10", tmp_path / "c10")


@pytest.mark.parametrize("test_name", ["test", "valid", "val"])
def test_png_image_folder_round_trip(tmp_path, data_env, test_name):
    expected = simple_image_folder(tmp_path / "imgs", classes=("dog", "cat", "emu"), test_name=test_name)
    (tmp_path / "imgs" / "train" / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset("folder", tmp_path / "imgs")
    assert_matches(data, expected)
    assert data.classes == ("cat", "dog", "emu") and data.format == "image-folder"
    assert (data.channels, data.size) == (3, (8, 6))


def test_jpeg_folder_matches_torchvision_decode(tmp_path, data_env):
    imgs = {c: list(pixels(2, 3, 16, 16, seed=i)) for i, c in enumerate(("a", "b"))}
    write_image_folder(tmp_path / "j", {"train": imgs, "test": imgs}, ext="jpg")
    data = load_dataset("folder", tmp_path / "j")
    files = sorted((tmp_path / "j" / "train").glob("*/*.jpg"))
    assert len(data.train) == 4 and data.train.labels.tolist() == [0, 0, 1, 1]
    for i, f in enumerate(files):
        assert torch.equal(data.train.images[i], decode_image(read_file(str(f))))


@pytest.mark.parametrize("channels, want", [(1, 1), (2, 1), (4, 3)])
def test_gray_and_alpha_folders(tmp_path, data_env, channels, want):
    imgs = {"x": list(pixels(2, channels, 5, 7, seed=1)), "y": list(pixels(1, channels, 5, 7, seed=2))}
    write_image_folder(tmp_path / "g", {"train": imgs, "test": imgs})
    data = load_dataset("folder", tmp_path / "g")
    expected = torch.stack(imgs["x"] + imgs["y"])[:, :want]  # alpha dropped
    assert data.channels == want and torch.equal(data.train.images, expected)


def test_mixed_channels_follow_the_majority(tmp_path, data_env):
    rgb, gray = pixels(2, 3, 4, 4, seed=1), pixels(1, 1, 4, 4, seed=2)
    write_image_folder(tmp_path / "m", {"train": {"a": [rgb[0], gray[0], rgb[1]], "b": [rgb[1]]}, "test": {"a": [rgb[0]]}})
    data = load_dataset("folder", tmp_path / "m")
    assert data.channels == 3
    assert torch.equal(data.train.images[1], gray[0].expand(3, -1, -1))
    assert torch.equal(data.train.images[0], rgb[0])

    write_image_folder(tmp_path / "n", {"train": {"a": [gray[0], rgb[0], gray[0]], "b": [gray[0]]}, "test": {"a": [gray[0]]}})
    data = load_dataset("folder", tmp_path / "n")
    as_gray = decode_image(read_file(str(tmp_path / "n" / "train" / "a" / "0001.png")), ImageReadMode.GRAY)
    assert data.channels == 1 and torch.equal(data.train.images[1], as_gray)


def test_wrong_size_image_needs_a_size(tmp_path, data_env):
    simple_image_folder(tmp_path / "s", hw=(8, 6))
    odd = tmp_path / "s" / "train" / "dog" / "0001.png"
    write_image(odd, pixels(1, 3, 10, 12)[0])
    with pytest.raises(DataError) as e:
        load_dataset("folder", tmp_path / "s")
    msg = str(e.value)
    assert str(odd) in msg and "10x12" in msg and "8x6" in msg and "pass a size" in msg and "\n" not in msg


def test_size_option_resizes_every_image(tmp_path, data_env):
    simple_image_folder(tmp_path / "s", hw=(8, 6))
    big = pixels(1, 3, 10, 12)[0]
    write_image(tmp_path / "s" / "train" / "dog" / "0001.png", big)
    data = load_dataset("folder", tmp_path / "s", size=(8, 6))
    assert data.size == (8, 6) and data.train.images.shape == (9, 3, 8, 6)
    assert torch.equal(data.train.images[4], TF.resize(big, [8, 6], antialias=True))
    small = load_dataset("folder", tmp_path / "s", size=(4, 4))
    assert small.train.images.shape == (9, 3, 4, 4) and small.test.images.shape == (6, 3, 4, 4)


def test_size_option_resizes_pickles_too(tmp_path, data_env):
    expected = write_cifar10(tmp_path / "c10")
    data = load_dataset("cifar10", tmp_path / "c10", size=(16, 16))
    assert data.size == (16, 16)
    assert torch.equal(data.test.images, TF.resize(expected["test"][0], [16, 16], antialias=True))


def test_empty_folders_are_data_errors(tmp_path, data_env):
    (tmp_path / "e" / "train").mkdir(parents=True)
    (tmp_path / "e" / "test").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_dataset("folder", tmp_path / "e")
    (tmp_path / "e" / "train" / "a").mkdir()
    with pytest.raises(DataError, match="has no images"):
        load_dataset("folder", tmp_path / "e")
    write_image(tmp_path / "e" / "train" / "a" / "0.png", pixels(1, 3, 4, 4)[0])
    with pytest.raises(DataError, match="no images"):
        load_dataset("folder", tmp_path / "e")
    (tmp_path / "e" / "test" / "zzz").mkdir()
    with pytest.raises(DataError, match="not in train/: zzz"):
        load_dataset("folder", tmp_path / "e")


def test_undecodable_image_is_named(tmp_path, data_env):
    simple_image_folder(tmp_path / "b")
    bad = tmp_path / "b" / "test" / "cat" / "0000.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=f"cannot decode image '{bad}'"):
        load_dataset("folder", tmp_path / "b")


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_detection_finds_a_layout_up_to_three_levels_down(tmp_path, depth):
    inner = tmp_path.joinpath(*["d"] * depth)
    write_idx(inner, n_train=2, n_test=1)
    assert detect_format(tmp_path) == ("idx", inner)


def test_detection_gives_up_below_three_levels_and_lists_layouts(tmp_path):
    write_idx(tmp_path / "a" / "b" / "c" / "d", n_train=2, n_test=1)
    with pytest.raises(DataError) as e:
        detect_format(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "cifar-10-batches-py" in msg and "idx" in msg and "image folder" in msg
    assert ".tar.gz" in msg and "\n" not in msg


def test_detection_shallowest_then_preferred(tmp_path):
    write_idx(tmp_path / "b" / "x" / "fm", n_train=2, n_test=1)
    write_cifar10(tmp_path / "a" / "c10", per_batch=1, n_test=1)
    simple_image_folder(tmp_path / "z" / "imgs", n_train=1, n_test=1)
    assert detect_format(tmp_path) == ("cifar-pickle", tmp_path / "a" / "c10")
    assert detect_format(tmp_path, prefer=("image-folder",)) == ("image-folder", tmp_path / "z" / "imgs")


def test_a_file_inside_a_dataset_folder_reads_the_folder(tmp_path, data_env):
    expected = write_idx(tmp_path / "fm")
    data = load_dataset("folder", tmp_path / "fm" / "train-images-idx3-ubyte.gz")
    assert_matches(data, expected)


def _write(kind: str, folder: Path) -> dict:
    if kind == "cifar10":
        return write_cifar10(folder)
    if kind == "cifar100":
        return write_cifar100(folder)
    if kind == "idx":
        return write_idx(folder)
    return simple_image_folder(folder)


@pytest.mark.parametrize("kind, fmt", [("cifar10", "cifar-pickle"), ("cifar100", "cifar100-pickle"),
                                       ("idx", "idx"), ("images", "image-folder")])
@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar"])
def test_archives_of_each_format(tmp_path, data_env, kind, fmt, suffix):
    expected = _write(kind, tmp_path / "src" / "ds")
    archive = make_tar(tmp_path / "src" / "ds", tmp_path / f"ds{suffix}", arcname="top/ds")
    data = load_dataset("folder", archive)
    assert_matches(data, expected)
    assert data.format == fmt and data.source == str(archive)
    extracted = list((data_env / "extracted").iterdir())
    assert len(extracted) == 1 and (extracted[0] / "top" / "ds").is_dir()


def test_archive_cache_hit_needs_no_extraction(tmp_path, data_env, monkeypatch):
    expected = write_cifar10(tmp_path / "src" / "c10")
    archive = make_tar(tmp_path / "src" / "c10", tmp_path / "c10.tar.gz")
    load_dataset("cifar10", archive)

    def no_extraction(*a, **k):
        raise AssertionError("extracted again")

    monkeypatch.setattr(cache, "extract_archive", no_extraction)
    monkeypatch.setattr(formats, "read_format", no_extraction)
    data = load_dataset("cifar10", archive)
    assert_matches(data, expected)
    assert data.format == "cifar-pickle" and data.source == str(archive)


def test_extraction_happens_once(tmp_path):
    write_idx(tmp_path / "src" / "fm", n_train=2, n_test=1)
    archive = make_tar(tmp_path / "src" / "fm", tmp_path / "fm.tgz")
    first = cache.extract_archive(archive, tmp_path / "cache")
    (first / "marker").write_text("kept")
    assert cache.extract_archive(archive, tmp_path / "cache") == first and (first / "marker").exists()


def test_interrupted_extraction_leaves_nothing(tmp_path, monkeypatch):
    write_idx(tmp_path / "src" / "fm", n_train=2, n_test=1)
    archive = make_tar(tmp_path / "src" / "fm", tmp_path / "fm.tgz")

    def killed(self, path, *a, **k):
        (Path(path) / "partial").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extractall", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.extract_archive(archive, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # the folders it made are removed too


def test_corrupt_archive_is_a_data_error(tmp_path, data_env):
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(DataError, match="cannot extract archive .*broken.tar.gz"):
        load_dataset("folder", bad)
    assert not data_env.exists()


def test_archive_with_unsafe_member_is_refused(tmp_path, data_env):
    bad = tmp_path / "evil.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError, match="cannot extract archive"):
        load_dataset("folder", bad)
    assert not (data_env / "outside.txt").exists() and not os.path.exists(data_env / "extracted" / "outside.txt")
