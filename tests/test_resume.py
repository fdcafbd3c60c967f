"""Checkpoints and `recipe run --resume` (recipes/checkpoint.py): real processes killed with SIGKILL or
stopped with SIGTERM end, once resumed, with the weights of a run never stopped, bit for bit (CPU, one
thread); a changed config, a damaged checkpoint, a missing or finished run are one-line answers."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback
from fixtures import simple_image_folder, toy_data, write_toy_folder

from recipes.checkpoint import CHECKPOINT, DAMAGED, PREVIOUS, Damaged, read_checkpoint
from recipes.parse import parse_recipe
from recipes.run import train
from tricks.errors import ConfigError, RunFolderError

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST, BS, EPOCHS = 640, 64, 32, 3  # 20 batches an epoch: about a second or two on one CPU thread


# ---- real processes ----

@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    return write_toy_folder(tmp_path_factory.mktemp("toy") / "toy", N_TRAIN, N_TEST)


def command(recipe: str, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recipes.cli", "run", recipe, "--dataset", "folder", "--data", str(data),
            "--epochs", str(EPOCHS), "--bs", str(BS), "--seed", "0", "--device", "cpu", "--out", str(out), *extra]


def environ(cache: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRICKS_CACHE": str(cache), "COLUMNS": "120",
           "PYTHONPATH": str(REPO)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TRICKS_DATA"):
        env.pop(k, None)
    return env


def run(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=environ(cache), capture_output=True, text=True, timeout=300,
                          check=False)


def rows(out: Path) -> list[dict]:
    path = out / "metrics.csv"
    return list(csv.DictReader(path.open())) if path.exists() else []


def stop_mid_epoch(args: list[str], out: Path, cache: Path, signum: int) -> subprocess.Popen:
    """Start `args`, and once epoch 1 is done, send `signum` half an epoch later (in epoch 2)."""
    proc = subprocess.Popen(args, cwd=REPO, env=environ(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while not rows(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5 * float(rows(out)[0]["seconds"]))
    proc.send_signal(signum)
    return proc


def assert_same_run(out: Path, reference: Path) -> None:
    a, b = torch.load(out / "model.pth", weights_only=True), torch.load(reference / "model.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    assert strip(rows(out)) == strip(rows(reference)) and len(rows(out)) == EPOCHS
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir()) == [
        "config.json", "curves.png", "metrics.csv", "model.pth", "result.json"]  # checkpoints gone once finished
    assert (out / "config.json").read_bytes() == (reference / "config.json").read_bytes()


REFERENCES: dict[str, Path] = {}


def reference(recipe: str, toy_folder: Path, tmp_path_factory) -> Path:
    """An uninterrupted run of `recipe` (one a module)."""
    if recipe not in REFERENCES:
        out = tmp_path_factory.mktemp("reference") / "run"
        proc = run(command(recipe, toy_folder, out), out.parent / "cache")
        assert proc.returncode == 0, proc.stderr[-3000:]
        REFERENCES[recipe] = out
    return REFERENCES[recipe]


@pytest.mark.parametrize("recipe", ["baseline", "baseline+ema+mixup"])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(recipe, toy_folder, tmp_path, tmp_path_factory):
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = stop_mid_epoch(command(recipe, toy_folder, out), out, cache, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.pth").exists() and not (out / "result.json").exists()
    state = torch.load(out / CHECKPOINT, weights_only=True)  # a checkpoint is plain tensors and containers
    assert 1 <= state["epoch"] < EPOCHS and len(state["callbacks"]["EpochStats"]["records"]) == state["epoch"]

    resumed = run(command(recipe, toy_folder, out, "--resume"), cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch {state['epoch']} of {EPOCHS}" in resumed.stdout
    assert_same_run(out, reference(recipe, toy_folder, tmp_path_factory))


def test_sigterm_stops_with_one_line_and_resumes(toy_folder, tmp_path, tmp_path_factory):
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = stop_mid_epoch(command("baseline", toy_folder, out), out, cache, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("recipe: stopped by SIGTERM in epoch ") and "--resume" in err and str(out) in err
    state = read_checkpoint(out / CHECKPOINT)  # whole: its sha256 matches
    assert f"the checkpoint of epoch {state['epoch']} is in" in err
    resumed = run(command("baseline", toy_folder, out, "--resume"), cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(out, reference("baseline", toy_folder, tmp_path_factory))


# ---- in one process: tiny images, a run stopped after epoch 2 of 3 ----

class StopAt(Callback):
    """Ctrl-C as epoch `epoch` (0-based) begins."""

    def __init__(self, epoch: int):
        self.at = epoch

    def before_epoch(self):
        if self.epoch == self.at:
            raise KeyboardInterrupt


@pytest.fixture
def images(tmp_path):
    simple_image_folder(tmp_path / "images", n_train=8, n_test=2, hw=(8, 8))
    return tmp_path / "images"


def cli(images: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "baseline", "--dataset", "folder", "--data", str(images), "--out", str(out), "--device", "cpu",
            "--epochs", "3", "--bs", "4", *extra]


def stopped_run(images: Path, out: Path, monkeypatch) -> Path:
    """`out` holding a run stopped after epoch 2 of 3 (checkpoint: epoch 2, prev: epoch 1)."""
    import recipes.fit
    from recipes.cli import main

    real = recipes.fit.build_learner
    with monkeypatch.context() as m:
        m.setattr(recipes.fit, "build_learner",
                  lambda recipe, dls, model, cbs=(), **kw: real(recipe, dls, model, [StopAt(2), *cbs], **kw))
        assert main(cli(images, out)) == 130
    assert (read_checkpoint(out / CHECKPOINT)["epoch"], read_checkpoint(out / PREVIOUS)["epoch"]) == (2, 1)
    return out


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_resume_with_another_config_is_refused_and_changes_nothing(images, tmp_path, monkeypatch, capsys):
    from recipes.cli import main

    out = stopped_run(images, tmp_path / "run", monkeypatch)
    before = snapshot(out)
    capsys.readouterr()
    assert main(cli(images, out, "--lr", "0.1", "--resume")) == 2
    err = capsys.readouterr().err
    assert err == (f"recipe: error: --resume: the run in '{out}' was lr=0.2, this is lr=0.1; resume with the "
                   "settings it was started with, or give a new --out\n")
    assert main(cli(images, out, "--seed", "3", "--wd", "0.001", "--resume")) == 2
    err = capsys.readouterr().err
    assert "was wd=0.0005, this is wd=0.001 (and 1 more setting: seed)" in err and err.count("\n") == 1
    assert snapshot(out) == before


def final_weights(out: Path) -> dict:
    return torch.load(out / "model.pth", weights_only=True)


def test_damaged_checkpoint_falls_back_to_the_previous_one(images, tmp_path, monkeypatch, capsys):
    from recipes.cli import main

    torch.set_num_threads(1)
    assert main(cli(images, tmp_path / "full")) == 0
    out = stopped_run(images, tmp_path / "run", monkeypatch)
    data = (out / CHECKPOINT).read_bytes()
    (out / CHECKPOINT).write_bytes(data[:len(data) // 2])  # cut in half
    capsys.readouterr()
    assert main(cli(images, out, "--resume")) == 0
    out_text, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(f"recipe: warning: {CHECKPOINT} is damaged: it cannot be read (")
    assert err.endswith(f"; resuming from {PREVIOUS} (epoch 1); the damaged file is kept as {DAMAGED}\n")
    assert "resuming after epoch 1 of 3" in out_text
    assert (out / DAMAGED).read_bytes() == data[:len(data) // 2]
    full, resumed = final_weights(tmp_path / "full"), final_weights(out)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert (out / "metrics.csv").read_text().count("\n") == 4


def test_no_whole_checkpoint_is_one_line_exit_2_and_keeps_the_files(images, tmp_path, monkeypatch, capsys):
    from recipes.cli import main

    out = stopped_run(images, tmp_path / "run", monkeypatch)
    data = bytearray((out / CHECKPOINT).read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])  # flipped bytes
    (out / CHECKPOINT).write_bytes(bytes(data))
    (out / PREVIOUS).write_bytes((out / PREVIOUS).read_bytes()[:1000])
    before = snapshot(out)
    capsys.readouterr()
    assert main(cli(images, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"recipe: error: --resume: {CHECKPOINT} is damaged: ")
    assert f"; {PREVIOUS} is damaged: it cannot be read (" in err
    assert err.endswith(f"; no whole checkpoint is left in '{out}' (the files are kept); start the run again in "
                        "a new --out\n")
    assert snapshot(out) == before


def test_a_checkpoint_of_format_1_is_read_and_resumes_to_the_same_weights(images, tmp_path, monkeypatch, capsys):
    """A checkpoint written before the lr schedule's lrs became one float64 tensor (format 1: a list of floats,
    hashed one by one) is read as it is: the resumed run ends on the uninterrupted run's weights and lrs."""
    from recipes.checkpoint import digest
    from recipes.cli import main
    from recipes.run_folder import config_hash

    torch.set_num_threads(1)
    assert main(cli(images, tmp_path / "full")) == 0
    out = stopped_run(images, tmp_path / "run", monkeypatch)
    state = torch.load(out / CHECKPOINT, weights_only=True)
    saved = state.pop("sha256")
    assert state["format"] == "fastai-tricks checkpoint 2" and saved == digest(state)
    lrs = state["callbacks"]["LRSchedule"]["lrs"]
    assert lrs.dtype == torch.float64 and lrs.shape == (2 * 6,)  # 2 epochs of 24 images at bs 4
    state["callbacks"]["LRSchedule"]["lrs"] = lrs.tolist()  # as format 1 held them
    state["format"] = "fastai-tricks checkpoint 1"
    config = json.loads(state["config"])  # and its config had no compile_step yet (run_folder.ADDED_SETTINGS)
    del config["compile_step"]
    state["config"], state["config_hash"] = json.dumps(config), config_hash(config)
    (out / "config.json").write_text(json.dumps({k: v for k, v in json.loads((out / "config.json").read_text())
                                                 .items() if k != "compile_step"}, indent=2))
    state["sha256"] = digest(state)
    torch.save(state, out / CHECKPOINT)
    capsys.readouterr()
    assert main(cli(images, out, "--resume")) == 0
    assert capsys.readouterr().err == ""
    full, resumed = final_weights(tmp_path / "full"), final_weights(out)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert [r["lr"] for r in rows(out)] == [r["lr"] for r in rows(tmp_path / "full")]


def test_a_changed_tensor_is_found_by_the_sha256(images, tmp_path, monkeypatch):
    out = stopped_run(images, tmp_path / "run", monkeypatch)
    state = torch.load(out / CHECKPOINT, weights_only=True)
    key = next(iter(state["model"]))
    with torch.no_grad():  # a file rewritten with one weight changed (any memory format): torch reads it fine
        state["model"][key][(0,) * state["model"][key].dim()] += 1
    torch.save(state, out / CHECKPOINT)
    with pytest.raises(Damaged, match="^its content does not match the sha256 written with it$"):
        read_checkpoint(out / CHECKPOINT)


def test_resume_of_missing_empty_unstarted_and_finished_runs(images, tmp_path, capsys):
    from recipes.cli import main

    capsys.readouterr()
    assert main(cli(images, tmp_path / "nowhere", "--resume")) == 2
    assert capsys.readouterr().err == (f"recipe: error: --resume: '{tmp_path / 'nowhere'}' does not exist; give the "
                                       "--out of the run to continue\n")
    (tmp_path / "empty").mkdir()
    assert main(cli(images, tmp_path / "empty", "--resume")) == 2
    assert capsys.readouterr().err == (f"recipe: error: --resume: '{tmp_path / 'empty'}' holds no run (no "
                                       "config.json, no checkpoint.pth); give the --out of the run to continue\n")
    (tmp_path / "unstarted").mkdir()
    (tmp_path / "unstarted" / "config.json").write_text("{}")
    assert main(cli(images, tmp_path / "unstarted", "--resume")) == 2
    assert "holds no checkpoint.pth (nor checkpoint.prev.pth)" in capsys.readouterr().err
    assert main(cli(images, tmp_path / "done")) == 0
    before = snapshot(tmp_path / "done")
    capsys.readouterr()
    assert main(cli(images, tmp_path / "done", "--resume")) == 0
    out_text = capsys.readouterr().out
    assert out_text.startswith(f"--resume: the run in '{tmp_path / 'done'}' has finished already (result.json); "
                               "nothing to do: test accuracy ") and out_text.count("\n") == 1
    assert snapshot(tmp_path / "done") == before
    # a finished run resumed with another recipe: the usual one-line refusal, not "finished already"
    assert main([*cli(images, tmp_path / "done", "--resume"), "--lr", "0.05"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"recipe: error: --resume: the run in '{tmp_path / 'done'}' was lr=") and "this is lr=0.05" in err
    assert err.count("\n") == 1 and snapshot(tmp_path / "done") == before
    other = tmp_path / "other-images"
    shutil.copytree(images, other)
    assert main([*cli(other, tmp_path / "done", "--resume")]) == 2  # the same recipe on other data
    err = capsys.readouterr().err
    assert f"--resume: the run in '{tmp_path / 'done'}' was data=" in err and ", this is data=" in err
    assert err.count("\n") == 1
    assert snapshot(tmp_path / "done") == before


def test_resume_is_refused_under_torchrun(tmp_path, monkeypatch):
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match="^--resume runs on one process"):
        train(parse_recipe("baseline", epochs=1, device="cpu"), tmp_path / "r", data=toy_data(), resume=True)
    with pytest.raises(ConfigError, match="^refine is not supported on several processes"):
        train(parse_recipe("baseline+refine", epochs=1, device="cpu"), tmp_path / "r", data=toy_data(), resume=True)
    assert not (tmp_path / "r").exists()


# ---- refine: each generation checkpoints its own gen<N> folder ----

REFINE, REFINE_EPOCHS = "baseline+refine:gens=2", 2


def refine_command(data: Path, out: Path, *extra: str) -> list[str]:
    args = command(REFINE, data, out, *extra)
    args[args.index("--epochs") + 1] = str(REFINE_EPOCHS)
    return args


def assert_same_generations(out: Path, reference: Path) -> None:
    import json

    for g in range(3):
        a, b = final_weights(out / f"gen{g}"), final_weights(reference / f"gen{g}")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"gen{g}"
        assert not any((out / f"gen{g}" / n).exists() for n in (CHECKPOINT, PREVIOUS))  # removed once finished
    result, expected = (json.loads((p / "result.json").read_text()) for p in (out, reference))
    assert result["generation_test_acc"] == expected["generation_test_acc"] and len(result["generations"]) == 3
    assert (out / "config.json").read_bytes() == (reference / "config.json").read_bytes()


def test_refine_sigkill_in_generation_1_then_resume_is_bit_identical(toy_folder, tmp_path, tmp_path_factory):
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = subprocess.Popen(refine_command(toy_folder, out), cwd=REPO, env=environ(cache), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not rows(out / "gen1") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5 * float(rows(out / "gen1")[0]["seconds"]))  # half-way through gen1's epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "gen0" / "result.json").exists() and not (out / "gen1" / "result.json").exists()
    assert not (out / "gen2").exists() and not (out / "result.json").exists()
    assert read_checkpoint(out / "gen1" / CHECKPOINT)["epoch"] == 1

    resumed = run(refine_command(toy_folder, out, "--resume"), cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch 1 of {REFINE_EPOCHS}" in resumed.stdout
    assert "generation 0 of 0..2" not in resumed.stdout and "generation 2 of 0..2" in resumed.stdout

    ref = tmp_path_factory.mktemp("reference") / "run"
    proc = run(refine_command(toy_folder, ref), ref.parent / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_generations(out, ref)


def test_refine_resume_after_generation_0_and_a_changed_config(tmp_path, monkeypatch):
    import json

    import recipes.run

    torch.set_num_threads(1)
    recipe = lambda **kw: parse_recipe(REFINE, **{"epochs": 1, "bs": 32, "device": "cpu", **kw})
    data = toy_data()
    train(recipe(), tmp_path / "full", data=data)

    real = recipes.run.fit_one

    def stop_at_gen1(*args, info, **kw):
        if info["generation"] == 1:
            raise KeyboardInterrupt  # after generation 0 finished, before generation 1 wrote anything
        return real(*args, info=info, **kw)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(recipes.run, "fit_one", stop_at_gen1)
        with pytest.raises(KeyboardInterrupt):
            train(recipe(), out, data=data)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "gen0"]
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunFolderError, match=f"^--resume: the run in '{out}' was lr=0.2, this is lr=0.1; "):
        train(recipe(lr=0.1), out, data=data, resume=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    seen = []
    result = train(recipe(), out, data=data, resume=True, on_start=lambda info: seen.append(info["generation"]))
    assert seen == [1, 2]  # generation 0 is taken as it is
    for g in range(3):
        a, b = final_weights(out / f"gen{g}"), final_weights(tmp_path / "full" / f"gen{g}")
        assert all(torch.equal(a[k], b[k]) for k in a), f"gen{g}"
    expected = json.loads((tmp_path / "full" / "result.json").read_text())
    assert result["generation_test_acc"] == expected["generation_test_acc"]
    again = train(recipe(), out, data=data, resume=True)
    assert again["already_finished"] and again["generation_test_acc"] == expected["generation_test_acc"]
