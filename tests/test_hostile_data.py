"""Issue 23: no code from a data file runs, no archive fills the disk.

An attacker controls the data: a CIFAR pickle whose unpickling runs code (it writes a marker file here), an
archive that expands far beyond its size. The project reads the pickles with `formats.CifarUnpickler` (NumPy
arrays, dtypes and bytes, no other global) and extracts archives within `cache.extract_archive`'s bounds,
leaving nothing behind when it refuses. The one-line messages and exit codes are in test_bad_input.py.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import pickletools
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures import (ZEROS_CHUNK, assert_matches, make_tar, pixels, plant_code, shared_cifar10_archive, write_cifar10,
                      write_cifar100, write_idx, write_image, write_zeros_tar_gz)
from recipes.cli import main
from tricks.data import cache, load_dataset
from tricks.data.formats import CIFAR_PICKLE_GLOBALS, CifarUnpickler
from tricks.errors import DataError


def files_under(folder: Path) -> list[str]:
    """Every file below `folder` (none when it is absent)."""
    return sorted(str(Path(d) / n) for d, _, names in os.walk(folder) for n in names)


# ------------------------------------------------------------------------------------- pickles that run code

def test_the_planted_code_runs_under_a_plain_pickle_load(tmp_path):
    """The payload is real: a plain `pickle.load`, as the reader did before, writes the marker."""
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, per_batch=2, n_test=2)
    plant_code(folder / "data_batch_1", tmp_path / "marker")
    with open(folder / "data_batch_1", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    assert (tmp_path / "marker").read_text() == "this ran" and d[b"data"].shape == (2, 3072)


@pytest.mark.parametrize("dataset, folder_name, file", [
    ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ("cifar10", "cifar-10-batches-py", "batches.meta"),
    ("cifar10", "cifar-10-batches-py", "test_batch"),
    ("cifar100", "cifar-100-python", "meta"),
    ("cifar100", "cifar-100-python", "train"),
])
@pytest.mark.parametrize("packed", ["folder", "tar.gz"])
def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path, data_env, dataset, folder_name, file, packed):
    folder = tmp_path / "src" / folder_name
    if dataset == "cifar10":
        write_cifar10(folder, per_batch=2, n_test=2)
    else:
        write_cifar100(folder, n_train=4, n_test=2)
    marker = tmp_path / "marker"
    plant_code(folder / file, marker)
    data = folder if packed == "folder" else make_tar(folder, tmp_path / "evil.tar.gz")
    with pytest.raises(DataError) as err:
        load_dataset(dataset, data, download=False)
    assert str(err.value).startswith(f"refusing CIFAR pickle '{data_env if packed == 'tar.gz' else folder}")
    assert f"/{folder_name}/{file}': it asks to load '__builtin__.exec', which no CIFAR file holds" in str(err.value)
    assert not marker.exists()
    assert not data_env.exists()  # the archive's extraction (and the cache folder it made) is removed


def test_recipe_run_on_a_pickle_that_runs_code_exits_2_and_leaves_the_cache_empty(tmp_path, data_env, capsys,
                                                                                   one_torch_thread):
    folder = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar10(folder, per_batch=2, n_test=2)
    plant_code(folder / "batches.meta", tmp_path / "marker")
    archive = make_tar(folder, tmp_path / "evil.tar.gz")
    code = main(["run", "baseline", "--data", str(archive), "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--epochs", "1", "--bs", "4"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "it asks to load '__builtin__.exec'" in err, err
    assert not (tmp_path / "marker").exists() and not (tmp_path / "run").exists()
    assert files_under(data_env) == []


def globals_named(file: Path) -> set[tuple[str, str]]:
    """The (module, name) of every GLOBAL opcode in a protocol-2 pickle, as `pickletools.dis` lists them."""
    out = io.StringIO()
    pickletools.dis(file.read_bytes(), out=out)
    return {tuple(line.split("GLOBAL", 1)[1].strip().strip("'").split(" ")) for line in out.getvalue().splitlines()
            if " GLOBAL " in line}


def as_numpy1(file: Path) -> None:
    """The module name NumPy 1 (and so torchvision's CIFAR files, written by Python 2) gives `_reconstruct`."""
    file.write_bytes(file.read_bytes().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def write_empty_batch(file: Path) -> None:
    """A CIFAR batch of no images: its empty array's data is b'', which protocol 2 pickles as `bytes()`."""
    with open(file, "wb") as f:
        pickle.dump({b"labels": [], b"data": np.zeros((0, 3072), np.uint8)}, f, protocol=2)


def test_the_allowed_globals_are_exactly_those_cifar_files_name(tmp_path):
    write_cifar10(tmp_path / "c10", per_batch=2, n_test=2)
    write_cifar100(tmp_path / "c100", n_train=4, n_test=2)
    write_empty_batch(tmp_path / "c10" / "empty_batch")
    named = set().union(*(globals_named(f) for f in [*(tmp_path / "c10").iterdir(), *(tmp_path / "c100").iterdir()]))
    assert named == {("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
                     ("_codecs", "encode"), ("__builtin__", "bytes")}
    as_numpy1(tmp_path / "c10" / "data_batch_1")
    assert ("numpy.core.multiarray", "_reconstruct") in globals_named(tmp_path / "c10" / "data_batch_1")
    assert set(CIFAR_PICKLE_GLOBALS) == named | {("numpy.core.multiarray", "_reconstruct")}


def load_both_ways(file: Path) -> tuple[dict, dict]:
    with open(file, "rb") as f:
        restricted = CifarUnpickler(f, encoding="bytes").load()
    with open(file, "rb") as f:
        plain = pickle.load(f, encoding="bytes")
    return restricted, plain


@pytest.mark.parametrize("numpy1", [False, True])
def test_real_format_files_read_bit_for_bit_as_a_plain_load_does(tmp_path, data_env, numpy1):
    c10, c100 = tmp_path / "cifar-10-batches-py", tmp_path / "cifar-100-python"
    expected10, expected100 = write_cifar10(c10), write_cifar100(c100, n_train=20, n_test=10)
    write_empty_batch(tmp_path / "empty_batch")
    files = [*c10.iterdir(), *c100.iterdir(), tmp_path / "empty_batch"]
    for file in files if numpy1 else []:
        as_numpy1(file)
    for file in files:
        restricted, plain = load_both_ways(file)
        assert restricted.keys() == plain.keys()
        for key, value in plain.items():
            got = restricted[key]
            assert type(got) is type(value), (file, key)
            if isinstance(value, np.ndarray):
                assert got.dtype == value.dtype and got.shape == value.shape and got.tobytes() == value.tobytes()
            else:
                assert got == value, (file, key)
    assert_matches(load_dataset("cifar10", c10, download=False), expected10)
    data = load_dataset("folder", c100, download=False)
    assert torch.equal(data.train.images, expected100["train"][0]) and torch.equal(data.test.labels,
                                                                                   expected100["test"][1])


def test_a_python2_numpy1_pickle_as_torchvision_ships_is_read():
    """torchvision's CIFAR files were written by Python 2's cPickle (protocol 2) and NumPy 1: str as SHORT_BINSTRING
    (bytes here), `numpy.core.multiarray._reconstruct`, and dtype arguments as bytes. Written out opcode by opcode."""
    pixels_ = bytes(range(6))
    raw = (b"\x80\x02}(U\x04data"
           b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
           b"(K\x01K\x02K\x03\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
           b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06" + pixels_ + b"tb"
           b"U\x06labels]q\x00(K\x01K\x02eU\x0bbatch_labelU\x05batchu.")
    pickletools.dis(raw, out=io.StringIO())  # a well-formed pickle
    d = CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    assert d.keys() == {b"data", b"labels", b"batch_label"} and d[b"labels"] == [1, 2] and d[b"batch_label"] == b"batch"
    assert d[b"data"].dtype == np.uint8 and d[b"data"].tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("call, message", [
    (b"c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R", "only 'latin1' makes bytes"),
    (b"c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R", "only bytes() makes b''"),  # bytes(2**30): 1 GiB
])
def test_the_calls_for_bytes_take_no_other_arguments(tmp_path, call, message):
    """`_codecs.encode` and `bytes` are allowed for the calls protocol 2 makes for bytes, with no other codec and
    no size."""
    file = tmp_path / "data_batch_1"
    file.write_bytes(b"\x80\x02" + call + b".")
    with pytest.raises(pickle.UnpicklingError, match=re.escape(message)):
        with open(file, "rb") as f:
            CifarUnpickler(f, encoding="bytes").load()


# -------------------------------------------------------------------------------------------- bounded extraction

def small_files_archive(tmp_path: Path, sizes: list[int]) -> Path:
    """A .tar.gz of a folder `d` with one file of random bytes per size."""
    src = tmp_path / "src" / "d"
    src.mkdir(parents=True)
    for i, size in enumerate(sizes):
        (src / f"f{i}").write_bytes(os.urandom(size))
    return make_tar(src, tmp_path / "small.tar.gz")


@pytest.mark.parametrize("bounds, message", [
    ({"max_total_bytes": 250}, "would extract to more than 250 bytes (at member 'd/f2')"),
    ({"max_members": 3}, "holds more than 3 members; refusing to extract it"),
    ({"max_member_bytes": 99}, "member 'd/f0' is 100 bytes, over the 99 allowed for one member"),
])
def test_each_bound_is_refused_with_nothing_left_behind(tmp_path, bounds, message):
    archive = small_files_archive(tmp_path, [100, 100, 100])  # members: d, d/f0, d/f1, d/f2
    with pytest.raises(DataError, match="extract it yourself and pass the folder") as err:
        cache.extract_archive(archive, tmp_path / "cache", **bounds)
    assert message in str(err.value) and str(err.value).startswith(f"archive '{archive}'")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("tar_format, kind", [(tarfile.GNU_FORMAT, "GNU long name"), (tarfile.PAX_FORMAT, "pax")])
def test_a_header_record_over_the_read_bound_is_refused_before_it_is_read(tmp_path, tar_format, kind):
    """tarfile reads a GNU long name or a pax header whole, before the member reaches the member bounds: a 2 MiB
    name (a few KiB of gzip) is refused at its one read of over 1 MiB, and nothing is left behind."""
    archive = tmp_path / f"long-{tar_format}.tar.gz"
    with tarfile.open(archive, "w:gz", format=tar_format) as tar:
        tar.addfile(tarfile.TarInfo("d/" + "a" * (2 << 20)), io.BytesIO(b""))
    assert archive.stat().st_size < 64 << 10
    with pytest.raises(DataError, match=r"has a header record of 2,09\d,\d{3} bytes, over the 1,048,576 allowed; "
                                        "refusing to extract it: extract it yourself"):
        cache.extract_archive(archive, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_plain_tar_and_a_gzipped_tar_read_the_same_through_the_bounded_reader(tmp_path):
    src = tmp_path / "src" / "d"
    src.mkdir(parents=True)
    (src / "f").write_bytes(os.urandom(40_000))  # three 16 KiB reads of member data
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(src, arcname="d")
    packed = make_tar(src, tmp_path / "packed.tar.gz")
    for archive in (plain, packed):
        out = cache.extract_archive(archive, tmp_path / f"cache-{archive.name}")
        assert (out / "d" / "f").read_bytes() == (src / "f").read_bytes()


def test_an_archive_at_its_bounds_is_extracted(tmp_path):
    archive = small_files_archive(tmp_path, [100, 100, 100])
    out = cache.extract_archive(archive, tmp_path / "cache", max_total_bytes=300, max_members=4, max_member_bytes=100)
    assert sorted(p.name for p in (out / "d").iterdir()) == ["f0", "f1", "f2"]
    assert (out / "d" / "f2").read_bytes() == (tmp_path / "src" / "d" / "f2").read_bytes()


def test_the_default_bounds_are_stated_and_scale_with_the_archive(tmp_path):
    assert (cache.MAX_MEMBERS, cache.MAX_MEMBER_BYTES, cache.MAX_EXPANSION, cache.MIN_TOTAL_BYTES) == (
        500_000, 1 << 30, 20, 1 << 30)
    small = tmp_path / "small.tar"
    small.write_bytes(bytes(1000))
    assert cache.default_total_bytes(small) == 1 << 30
    big = tmp_path / "big.tar"
    with open(big, "wb") as f:
        f.truncate(100 << 20)  # sparse: 100 MiB that takes no disk
    assert cache.default_total_bytes(big) == 2000 << 20


@pytest.mark.parametrize("members, message", [
    ([("cifar-10-batches-py/zeros.bin", (1 << 30) + 1)],
     "member 'cifar-10-batches-py/zeros.bin' is 1,073,741,825 bytes, over the 1,073,741,824 allowed for one member"),
    ([("cifar-10-batches-py/zeros1.bin", 600 << 20), ("cifar-10-batches-py/zeros2.bin", 600 << 20)],
     "would extract to more than 1,073,741,824 bytes (at member 'cifar-10-batches-py/zeros2.bin')"),
])
def test_recipe_run_on_a_zeros_bomb_exits_2_and_leaves_the_cache_empty(tmp_path, data_env, capsys, members, message):
    """A 1 MiB .tar.gz that would write over 1 GiB of zeros (default bounds): refused on the member's header,
    before its bytes are written; the members already written are removed."""
    folder = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar10(folder, per_batch=2, n_test=2)
    archive = write_zeros_tar_gz(tmp_path / "bomb.tar.gz", members, folder)
    assert archive.stat().st_size < 2 << 20
    code = main(["run", "baseline", "--data", str(archive), "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--epochs", "1", "--bs", "4"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert files_under(data_env) == [] and not data_env.exists()
    assert not (tmp_path / "run").exists()


def test_the_shared_cifar10_jpeg_archive_is_within_the_default_bounds():
    archive = shared_cifar10_archive()
    if not archive.is_file():
        pytest.skip(f"shared archive not found at {archive}")
    with cache.open_tar(archive) as tar:
        members = list(cache.bounded_members(tar, archive, cache.MAX_MEMBERS, cache.MAX_MEMBER_BYTES,
                                             cache.default_total_bytes(archive)))
    assert (archive.stat().st_size, len(members), sum(m.size for m in members)) == (19_751_770, 60_023, 55_250_913)


def idx_gz_of_zeros(folder: Path, dims: list[int], zeros: int) -> Path:
    """`folder` (write_idx's files) with train-images-idx3-ubyte.gz replaced: a header of `dims`, then `zeros` zero
    bytes, about 1 MiB per GiB (the same compressed chunk repeated, as gzip allows)."""
    write_idx(folder, n_train=4, n_test=2)
    head = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    chunk = gzip.compress(bytes(ZEROS_CHUNK), mtime=0)
    file = folder / "train-images-idx3-ubyte.gz"
    file.write_bytes(gzip.compress(head, mtime=0) + chunk * (zeros // ZEROS_CHUNK))
    return file


@pytest.mark.parametrize("dims, zeros, message", [
    ([4097, 512, 512], 2 << 30, "has a header [4097, 512, 512] that says 1,074,003,968 bytes of data, over the "
                                "1,073,741,824 read from one idx file"),
    ([4, 28, 28], 1 << 30, "holds more than 3136 bytes of data; its header [4, 28, 28] says 3136"),
])
def test_an_idx_gz_is_read_no_further_than_its_header_says(tmp_path, data_env, dims, zeros, message):
    """A 1 or 2 MiB .gz of 1 or 2 GiB: refused on its header (over 1 GiB claimed), or after reading one byte more
    than the header claims; the reads are bounded, so the test takes a fraction of a second."""
    file = idx_gz_of_zeros(tmp_path / "fm", dims, zeros)
    assert file.stat().st_size < 3 << 20
    with pytest.raises(DataError, match=re.escape(f"idx file '{file}' {message}")):
        load_dataset("folder", tmp_path / "fm", download=False)


# -------------------------------------------------------------------------------------------- names and classes

def test_names_that_are_not_utf8_are_read_surrogate_escaped(tmp_path, data_env):
    """A class folder b'a\\xff' and files b'x\\xfe<i>.png' (bytes no UTF-8 decodes): read, named as os.fsdecode does."""
    root = os.fsencode(tmp_path / "data")
    images = {}
    for split in (b"train", b"test"):
        for k, c in enumerate((b"a\xff", b"b")):
            os.makedirs(os.path.join(root, split, c))
            images[split, c] = pixels(2, 3, 8, 8, seed=10 * k + len(split))
            for i in range(2):
                write_image(Path(os.fsdecode(os.path.join(root, split, c, b"x\xfe%d.png" % i))), images[split, c][i])
    data = load_dataset("folder", os.fsdecode(root), download=False)
    assert data.classes == ("a\udcff", "b")
    assert torch.equal(data.train.images, torch.cat([images[b"train", b"a\xff"], images[b"train", b"b"]]))
    assert torch.equal(data.test.labels, torch.tensor([0, 0, 1, 1]))


def test_a_dataset_of_one_class_is_refused(tmp_path, data_env):
    for split in ("train", "test"):
        (tmp_path / "one" / split / "cat").mkdir(parents=True)
        write_image(tmp_path / "one" / split / "cat" / "0.png", pixels(1, 3, 8, 8)[0])
    with pytest.raises(DataError, match=r"one' holds 1 class \('cat'\); a classifier needs at least two"):
        load_dataset("folder", tmp_path / "one", download=False)
