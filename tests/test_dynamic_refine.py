import copy

import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback

from fixtures import CancelAfter, Spy, check_loss_restored, run_recipe, toy_learner
from tricks.dynamic_refine import DynamicRefine, blend_targets, refine_targets
from tricks.errors import ConfigError
from tricks.label_refinery import teacher_targets
from tricks.losses import one_hot, soft_target_cross_entropy


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(16, 10, generator=g) * 2, torch.randint(0, 10, (16,), generator=g)


def test_refined_targets_are_the_formula_and_detached(batch):
    z, y = batch
    y_soft = one_hot(y, 10)
    for w, t in ((0.5, 1.0), (0.3, 2.0), (0.0, 1.0), (1.0, 0.5)):
        zz = z.clone().requires_grad_()
        r = refine_targets(y_soft, zz, w, t)
        assert not r.requires_grad
        assert torch.equal(r, (1 - w) * y_soft + w * torch.softmax(z / t, dim=1))
        torch.testing.assert_close(r.sum(1), torch.ones(16))
    assert torch.equal(refine_targets(y_soft, z, 0.0, 1.0), y_soft)
    assert torch.equal(refine_targets(y_soft, z, 1.0, 2.0), torch.softmax(z / 2.0, dim=1))


def test_refine_targets_is_the_blend_of_the_refinery_teacher_targets(batch):
    """The callback's `refine_targets` of snapshot(x) is the refinery's `teacher_targets(snapshot, x, T)` blended."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    x, y = torch.randn(8, 3, 2, 2), torch.randint(0, 5, (8,))
    with torch.no_grad():
        logits = net(x)
    assert torch.equal(blend_targets(one_hot(y, 5), teacher_targets(net, x, 2.0), 0.3),
                       refine_targets(one_hot(y, 5), logits, 0.3, 2.0))


class Recorder(Callback):
    """Per epoch: the model's weights at its end. Per training batch: the x before mixup (order 25), the
    targets just before dynamic refine (order 33) and the snapshot the trick holds (order 99)."""

    order = 99
    run_valid = False

    def __init__(self):
        self.states, self.raw_x, self.before, self.snaps = [], [], [], []

    def after_epoch(self):
        self.states.append(copy.deepcopy(self.learn.model.state_dict()))

    def after_batch(self):
        snap = next(cb for cb in self.learn.cbs if isinstance(cb, DynamicRefine)).snapshot
        self.snaps.append(None if snap is None else dict(
            id=id(snap), training=snap.training, grad=any(p.requires_grad for p in snap.parameters()),
            state={k: v.clone() for k, v in snap.state_dict().items()},
            model={k: v.clone() for k, v in self.learn.model.state_dict().items()}))


class At(Callback):
    """Calls `fn(learn)` at `event` of training batches, with the given order."""

    run_valid = False

    def __init__(self, order, event, fn):
        self.order, self.fn = order, fn
        setattr(self, event, lambda: fn(self.learn))


def recorded(text, epochs):
    """Fit `text` on the toy data; returns (learn, training rows of Spy, Recorder)."""
    spy, rec = Spy(), Recorder()
    raw = At(25, "before_batch", lambda learn: rec.raw_x.append(learn.xb[0].clone()))
    peek = At(33, "after_pred", lambda learn: rec.before.append(learn.yb[0].clone()))
    learn = toy_learner(text, spy, rec, raw, peek, epochs=epochs)
    learn.fit(epochs)
    return learn, spy.rows, rec


def teacher(learn, state):
    """The model with the weights of `state`, frozen in eval mode: the snapshot rebuilt."""
    net = copy.deepcopy(learn.model).eval()
    net.load_state_dict(state)
    return net


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_targets_blend_the_snapshot_of_the_previous_epoch_from_start_epoch_on():
    w, t = 0.4, 2.0
    learn, rows, rec = recorded(f"baseline+dynarefine:weight={w},temperature={t},start_epoch=2", epochs=3)
    train = [r for r in rows if r["training"]]
    assert len(train) == len(rec.before) == len(rec.snaps) == 12 and len(rec.states) == 3
    for r, before, snap in zip(train, rec.before, rec.snaps):
        assert before.dtype == torch.int64
        if r["epoch"] < 2:  # before start_epoch: the labels as they came, no snapshot yet
            assert snap is None
            assert torch.equal(r["y"], before)
            assert torch.equal(r["loss"], F.cross_entropy(r["pred"], before))
            continue
        # the snapshot: frozen, in eval mode, the weights of the end of epoch 1, not the moving model
        assert not snap["training"] and not snap["grad"]
        assert same_state(snap["state"], rec.states[1]) and not same_state(snap["state"], snap["model"])
        with torch.no_grad():
            logits = teacher(learn, rec.states[1])(r["x"])
        assert torch.equal(r["y"], refine_targets(one_hot(before, 4), logits, w, t))
        assert torch.equal(r["loss"], soft_target_cross_entropy(r["pred"], r["y"]))
    assert len({s["id"] for s in rec.snaps if s is not None}) == 1  # one snapshot for the epoch
    assert next(cb for cb in learn.cbs if isinstance(cb, DynamicRefine)).snapshot is None  # freed
    test = [r for r in rows if not r["training"]]
    assert len(test) == 6
    for r in test:  # the test split: true labels, plain cross entropy
        assert r["y"].dtype == torch.int64 and torch.equal(r["loss"], F.cross_entropy(r["pred"], r["y"]))


def test_with_mixup_the_snapshot_sees_the_mixed_batch_and_refines_the_mixed_targets():
    learn, rows, rec = recorded("baseline+lsmooth:eps=0.1+mixup+dynarefine", epochs=2)
    train = [r for r in rows if r["training"]]
    assert len(train) == 8
    net = teacher(learn, rec.states[0])  # default start_epoch=1: the snapshot of the end of epoch 0
    for r, raw_x, before, snap in zip(train, rec.raw_x, rec.before, rec.snaps):
        assert before.shape == (16, 4) and before.is_floating_point()  # smoothed at 20, mixed at 30
        if r["epoch"] == 0:
            assert snap is None and torch.equal(r["y"], before)
            continue
        assert same_state(snap["state"], rec.states[0])
        assert not torch.equal(r["x"], raw_x)  # mixup changed the images
        with torch.no_grad():
            mixed, unmixed = net(r["x"]), net(raw_x)
        assert torch.equal(r["y"], refine_targets(before, mixed, 0.5, 1.0))
        assert not torch.allclose(r["y"], refine_targets(before, unmixed, 0.5, 1.0))


@pytest.mark.parametrize("text", ["baseline+dynarefine", "baseline+lsmooth+mixup+dynarefine"])
def test_loss_is_restored_after_fit_and_after_a_cancelled_fit(text):
    assert check_loss_restored(text) is soft_target_cross_entropy


def test_loss_and_snapshot_are_restored_after_a_fit_cancelled_while_refining():
    spy = Spy()
    learn = toy_learner("baseline+dynarefine", spy, CancelAfter(6), epochs=2)  # cancels in epoch 1
    original = learn.loss_func
    learn.fit(2)
    dyn = next(cb for cb in learn.cbs if isinstance(cb, DynamicRefine))
    assert learn.loss_func is original and dyn.snapshot is None
    train = [r for r in spy.rows if r["training"]]
    assert len(train) == 6 and train[-1]["epoch"] == 1 and train[-1]["y"].is_floating_point()


def test_mixing_losses_with_dynarefine_is_refused():
    learn = toy_learner("baseline+mixup:mix=losses+dynarefine")
    with pytest.raises(ConfigError, match="mix=labels"):
        learn.fit(1)


def test_bad_parameters_are_refused():
    for kw in (dict(weight=1.5), dict(weight=-0.1), dict(temperature=0.0), dict(start_epoch=0)):
        with pytest.raises(ConfigError):
            DynamicRefine(**kw)


def test_trains_through_train(tmp_path):
    run_recipe("baseline+dynarefine", tmp_path, epochs=2)
