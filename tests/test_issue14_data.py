"""Issue 14 §3-§4: odd image folders, a test split without some classes, kills during extraction and before
training, 16-bit PNGs. Processes that are killed are real subprocesses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import make_tar, pixels, simple_image_folder, write_image

REPO = Path(__file__).resolve().parents[1]


def environ(cache: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRICKS_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TRICKS_DATA"):
        env.pop(k, None)
    return env


# ---- images in sub-folders of a class folder, 16-bit PNGs

def test_images_in_sub_folders_of_a_class_folder_are_read_as_imagefolder_does(tmp_path, data_env):
    from tricks.data import load_dataset

    root = tmp_path / "images"
    expected = simple_image_folder(root, classes=("a", "b"), n_train=2, n_test=1, hw=(8, 8))
    extra = pixels(3, 3, 8, 8, seed=99)
    write_image(root / "train" / "a" / "more" / "x.png", extra[0])
    write_image(root / "train" / "a" / "more" / "deeper" / "y.png", extra[1])
    write_image(root / "train" / "a" / ".ipynb_checkpoints" / "z.png", extra[2])  # hidden: not an image of the class
    d = load_dataset("folder", root)
    a = expected["train"][0][:2]
    assert torch.equal(d.train.images[:4], torch.cat([a, extra[0:1], extra[1:2]]))  # by folder, then name
    assert d.train.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert len(d.test) == 2


def test_a_16_bit_grayscale_png_is_read_as_its_top_8_bits(tmp_path, data_env):
    from tricks.data import load_dataset

    root = tmp_path / "gray"
    for split, n in (("train", 2), ("test", 1)):
        for c in ("a", "b"):
            for i in range(n):
                write_image(root / split / c / f"{i}.png", pixels(1, 1, 8, 8, seed=i)[0])
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(deep).save(root / "train" / "b" / "2.png")
    assert Image.open(root / "train" / "b" / "2.png").mode == "I;16"
    d = load_dataset("folder", root)
    assert d.train.images.dtype == torch.uint8 and d.train.images.shape == (5, 1, 8, 8)
    assert torch.equal(d.train.images[4, 0], torch.from_numpy((deep >> 8).astype(np.uint8)))


# ---- a test split without some training classes

def test_a_test_split_without_some_classes_is_said_and_recorded(tmp_path, data_env, capsys, one_torch_thread):
    from recipes.cli import main

    root = tmp_path / "images"
    simple_image_folder(root, classes=("a", "b", "c"), n_train=2, n_test=1, hw=(8, 8))
    for f in (root / "test" / "c").iterdir():
        f.unlink()
    out = tmp_path / "run"
    assert main(["run", "baseline", "--dataset", "folder", "--data", str(root), "--out", str(out), "--device", "cpu",
                 "--epochs", "1", "--bs", "2"]) == 0
    err = capsys.readouterr().err
    assert err == ("recipe: warning: the test split has no images of 1 of the 3 classes (c): their accuracy cannot "
                   "be measured (result.json lists them)\n")
    assert json.loads((out / "result.json").read_text())["test_missing_classes"] == ["c"]


# ---- temporaries a killed process left in the cache

KILLED_EXTRACTION = """
import sys, tarfile, time
from pathlib import Path
from tricks.data.cache import extract_archive

real = tarfile.TarFile.extractall
def slow(self, path, *a, **k):
    real(self, path, *a, **k)
    (Path(path) / "started").write_text("")
    time.sleep(600)
tarfile.TarFile.extractall = slow
extract_archive(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def test_temporaries_of_an_extraction_killed_with_sigkill_are_removed_by_the_next_run(tmp_path):
    from tricks.data import load_dataset
    from tricks.data.cache import HOST

    src = tmp_path / "images"
    simple_image_folder(src, classes=("a", "b"), n_train=2, n_test=1, hw=(8, 8))
    archive = make_tar(src, tmp_path / "images.tar.gz")
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_EXTRACTION, str(archive), str(cache)], env=environ(cache),
                            cwd=REPO)
    deadline = time.monotonic() + 120
    while not list((cache / "extracted").glob(".*/started")) and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    left = [p.name for p in (cache / "extracted").iterdir()]
    assert len(left) == 1 and left[0].startswith(".") and f".{HOST}.{proc.pid}." in left[0]
    # a temporary of a process still running is not touched, nor one of another host
    (cache / "tensors").mkdir(parents=True)
    live = cache / "tensors" / f".x.pt.{HOST}.{os.getppid()}.abcd.tmp"
    other = cache / "tensors" / ".x.pt.otherhost.1.abcd.tmp"
    dead = cache / "tensors" / f".x.pt.{HOST}.{proc.pid}.abcd.tmp"
    for f in (live, other, dead):
        f.write_bytes(b"x" * 1000)
    d = load_dataset("folder", archive, cache_dir=cache)
    assert len(d.train) == 4
    assert not [p.name for p in (cache / "extracted").iterdir() if p.name.startswith(".")]
    assert live.exists() and other.exists() and not dead.exists()
    assert [p.name for p in (cache / "tensors").iterdir() if not p.name.startswith(".")]  # the decoded tensors


# ---- SIGTERM before training starts

@pytest.mark.parametrize("when", ["while-starting", "after-the-claim"])
def test_sigterm_before_training_prints_one_line_and_exits_143(when, tmp_path):
    root = tmp_path / "images"
    simple_image_folder(root, classes=("a", "b"), n_train=2, n_test=1, hw=(8, 8))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "recipes.cli", "run", "baseline", "--dataset", "folder", "--data",
                             str(root), "--out", str(out), "--device", "cpu", "--epochs", "50", "--bs", "2"],
                            env=environ(tmp_path / "cache"), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if when == "while-starting":
        time.sleep(0.5)  # python is importing torch and fastai
    else:
        deadline = time.monotonic() + 120
        while not (out / ".claim").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("recipe: stopped by SIGTERM "), err
    if when == "while-starting":
        assert err == "recipe: stopped by SIGTERM while starting; nothing was written\n"
        assert not out.exists()
    elif "before training started" in err:
        assert not out.exists()  # the claim, and the folder it made, are gone
    else:  # the fit had started by then: it stopped at the end of a batch, with its checkpoint
        assert "--resume" in err
