import json

import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.learner import Learner

import tricks  # noqa: F401  (registers every trick)
from recipes.generations import generation_plan, refine_params
from recipes.parse import parse_recipe
from recipes.run import train
from tricks import LabelRefinery
from tricks.data.loaders import DeviceLoader, device_dataloaders
from tricks.errors import ConfigError
from tricks.label_refinery import teacher_targets
from tricks.models import create_model

from fixtures import toy_data


def small_model(seed):
    torch.manual_seed(seed)
    return create_model("resnet20", num_classes=4, in_chans=3)


def toy_dls(bs=32):
    d = toy_data()
    common = dict(bs=bs, mean=torch.tensor([0.2] * 3), std=torch.tensor([0.3] * 3))
    return device_dataloaders(DeviceLoader(d.train.images, d.train.labels, shuffle=True, drop_last=True, **common),
                              DeviceLoader(d.test.images, d.test.labels, **common))


class Spy(Callback):
    """Records what the student sees and is trained towards, after every target trick ran."""
    order = 50

    def before_fit(self):
        self.seen = []

    def after_pred(self):
        if self.training:
            self.seen.append((self.learn.xb[0].clone(), self.learn.yb[0].clone()))


def test_teacher_targets_are_the_tempered_softmax():
    teacher = small_model(0).eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        logits = teacher(x)
    torch.testing.assert_close(teacher_targets(teacher, x), F.softmax(logits, 1))
    torch.testing.assert_close(teacher_targets(teacher, x, 0.5), F.softmax(logits / 0.5, 1))


@pytest.mark.parametrize("mixup", [False, True])
def test_refinery_target_is_the_teachers_softmax_of_the_exact_batch_and_the_teacher_never_changes(mixup):
    teacher = small_model(0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    spy = Spy()
    cbs = [LabelRefinery(teacher), spy]
    if mixup:
        from tricks import MixUp
        cbs.append(MixUp(alpha=1.0))
    learn = Learner(toy_dls(), small_model(1), loss_func=torch.nn.CrossEntropyLoss(), cbs=cbs)
    learn.fit(2, lr=0.05)
    assert len(spy.seen) == 8
    teacher.eval()
    for x, y in spy.seen:
        with torch.no_grad():
            torch.testing.assert_close(y, F.softmax(teacher(x), 1))
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert learn.loss_func.__class__ is torch.nn.CrossEntropyLoss  # restored after the fit


def test_generation_plan_keeps_mixup_in_generation_0_only():
    r = parse_recipe("baseline+mixup+refine:gens=3,gen_epochs=50", epochs=200)
    plan = generation_plan(r, refine_params(r))
    assert [[n for n, _ in g.tricks] for g in plan] == [["mixup"], [], [], []]
    assert [g.epochs for g in plan] == [200, 50, 50, 50] and [g.seed for g in plan] == [0, 1, 2, 3]
    assert plan[1].warmup_epochs == pytest.approx(2.5)
    r = parse_recipe("baseline+mixup+refine:gens=2,mixup=all")
    assert [[n for n, _ in g.tricks] for g in generation_plan(r, refine_params(r))] == [["mixup"]] * 3
    r = parse_recipe("baseline+refine:weak=500,mixup=all")
    with pytest.raises(ConfigError, match="use refine:mixup=first"):
        generation_plan(r, refine_params(r))


def test_recipe_run_trains_every_generation_and_records_each_accuracy(tmp_path):
    r = parse_recipe("baseline+mixup+refine:gens=2", epochs=1, bs=32, device="cpu")
    result = train(r, tmp_path / "run", data=toy_data())
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "gen0", "gen1", "gen2", "result.json"]
    saved = json.loads((out / "result.json").read_text())
    accs = [json.loads((out / f"gen{g}" / "result.json").read_text())["test_acc"] for g in range(3)]
    assert saved["generation_test_acc"] == accs == result["generation_test_acc"]
    assert [g["tricks"] for g in saved["generations"]] == [["mixup"], [], []]
    for g in range(3):
        config = json.loads((out / f"gen{g}" / "config.json").read_text())
        assert config["generation"] == g and (out / f"gen{g}" / "model.pth").is_file()


def test_weak_supervision_never_reads_the_labels_of_the_refinement_generations(tmp_path):
    seen = []

    class LabelSpy(Callback):
        order = 50

        def before_fit(self):
            seen.append({"labels": set(self.dls.train.labels.tolist()), "targets": []})

        def after_pred(self):
            if self.training:
                seen[-1]["targets"].append(self.learn.yb[0])

    r = parse_recipe("baseline+mixup+refine:gens=1,weak=8", epochs=1, bs=16, device="cpu")
    train(r, tmp_path / "run", data=toy_data(), callbacks=lambda stats: [LabelSpy()])
    gen0 = json.loads((tmp_path / "run" / "gen0" / "config.json").read_text())
    gen1 = json.loads((tmp_path / "run" / "gen1" / "config.json").read_text())
    assert (gen0["train_images"], gen1["train_images"]) == (32, 128)
    assert seen[0]["labels"] == {0, 1, 2, 3}
    assert seen[1]["labels"] == {-1}  # the refinement's loader holds no label at all
    assert all(t.is_floating_point() and t.shape[1] == 4 for t in seen[1]["targets"])


def test_refinery_targets_are_neither_smoothed_nor_mixed_again(tmp_path):
    """lsmooth and mixup run in every generation here; the student still trains on the teacher's softmax."""
    r = parse_recipe("baseline+lsmooth+mixup:alpha=1+refine:gens=1,mixup=all", epochs=1, bs=32, device="cpu")
    spies = []

    def spy(stats):
        spies.append(Spy())
        return [spies[-1]]

    train(r, tmp_path / "run", data=toy_data(), callbacks=spy)
    teacher = small_model(0)
    teacher.load_state_dict(torch.load(tmp_path / "run" / "gen0" / "model.pth", weights_only=True))
    teacher.eval()
    for x, y in spies[1].seen:
        with torch.no_grad():
            torch.testing.assert_close(y, F.softmax(teacher(x), 1))


def test_early_stopped_generation_0(tmp_path):
    r = parse_recipe("baseline+refine:gens=1,early_stop=1", epochs=3, bs=32, device="cpu")
    result = train(r, tmp_path / "run", data=toy_data())
    assert [g["epochs"] for g in result["generations"]] == [1, 3]
