"""Issue 7, "Bad input": every input a user can get wrong, through the real command line.

One test per bad input. Each asserts exit code 2, exactly one line on stderr that starts with
`recipe: error:` (or `bench: error:`) and names what was wrong and what would be right, no traceback,
and that nothing already written is lost: an earlier run folder (with a sentinel file) and an earlier
results folder (results.sqlite with one stored record) sit beside the `--out` / `--results` given,
and every file and folder of the test's tree is compared before and after (so no new run folder either).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from fixtures import make_tar, pixels, plant_code, write_cifar10, write_cifar100, write_image, write_zeros_tar_gz

SENTINEL = bytes(random.Random(7).randbytes(256))


def record() -> dict:
    return {"row_id": "S9.baseline", "recipe": "baseline", "budget": "smoke", "seed": 0, "code_version": "0.1.0+abc",
            "dataset_checksum": "d" * 24, "epoch_acc": [88.5, 90.0], "test_acc": 90.0, "best_test_acc": 90.0,
            "generation_acc": None, "wall_seconds": 1.25, "finished_at": "2024-01-01T00:00:00+00:00"}


@dataclass
class World:
    root: Path
    data: Path      # a valid cifar-10-batches-py folder
    out: Path       # a new run folder beside runs/old-run
    results: Path   # a results folder holding results.sqlite with one record


@pytest.fixture
def world(tmp_path, data_env, monkeypatch) -> World:
    from bench.store import Store

    monkeypatch.chdir(tmp_path)  # a default runs/<recipe>-<time> would land in the compared tree
    data = tmp_path / "data" / "cifar-10-batches-py"
    write_cifar10(data, per_batch=2, n_test=2)
    old = tmp_path / "runs" / "old-run"
    old.mkdir(parents=True)
    (old / "keep.bin").write_bytes(SENTINEL)
    (old / "metrics.csv").write_text("epoch,train_loss\n1,2.3\n")
    Store(tmp_path / "results").add(record())
    return World(tmp_path, data, tmp_path / "runs" / "new-run", tmp_path / "results")


def snapshot(root: Path, skip: Path) -> dict[str, str]:
    """Every folder and file under `root` (but `skip`, the data cache), files with a hash of their bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if d == skip or skip in d.parents:
            continue
        out[str(d.relative_to(root)) + "/"] = "dir"
        for name in filenames:
            if (d / name).is_symlink():  # a link (a loop, even) is its target's name, not its bytes
                out[str((d / name).relative_to(root))] = "link to " + os.readlink(d / name)
                continue
            out[str((d / name).relative_to(root))] = hashlib.sha256((d / name).read_bytes()).hexdigest()
    return out


# ----------------------------------------------------------------------------------------- bad data

def copy_cifar(w: World, name: str) -> Path:
    bad = w.root / "bad" / name / "cifar-10-batches-py"
    shutil.copytree(w.data, bad)
    return bad


def truncated_pickle(w: World) -> Path:
    bad = copy_cifar(w, "truncated")
    raw = (bad / "data_batch_1").read_bytes()
    (bad / "data_batch_1").write_bytes(raw[: len(raw) // 2])
    return bad


def corrupt_pickle(w: World) -> Path:
    bad = copy_cifar(w, "corrupt")
    (bad / "data_batch_1").write_bytes(random.Random(0).randbytes(4096))
    return bad


def labels(value: int) -> Callable[[World], Path]:
    def make(w: World) -> Path:
        bad = copy_cifar(w, f"labels{value}")
        with open(bad / "data_batch_1", "rb") as f:
            d = pickle.load(f, encoding="bytes")
        d[b"labels"][-1] = value
        with open(bad / "data_batch_1", "wb") as f:
            pickle.dump(d, f, protocol=2)
        return bad

    return make


def zero_image_pickle(w: World) -> Path:
    bad = copy_cifar(w, "zero")
    for name in [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]:
        with open(bad / name, "wb") as f:
            pickle.dump({b"batch_label": b"empty", b"labels": [], b"data": np.zeros((0, 3072), np.uint8),
                         b"filenames": []}, f, protocol=2)
    return bad


def image_folder(w: World, sizes: dict[str, list[int]], name: str) -> Path:
    """train/ and test/ with classes a and b; `sizes[split/class]` lists the side of each square image."""
    root = w.root / "bad" / name
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i, side in enumerate(sizes.get(f"{split}/{c}", [])):
                write_image(root / split / c / f"{i}.png", pixels(1, 3, side, side, seed=i)[0])
    return root


def wrong_size_image(w: World) -> Path:
    return image_folder(w, {"train/a": [32, 32, 40], "train/b": [32, 32], "test/a": [32], "test/b": [32]}, "sizes")


def empty_image_folder(w: World) -> Path:
    return image_folder(w, {}, "empty")


def unwritable_out(w: World) -> Path:
    """A folder of mode 0o500; as root (who may write there anyway) a path below a regular file."""
    locked = w.root / "locked"
    locked.mkdir(mode=0o500)
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):
        return locked / "run"
    (w.root / "a-file").write_text("not a folder")
    return w.root / "a-file" / "run"


def looping_class_folder(kind: str) -> Callable[[World], Path]:
    """An image folder whose train/a holds a symbolic-link loop: a link to itself, or a folder link back up."""

    def make(w: World) -> Path:
        root = image_folder(w, {"train/a": [32, 32], "train/b": [32, 32], "test/a": [32], "test/b": [32]},
                            f"loop-{kind}")
        if kind == "self":
            (root / "train" / "a" / "x.png").symlink_to("x.png")
        else:
            (root / "train" / "a" / "up").symlink_to("..")
        return root

    return make


def read_only_folder(w: World, name: str) -> Path:
    """A folder of mode 0o500; as root (who may write there anyway) a path below a regular file."""
    folder = w.root / name
    folder.mkdir(mode=0o500)
    folder.chmod(0o500)
    if not os.access(folder, os.W_OK):
        return folder
    (w.root / f"{name}-file").write_text("not a folder")
    return w.root / f"{name}-file" / "inside"


def a_file(w: World, name: str = "a-plain-file") -> Path:
    (w.root / name).write_text("not a folder")
    return w.root / name


def one_class_folder(w: World) -> Path:
    root = w.root / "bad" / "one-class"
    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)
        write_image(root / split / "cat" / "0.png", pixels(1, 3, 32, 32)[0])
    return root


def jpeg_with_garbage_body(w: World) -> Path:
    """An image folder whose train/a/1.jpg keeps a real JPEG's headers (through the SOS marker) but has random bytes
    for the compressed body: libjpeg prints its own 'Corrupt JPEG data' line, then fails."""
    from torchvision.io import encode_jpeg

    root = image_folder(w, {"train/a": [32], "train/b": [32], "test/a": [32], "test/b": [32]}, "garbage-jpeg")
    jpeg = bytes(encode_jpeg(pixels(1, 3, 32, 32)[0]).numpy())
    sos = jpeg.index(b"\xff\xda")
    body = sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")
    (root / "train" / "a" / "1.jpg").write_bytes(jpeg[:body] + random.Random(0).randbytes(600) + b"\xff\xd9")
    return root


# ---------------------------------------------------------------------------------------------- an attacker's data

def code_in(file: str, dataset: str = "cifar10") -> Callable[[World], Path]:
    """A copy of the valid data whose pickle `file` also holds a call that writes <root>/pwned when unpickled (so the
    snapshot would show it had run)."""

    def make(w: World) -> Path:
        if dataset == "cifar10":
            bad = copy_cifar(w, f"code-in-{file}")
        else:
            bad = w.root / "bad" / f"code-in-{file}" / "cifar-100-python"
            write_cifar100(bad, n_train=4, n_test=2)
        plant_code(bad / file, w.root / "pwned")
        return bad

    return make


def packed(make: Callable[[World], Path]) -> Callable[[World], Path]:
    return lambda w: make_tar(make(w), w.root / "bad" / "evil.tar.gz")


def zeros_bomb(*members: tuple[str, int]) -> Callable[[World], Path]:
    """The valid data plus zero-filled members (1 MiB of .tar.gz for each GiB), in one .tar.gz."""
    def make(w: World) -> Path:
        (w.root / "bad").mkdir(exist_ok=True)
        return write_zeros_tar_gz(w.root / "bad" / "bomb.tar.gz", list(members), w.data)

    return make


# ---------------------------------------------------------------------------------------------- run folders

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One finished run (1 epoch on tiny CIFAR), copied by each `recipe eval` case and then damaged."""
    from recipes.cli import main

    root = tmp_path_factory.mktemp("trained")
    write_cifar10(root / "cifar-10-batches-py", per_batch=2, n_test=2)
    mp = pytest.MonkeyPatch()
    mp.setenv("TRICKS_CACHE", str(root / "cache"))
    try:
        assert main(["run", "baseline", "--data", str(root / "cifar-10-batches-py"), "--out", str(root / "run"),
                     "--device", "cpu", "--epochs", "1", "--bs", "4"]) == 0
    finally:
        mp.undo()
    return root / "run"


TRAINED: list[Path] = []  # set by the test from the fixture, read by the argv builders


def damaged_run(change: Callable[[Path], None]) -> Callable[[World], list[str]]:
    def argv(w: World) -> list[str]:
        run_dir = w.root / "runs" / "trained"
        shutil.copytree(TRAINED[0], run_dir)
        change(run_dir)
        return ["eval", str(run_dir), "--device", "cpu"]

    return argv


def cut(run_dir: Path) -> None:
    raw = (run_dir / "model.pth").read_bytes()
    (run_dir / "model.pth").write_bytes(raw[: len(raw) // 2])


def other_architecture(run_dir: Path) -> None:
    import torch

    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 10)).state_dict(),
               run_dir / "model.pth")


def whole_model_saved(run_dir: Path) -> None:
    """model.pth as `torch.save(model)` writes it: the module pickled whole, not its state_dict."""
    import torch

    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 10)), run_dir / "model.pth")


def plain_pickle(run_dir: Path) -> None:
    """model.pth as `pickle.dump(model, f)` writes it (protocol 4: torch.load warns before it refuses it)."""
    import torch

    with open(run_dir / "model.pth", "wb") as f:
        pickle.dump(torch.nn.Sequential(torch.nn.Linear(2, 2)), f)


def unwritable_home(w: World) -> dict[str, str]:
    """HOME a folder of mode 0o500 (as root, who writes there anyway, a path below a regular file), and
    MPLCONFIGDIR empty: matplotlib, which fastai imports, has no config folder of its own to write."""
    home = w.root / "home"
    home.mkdir(mode=0o500)
    if os.access(home, os.W_OK):
        (w.root / "home-file").write_text("not a folder")
        home = w.root / "home-file" / "home"
    return {"HOME": str(home), "MPLCONFIGDIR": "", "XDG_CONFIG_HOME": "", "XDG_CACHE_HOME": ""}


# ---------------------------------------------------------------------------------------------- cases

@dataclass
class Case:
    id: str
    argv: Callable[[World], list[str]]
    message: str                          # a distinctive part of the one error line
    prog: str = "recipe"
    subprocess: bool = False
    env: Callable[[World], dict[str, str]] | None = None  # extra environment (made before the snapshot)
    section: str = "Bad input"            # the README table's heading for this case


def run(recipe: str, *extra: str, data: Callable[[World], Path] | None = None, out=None,
        dataset: str = "cifar10") -> Callable[[World], list[str]]:
    """`recipe run` on the valid data (or `data(world)`) into a new run folder beside the old one; tiny and on
    the CPU, so that an input that is wrongly accepted fails the test quickly instead of training for long."""

    def argv(w: World) -> list[str]:
        where = data(w) if data else w.data
        to = out(w) if out else w.out
        return ["run", recipe, "--dataset", dataset, "--data", str(where), "--out", str(to), "--device", "cpu",
                "--epochs", "1", "--bs", "4", *extra]

    return argv


def bench(*args: str, results: Callable[[World], Path] | None = None) -> Callable[[World], list[str]]:
    def argv(w: World) -> list[str]:
        return [*args, "--results", str(results(w) if results else w.results)]

    return argv


def table_with_missing_row(w: World) -> Path:
    """An ablation table of one's own whose conclusion (its header on line 8) names a row it lacks."""
    path = w.root / "my-table.toml"
    path.write_text('[[row]]\nid = "S1.base"\nsection = "S1"\nrecipe = "baseline"\nstatus = "unmeasured"\n'
                    'baseline = "S1.base"\n\n[[conclusion]]\nid = "S1.c"\nsection = "S1"\ntext = "it helps"\n'
                    'row = "S1.missing"\nversus = "S1.base"\nexpect = "better"\n')
    return path


def empty_results(w: World) -> Path:
    (w.root / "no-results").mkdir()
    return w.root / "no-results"


STORE_SECTION = "Results store and file"


def foreign_store(*sql: str) -> Callable[[World], Path]:
    """A results folder whose store (one record) was changed by hand with `sql`: a view, a trigger."""

    def make(w: World) -> Path:
        import sqlite3

        from bench.store import Store

        folder = w.root / "hand-edited-results"
        Store(folder).add(record())
        (folder / "replay.lock").touch()  # as an earlier `bench replay` there leaves it
        con = sqlite3.connect(folder / "results.sqlite")
        for statement in sql:
            con.execute(statement)
        con.commit()
        con.close()
        return folder

    return make


def readme_in(encoding: str) -> Callable[[World], list[str]]:
    """`bench report --readme` of a README with the full-budget markers, in `encoding` (not UTF-8)."""

    def argv(w: World) -> list[str]:
        readme = w.root / f"README-{encoding}.md"
        readme.write_bytes("# Résumé\n<!-- full-budget:start -->\n<!-- full-budget:end -->\n".encode(encoding))
        return ["report", "--results", str(w.results), "--readme", str(readme)]

    return argv


def readme_with(extra: str) -> Callable[[World], list[str]]:
    """`bench report --readme` of a UTF-8 README with the full-budget markers and then `extra`."""

    def argv(w: World) -> list[str]:
        readme = w.root / "README-extra.md"
        readme.write_text("# t\n<!-- full-budget:start -->\n<!-- full-budget:end -->\n" + extra)
        return ["report", "--results", str(w.results), "--readme", str(readme)]

    return argv


def load(*extra: str) -> Callable[[World], list[str]]:
    return lambda w: ["load", "--data", str(w.data), *extra]


MODULES = {"recipe": "recipes.cli", "bench": "bench.cli"}
SECURITY = "Security: an attacker's data file (no code runs, no disk fills)"
DISK = "Disk and files"
CASES = [
    # names
    Case("unknown-trick", run("baseline+mixupp"), "unknown recipe term 'mixupp'; did you mean 'mixup'"),
    Case("unknown-key", run("baseline+mixup:alfa=0.2"),
         "trick 'mixup' has no parameter 'alfa'; its parameters: alpha, mix"),
    Case("unknown-model", run("baseline", "--model", "resnet21"), "unknown model 'resnet21'; did you mean"),
    # types
    Case("trick-value-not-a-number", run("baseline+mixup:alpha=abc"), "alpha='abc': alpha must be a number"),
    Case("epochs-not-an-integer", run("baseline", "--epochs", "two"), "argument --epochs: invalid int value: 'two'"),
    Case("compile-step-not-a-bool", run("baseline:compile_step=sometimes"),
         "compile_step='sometimes': compile_step must be true or false"),
    # ranges
    Case("mixup-alpha-negative", run("baseline+mixup:alpha=-0.5"), "alpha=-0.5 is out of range; allowed: (0, inf)"),
    Case("dropout-p-one", run("baseline+resdrop:p=1"), "p=1.0 is out of range; allowed: [0, 1)"),
    Case("refine-gens-negative", run("baseline+refine:gens=-1"), "gens=-1 is out of range; allowed: [0, inf)"),
    Case("epochs-zero", run("baseline", "--epochs", "0"), "epochs=0 is out of range; allowed: [1, inf)"),
    # conflicts
    Case("onehot-and-lsmooth", run("baseline+onehot+lsmooth"),
         "tricks lsmooth and onehot both make the soft targets; keep one"),
    Case("mixup-and-klmixup", run("baseline+mixup+klmixup"), "tricks klmixup and mixup both mix the batch; keep one"),
    # data
    Case("missing-data-path", run("baseline", data=lambda w: w.root / "nope"), "/nope' does not exist; pass --data"),
    Case("truncated-pickle", run("baseline", data=truncated_pickle),
         "truncated/cifar-10-batches-py/data_batch_1' (UnpicklingError: pickle data was truncated); replace it"),
    Case("corrupt-pickle", run("baseline", data=corrupt_pickle),
         "cannot read CIFAR pickle '", subprocess=True),
    Case("image-of-wrong-size", run("baseline", data=wrong_size_image, dataset="folder"),
         "/train/a/2.png' is 40x40 but the others are 32x32; resize or remove it"),
    Case("label-ten", run("baseline", data=labels(10)), "labels10/cifar-10-batches-py/data_batch_1' must be 0..9, found 10"),
    Case("label-minus-one", run("baseline", data=labels(-1)),
         "labels-1/cifar-10-batches-py/data_batch_1' must be 0..9, found -1"),
    Case("image-folder-without-images", run("baseline", data=empty_image_folder, dataset="folder"),
         "empty/train/a' has no images (.png, .jpg, .jpeg)"),
    Case("pickle-without-images", run("baseline", data=zero_image_pickle),
         "zero/cifar-10-batches-py' holds no train images; a dataset needs"),
    # the run folder
    Case("unwritable-out", run("baseline", out=unwritable_out), "cannot be created: '"),
    # bench
    Case("bench-budget-huge", bench("replay", "--budget", "huge"),
         "argument --budget: invalid choice: 'huge' (choose from", prog="bench", subprocess=True),
    Case("bench-seeds-zero", bench("replay", "--seeds", "0"), "--seeds and --workers must be at least 1, got --seeds 0",
         prog="bench"),
    Case("bench-report-without-results", bench("report", "--results-file", "/nonexistent/full.jsonl",
                                               results=empty_results),
         "(no results.sqlite); run `bench replay --results", prog="bench"),
    Case("bench-decide-max-seeds-one", bench("decide", "S9.mixup-helps", "--max-seeds", "1", "--dry-run"),
         "--max-seeds must be at least 2, got 1", prog="bench"),
    Case("bench-decide-unknown-conclusion", bench("decide", "S99.*", "--dry-run"),
         "no conclusion id matches S99.*; conclusion ids look like S9.mixup-helps", prog="bench"),
    Case("bench-table-conclusion-without-its-row", lambda w: ["list", "--table", str(table_with_missing_row(w))],
         "my-table.toml, line 8: conclusion 'S1.c': 'S1.missing' is not a row id", prog="bench"),
    # issue 14: one line where a traceback was
    Case("eval-model-truncated", damaged_run(cut), "/runs/trained/model.pth' ("),
    Case("eval-model-random-bytes", damaged_run(lambda d: (d / "model.pth").write_bytes(random.Random(1).randbytes(999))),
         "/runs/trained/model.pth' ("),
    Case("eval-model-empty", damaged_run(lambda d: (d / "model.pth").write_bytes(b"")),
         "/runs/trained/model.pth' ("),
    Case("eval-model-of-another-architecture", damaged_run(other_architecture),
         "/runs/trained/model.pth' do not fit the model its config.json names (resnet20, 10 classes)"),
    Case("eval-config-not-json", damaged_run(lambda d: (d / "config.json").write_text('{"recipe": "baseline",')),
         "/runs/trained/config.json' is not valid JSON ("),
    Case("cache-names-a-file", run("baseline"), "the data cache '", env=lambda w: {"TRICKS_CACHE": str(a_file(w))}),
    Case("cache-read-only", run("baseline"), "cannot be written",
         env=lambda w: {"TRICKS_CACHE": str(read_only_folder(w, "ro-cache"))}),
    Case("bench-results-names-a-file", bench("replay", "--rows", "S1.*", "--budget", "smoke", "--device", "cpu",
                                             results=a_file),
         "/a-plain-file': File exists; it is not a folder", prog="bench"),
    Case("bench-results-read-only", bench("replay", "--rows", "S1.*", "--budget", "smoke", "--device", "cpu",
                                          results=lambda w: read_only_folder(w, "ro-results")),
         "/ro-results", prog="bench"),
    Case("symlink-loop-in-class-folder", run("baseline", data=looping_class_folder("self"), dataset="folder"),
         "/train/a/x.png' cannot be read (Too many levels of symbolic links: a symbolic-link loop?)"),
    Case("folder-link-back-up-in-class-folder", run("baseline", data=looping_class_folder("up"), dataset="folder"),
         "/train/a/up' is a symbolic link that loops back to '"),
    Case("device-mps-absent", run("baseline", "--device", "mps"), "device 'mps' asked for, but torch sees no Apple GPU"),
    Case("device-meta", run("baseline", "--device", "meta"), "device 'meta' cannot train or evaluate a model"),
    Case("eval-device-meta", lambda w: ["eval", str(w.root / "runs" / "old-run"), "--device", "meta"],
         "device 'meta' cannot train or evaluate a model"),
    Case("seed-beyond-64-bits", run("baseline", "--seed", str(2**64)),
         "seed=18446744073709551616 is out of range; allowed: [0, 9223372036854775807]"),
    Case("full-width-digits-in-recipe", run("baseline+mixup:alpha=\uff10.\uff13"),
         "has the non-ASCII character '\uff10' (U+FF10) at position 22; write recipes in ASCII only"),
    Case("full-width-digit-option", run("baseline", "--seed", "\uff13"), "argument --seed: invalid int value: '\uff13'"),
    # issue 23: data
    Case("one-class-dataset", run("baseline", data=one_class_folder, dataset="folder"),
         "one-class' holds 1 class ('cat'); a classifier needs at least two"),
    Case("jpeg-with-garbage-body", run("baseline", data=jpeg_with_garbage_body, dataset="folder"),
         "garbage-jpeg/train/a/1.jpg': Unsupported marker type 0x8b; replace or remove it", subprocess=True),
    # issue 23: an attacker's data file runs no code and fills no disk
    Case("data_batch_1-calls-exec-refused", run("baseline", data=code_in("data_batch_1")),
         "code-in-data_batch_1/cifar-10-batches-py/data_batch_1': it asks to load '__builtin__.exec'",
         section=SECURITY),
    Case("batches.meta-calls-exec-refused", run("baseline", data=code_in("batches.meta")),
         "cifar-10-batches-py/batches.meta': it asks to load '__builtin__.exec', which no CIFAR file holds",
         section=SECURITY),
    Case("tar.gz-whose-data_batch_1-calls-exec-refused", run("baseline", data=packed(code_in("data_batch_1"))),
         "cifar-10-batches-py/data_batch_1': it asks to load '__builtin__.exec'", section=SECURITY),
    Case("cifar100-meta-calls-exec-refused", run("baseline", data=code_in("meta", "cifar100"), dataset="cifar100"),
         "cifar-100-python/meta': it asks to load '__builtin__.exec'", section=SECURITY),
    Case("tar.gz-member-of-1-GiB-of-zeros-refused",
         run("baseline", data=zeros_bomb(("cifar-10-batches-py/zeros.bin", (1 << 30) + 1))),
         "member 'cifar-10-batches-py/zeros.bin' is 1,073,741,825 bytes, over the 1,073,741,824 allowed for one "
         "member",
         section=SECURITY),
    Case("tar.gz-of-1.2-GiB-of-zeros-refused",
         run("baseline", data=zeros_bomb(("cifar-10-batches-py/z1", 600 << 20),
                                         ("cifar-10-batches-py/z2", 600 << 20))),
         "would extract to more than 1,073,741,824 bytes (at member 'cifar-10-batches-py/z2')", section=SECURITY),
    # issue 23: the results store and file
    Case("store-runs-replaced-by-a-view",
         bench("report", results=foreign_store("ALTER TABLE runs RENAME TO runs_data",
                                               "CREATE VIEW runs AS SELECT * FROM runs_data")),
         "hand-edited-results/results.sqlite' is not the bench's store: it holds table runs_data, index "
         "sqlite_autoindex_runs_data_1, view runs beyond the bench's table runs; move it aside", prog="bench",
         section=STORE_SECTION),
    Case("store-with-a-trigger-that-deletes-runs",
         bench("replay", "--rows", "S1.*", "--budget", "smoke", "--device", "cpu",
               results=foreign_store("CREATE TRIGGER gone AFTER INSERT ON runs BEGIN DELETE FROM runs; END")),
         "is not the bench's store: it holds trigger gone beyond the bench's table runs", prog="bench",
         section=STORE_SECTION),
    Case("store-with-another-table", bench("report", results=foreign_store("CREATE TABLE notes (text TEXT)")),
         "is not the bench's store: it holds table notes beyond", prog="bench", section=STORE_SECTION),
    Case("readme-in-latin-1", readme_in("latin-1"),
         "README-latin-1.md is not UTF-8 (byte 3: b'\\xe9'); the README must be UTF-8 text", prog="bench",
         section=STORE_SECTION),
    Case("readme-in-utf-16", readme_in("utf-16"),
         "README-utf-16.md is not UTF-8 (byte 0: b'\\xff'); the README must be UTF-8 text", prog="bench",
         section=STORE_SECTION),
    Case("load-repeat-zero", load("--repeat", "0"), "--repeat must be at least 1, got 0", prog="bench",
         section=STORE_SECTION),
    Case("load-repeat-negative", load("--repeat", "-1"), "--repeat must be at least 1, got -1", prog="bench",
         section=STORE_SECTION),
    Case("replay-until-nan", bench("replay", "--rows", "S1.*", "--budget", "smoke", "--until", "nan"),
         "--until must be a finite number of seconds above 0, got nan; leave it out to run with no deadline",
         prog="bench", section=STORE_SECTION),
    Case("replay-until-inf", bench("replay", "--rows", "S1.*", "--budget", "smoke", "--until", "inf"),
         "--until must be a finite number of seconds above 0, got inf", prog="bench", section=STORE_SECTION),
    Case("replay-until-negative", bench("replay", "--rows", "S1.*", "--budget", "smoke", "--until", "-5"),
         "--until must be a finite number of seconds above 0, got -5", prog="bench", section=STORE_SECTION),
    Case("perf-parity-epochs-zero", lambda w: ["perf", "--parity-epochs", "0", "--results", str(w.results)],
         "--parity-epochs must be at least 1, got 0", prog="bench", section=STORE_SECTION),
    Case("perf-only-on-the-cpu", bench("perf", "--device", "cpu", "--only", "concurrency"),
         "--only chooses among the GPU measurements; give --device cuda (or --quick for a dry run of them at toy "
         "sizes on this device)", prog="bench", section=STORE_SECTION),
    Case("perf-only-unknown-measurement", bench("perf", "--device", "cpu", "--quick", "--only", "syncdebug"),
         "--only syncdebug: unknown measurement 'syncdebug'; choose among speed, concurrency, parity, modes",
         prog="bench", section=STORE_SECTION),
    Case("perf-until-zero", bench("perf", "--device", "cpu", "--quick", "--only", "concurrency", "--until", "0"),
         "--until must be a finite number of seconds above 0, got 0", prog="bench", section=STORE_SECTION),
    Case("gap-unknown-budget", bench("gap", "--budget", "huge"),
         "argument --budget: invalid choice: 'huge' (choose from 'smoke', 'short', 'full')", prog="bench",
         section=STORE_SECTION),
    Case("gap-seeds-zero", bench("gap", "--budget", "smoke", "--seeds", "0"),
         "--seeds and --workers must be at least 1, got --seeds 0", prog="bench", section=STORE_SECTION),
    Case("slice-stage-ends-before-it-starts",
         lambda w: ["slice", "--stage", "gap=200:100", "--given", "60", "--budget", "smoke", "--results",
                    str(w.results), "--log", str(w.root / "slices.jsonl")],
         "--stage 'gap=200:100': give NAME=START:END, two Unix times in seconds with START <= END", prog="bench",
         section=STORE_SECTION),
    Case("readme-gap-marker-without-its-end", readme_with("<!-- baseline-gap:start -->\n"),
         "needs one line <!-- baseline-gap:start --> and after it one line <!-- baseline-gap:end -->, around what "
         "the report writes there", prog="bench", section=STORE_SECTION),
    Case("perf-compile-cache-with-overhead", bench("perf", "--compile-cache", "--overhead"),
         "--compile-cache is a measurement of its own; leave out --overhead", prog="bench", section=STORE_SECTION),
    Case("compile-cache-names-a-file", bench("perf", "--overhead", "--quick", "--device", "cpu"),
         "/a-plain-file' cannot be made (File exists); set TORCHINDUCTOR_CACHE_DIR or TRICKS_CACHE to a folder you "
         "can write to", prog="bench", env=lambda w: {"TORCHINDUCTOR_CACHE_DIR": str(a_file(w))},
         section=STORE_SECTION),
    # disk and files (issue 23; a full disk needs a small tmpfs: tests/test_disk_full.py)
    Case("eval-model-whole-module-pickled", damaged_run(whole_model_saved),
         "/runs/trained/model.pth' holds a pickled Python object (a whole model, as torch.save(model) writes), "
         "not the state_dict", subprocess=True, section=DISK),
    Case("eval-model-plain-pickle", damaged_run(plain_pickle),
         "/runs/trained/model.pth' (UnpicklingError: Weights only load failed)", subprocess=True, section=DISK),
    Case("home-read-only", run("baseline+mixupp"), "unknown recipe term 'mixupp'", subprocess=True,
         env=unwritable_home, section=DISK),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_loses_nothing(case, world, data_env, capsys, monkeypatch, request):
    from bench.store import Store

    if case.id.startswith("eval-model") or case.id.startswith("eval-config"):
        TRAINED[:] = [request.getfixturevalue("trained_run")]
        capsys.readouterr()  # what the fixture's run printed
    argv = case.argv(world)
    env = case.env(world) if case.env else {}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = snapshot(world.root, skip=data_env)
    try:
        if case.subprocess:
            proc = subprocess.run([sys.executable, "-m", MODULES[case.prog], *argv], capture_output=True, text=True, cwd=world.root,
                                  env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            code, err = proc.returncode, proc.stderr
        else:
            if case.prog == "recipe":
                from recipes.cli import main
            else:
                from bench.cli import main
            code, err = main(argv), capsys.readouterr().err
        after = snapshot(world.root, skip=data_env)
    finally:
        for locked in [*world.root.glob("locked"), *world.root.glob("ro-*")]:
            locked.chmod(0o700)

    assert "Traceback" not in err
    assert code == 2, err
    assert err.startswith(f"{case.prog}: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert case.message in err, err
    assert after == before  # the old run folder's bytes, the results db, and no new folder or file
    assert (world.root / "runs" / "old-run" / "keep.bin").read_bytes() == SENTINEL
    assert not world.out.exists()
    assert Store(world.results).records() == [record()]


def bad_input_table() -> str:
    """The README's tables of these cases, one per section: the input (the case id), the command, what the
    user sees."""
    lines: list[str] = []
    for section in dict.fromkeys(case.section for case in CASES):
        lines += [f"**{section}**", "", "| input | command | what the user sees (exit 2, one line on stderr) |",
                  "|---|---|---|"]
        for case in (c for c in CASES if c.section == section):
            message = case.message.replace("|", "\\|")
            lines.append(f"| {case.id} | `{case.prog}` | `{case.prog}: error: ...{message}...` |")
        lines.append("")
    return "\n".join(lines)


def test_the_readmes_table_is_these_cases():
    """`UPDATE_README=1 pytest tests/test_bad_input.py -k readme` writes it; otherwise it must be current."""
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text()
    start, end = "<!-- bad-input:start -->", "<!-- bad-input:end -->"
    table = bad_input_table()
    if os.environ.get("UPDATE_README"):
        body = text.split(start, 1)
        assert len(body) == 2 and end in body[1], f"README.md lacks the markers {start} / {end}"
        readme.write_text(body[0] + start + "\n\n" + table + "\n" + end + body[1].split(end, 1)[1])
        text = readme.read_text()
    between = text.split(start, 1)[1].split(end, 1)[0]
    assert between.strip() == table.strip(), "README's bad-input table is stale: UPDATE_README=1 pytest -k readme"
