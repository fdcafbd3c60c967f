"""`StopOnNonFinite`: a NaN or inf training loss stops the fit, naming the epoch and the first bad batch."""
from __future__ import annotations

import csv
import re

import pytest
import torch
from fastai.callback.core import Callback

from fixtures import simple_image_folder, toy_data
from recipes.nan_guard import StopOnNonFinite
from tricks.errors import TrainingError, TricksError


class Inject(Callback):
    """Multiply the loss by `value` at (epoch, batch), both counted from 1; the backward then ruins the weights,
    so every later batch is non-finite too and only the first one is the answer."""

    order = 50

    def __init__(self, epoch: int, batch: int, value: float = float("inf")):
        self.at, self.value = (epoch, batch), value

    def after_loss(self):
        if self.training and (self.epoch + 1, self.iter + 1) == self.at:
            self.learn.loss_grad = self.learn.loss_grad * self.value
            self.learn.loss = self.learn.loss * self.value


class Seen(Callback):
    """The (epoch, batch) of every training batch that got to after_batch, and the epochs whose test pass began."""

    order = 0

    def __init__(self):
        self.batches, self.validated = [], []

    def after_batch(self):
        if self.training:
            self.batches.append((self.epoch + 1, self.iter + 1))

    def before_validate(self):
        self.validated.append(self.epoch + 1)


class Counting(StopOnNonFinite):
    checks = 0

    def check(self):
        Counting.checks += 1
        super().check()


def toy_learner(*cbs, epochs: int = 3):
    """A linear model on `toy_data` (128 train images, bs 32: 4 batches an epoch), on the CPU."""
    from recipes.build import build_dataloaders, build_learner
    from recipes.parse import parse_recipe

    recipe = parse_recipe("baseline", epochs=epochs, bs=32, lr=0.05, device="cpu")
    data = toy_data()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    return build_learner(recipe, build_dataloaders(recipe, data, torch.device("cpu")), model, cbs=list(cbs))


@pytest.mark.parametrize("epoch, batch, value, word", [(2, 3, float("inf"), "inf"), (1, 1, float("nan"), "nan"),
                                                       (3, 4, -float("inf"), "-inf")],
                         ids=["inf-epoch2-batch3", "nan-epoch1-batch1", "minus-inf-last-batch"])
@pytest.mark.parametrize("every", [1, 2, 50])
def test_the_first_bad_batch_is_named_exactly(epoch, batch, value, word, every):
    seen = Seen()
    learn = toy_learner(Inject(epoch, batch, value), StopOnNonFinite("runs/x", every=every), seen)
    with pytest.raises(TrainingError) as e:
        learn.fit(3)
    msg = str(e.value).splitlines()[-1].strip()  # fastai prefixes a line naming the callback and event
    assert msg == (f"loss became {word} at epoch {epoch}, batch {batch} of 4; what the earlier epochs wrote is kept "
                   "in 'runs/x'; lower the learning rate or check the data")
    # it stops at the first check after the bad batch, and never tests the ruined weights
    stop = min(-(-batch // every) * every, 4)
    assert seen.batches[-1] == (epoch, stop)
    assert seen.validated == list(range(1, epoch))


def test_a_finite_fit_is_left_alone_with_one_check_an_epoch():
    Counting.checks = 0
    learn = toy_learner(Counting(every=50), epochs=2)
    learn.fit(2)
    assert Counting.checks == 2  # read on the host once an epoch, not once a batch


def test_a_training_error_is_a_tricks_error():
    assert issubclass(TrainingError, TricksError)


def test_recipe_run_exits_1_with_one_line_and_keeps_the_run_folder(tmp_path, data_env, monkeypatch, capsys):
    """Through the real command line: injected inf at epoch 2, batch 1 of 2 (9 images of 8x8, bs 4)."""
    import recipes.fit
    from recipes.cli import main

    real = recipes.fit.build_learner
    monkeypatch.setattr(recipes.fit, "build_learner",
                        lambda recipe, dls, model, cbs=(), **kw: real(recipe, dls, model, [Inject(2, 1), *cbs], **kw))
    simple_image_folder(tmp_path / "images", n_train=3, n_test=1, hw=(8, 8))
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "keep.txt").write_text("precious")
    out = tmp_path / "runs" / "new"
    code = main(["run", "baseline", "--dataset", "folder", "--data", str(tmp_path / "images"), "--out", str(out),
                 "--device", "cpu", "--epochs", "2", "--bs", "4"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err == (f"recipe: error: loss became inf at epoch 2, batch 1 of 2; what the earlier epochs wrote is kept "
                   f"in '{out}'; lower the learning rate or check the data\n")
    # epoch 1's files stay (with its checkpoint and the one of the fit's start, recipes.checkpoint); the fit
    # stopped before its weights or result were written
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.prev.pth", "checkpoint.pth", "config.json",
                                                     "metrics.csv"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"] and re.fullmatch(r"[0-9.e+-]+", rows[0]["train_loss"])
    assert (tmp_path / "runs" / "old" / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["new", "old"]


def test_the_checks_read_lowers_cudas_sync_debug_mode_and_restores_it(monkeypatch):
    from recipes.nan_guard import host_read_allowed

    calls = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 2)  # "error", as the GPU's sync-debug run sets it
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", calls.append)
    with host_read_allowed(torch.device("cuda", 0)):
        assert calls == [0]
    assert calls == [0, 2]
    with pytest.raises(RuntimeError), host_read_allowed(torch.device("cuda", 0)):
        raise RuntimeError("the read failed")
    assert calls == [0, 2, 0, 2]  # restored on an error too
    with host_read_allowed(torch.device("cpu")):
        pass
    assert calls == [0, 2, 0, 2]  # the CPU has no such mode
