"""`bench.perf.plain_fit` with a checkpoint folder: stopped at a deadline after an epoch and started again on the
folder, it ends on the uninterrupted run's weights bit for bit, with its accuracies; a damaged or foreign
checkpoint is refused in one line, or the previous one is used."""
from __future__ import annotations

import itertools

import pytest
import torch
from fixtures import toy_data
from torch import nn

from bench.job import Abandoned
from bench.perf import plain_fit
from recipes.checkpoint import FORMAT, save_checkpoint
from recipes.parse import parse_recipe
from recipes.run_folder import CHECKPOINT, PREVIOUS
from tricks.errors import RunFolderError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")
EPOCHS = 3


def recipe(seed: int = 0, **settings):
    return parse_recipe("baseline", epochs=EPOCHS, bs=32, seed=seed, device="cpu", **settings)


def dropout_model() -> nn.Module:
    """A small model whose training draws from torch's own generator (the dropout masks)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.3), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


def clock(monkeypatch, *times: float) -> None:
    """`bench.job._now` returns `times` one per call, then the last one for ever."""
    values = itertools.chain(times, itertools.repeat(times[-1]))
    monkeypatch.setattr("bench.job._now", lambda: next(values))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stop_after", [1, 2])
def test_a_run_stopped_after_an_epoch_and_resumed_ends_on_the_uninterrupted_runs_weights(tmp_path, monkeypatch,
                                                                                         stop_after):
    data = toy_data()
    whole = plain_fit(recipe(), data, CPU)
    clock(monkeypatch, *[0.0] * (stop_after - 1), 100.0)  # past the deadline at the end of epoch `stop_after`
    with pytest.raises(Abandoned, match=f"^stopped at the deadline after epoch {stop_after} of {EPOCHS}; "):
        plain_fit(recipe(), data, CPU, folder=tmp_path / "run", deadline=50.0)
    assert (tmp_path / "run" / CHECKPOINT).exists()
    resumed = plain_fit(recipe(), data, CPU, folder=tmp_path / "run", deadline=500.0)  # the next call's deadline
    assert resumed["start_epoch"] == stop_after
    assert same_weights(resumed["state_dict"], whole["state_dict"])
    assert resumed["epoch_acc"] == whole["epoch_acc"] and resumed["test_acc"] == whole["test_acc"]
    assert len(resumed["train_seconds"]) == len(resumed["eval_seconds"]) == EPOCHS  # the stopped part's kept
    again = plain_fit(recipe(), data, CPU, folder=tmp_path / "run")  # finished: trains nothing, same result
    assert again["start_epoch"] == EPOCHS and again["epoch_acc"] == whole["epoch_acc"]
    assert again["train_seconds"] == resumed["train_seconds"]
    assert same_weights(again["state_dict"], whole["state_dict"])


def test_the_resumed_run_draws_what_the_uninterrupted_one_drew_from_torchs_generator(tmp_path, monkeypatch):
    data = toy_data()
    whole = plain_fit(recipe(), data, CPU, make_model=dropout_model)
    clock(monkeypatch, 100.0)
    with pytest.raises(Abandoned):
        plain_fit(recipe(), data, CPU, make_model=dropout_model, folder=tmp_path / "run", deadline=50.0)
    torch.manual_seed(12345)  # whatever this process drew since, the checkpoint's generator states come back
    resumed = plain_fit(recipe(), data, CPU, make_model=dropout_model, folder=tmp_path / "run")
    assert same_weights(resumed["state_dict"], whole["state_dict"]) and resumed["epoch_acc"] == whole["epoch_acc"]


def test_the_compiled_steps_lr_tensors_are_restored_in_place(tmp_path, monkeypatch):
    data = toy_data()
    r = recipe(compile_step=True)
    whole = plain_fit(r, data, CPU, make_model=dropout_model)
    clock(monkeypatch, 100.0)
    with pytest.raises(Abandoned):
        plain_fit(r, data, CPU, make_model=dropout_model, folder=tmp_path / "run", deadline=50.0)
    resumed = plain_fit(r, data, CPU, make_model=dropout_model, folder=tmp_path / "run")
    assert same_weights(resumed["state_dict"], whole["state_dict"]) and resumed["epoch_acc"] == whole["epoch_acc"]


def stopped_run(folder, monkeypatch, epochs_done: int = 1):
    clock(monkeypatch, *[0.0] * (epochs_done - 1), 100.0)
    with pytest.raises(Abandoned):
        plain_fit(recipe(), toy_data(), CPU, make_model=dropout_model, folder=folder, deadline=50.0)


def test_a_damaged_checkpoint_resumes_from_the_previous_one_or_is_refused_in_one_line(tmp_path, monkeypatch):
    data = toy_data()
    whole = plain_fit(recipe(), data, CPU, make_model=dropout_model)
    folder = tmp_path / "run"
    stopped_run(folder, monkeypatch, epochs_done=2)  # checkpoint.pth of epoch 2, checkpoint.prev.pth of epoch 1
    (folder / CHECKPOINT).write_bytes((folder / CHECKPOINT).read_bytes()[:-100])  # cut short
    resumed = plain_fit(recipe(), data, CPU, make_model=dropout_model, folder=folder)
    assert resumed["start_epoch"] == 1 and same_weights(resumed["state_dict"], whole["state_dict"])

    other = tmp_path / "other"
    stopped_run(other, monkeypatch)
    (other / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(RunFolderError) as e:
        plain_fit(recipe(), data, CPU, make_model=dropout_model, folder=other)
    assert str(e.value).startswith(f"{CHECKPOINT} is damaged: it cannot be read (")
    assert str(e.value).endswith(f"; no whole checkpoint is left in '{other}' (the files are kept); remove the "
                                 "folder to train the run again")
    assert "\n" not in str(e.value) and (other / CHECKPOINT).read_bytes() == b"not a checkpoint"
    assert not (other / PREVIOUS).exists()


def test_a_checkpoint_of_other_settings_or_of_a_recipe_run_is_refused_in_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    stopped_run(folder, monkeypatch)
    saved = (folder / CHECKPOINT).read_bytes()
    with pytest.raises(RunFolderError, match=r"^the plain run in '.*run' was trained with seed=0, this one has "
                                             r"seed=1; run it with the settings it was started with, or remove the "
                                             r"folder to train it again$"):
        plain_fit(recipe(seed=1), toy_data(), CPU, make_model=dropout_model, folder=folder)
    assert (folder / CHECKPOINT).read_bytes() == saved  # nothing changed
    recipe_run = tmp_path / "recipe-run"
    recipe_run.mkdir()
    save_checkpoint(recipe_run, {"format": FORMAT, "epoch": 1, "model": {}, "opt": {}})  # what `recipe run` writes
    with pytest.raises(RunFolderError, match=r"^'.*checkpoint.pth' is a recipe run's checkpoint, not the plain "
                                             r"loop's; give the plain loop a folder of its own$"):
        plain_fit(recipe(), toy_data(), CPU, folder=recipe_run)
    with pytest.raises(ValueError, match="only with a checkpoint folder"):
        plain_fit(recipe(), toy_data(), CPU, deadline=50.0)
