import csv
import json

import pytest
import torch

from recipes.build import build_model, sgd_param_groups
from recipes.parse import parse_recipe
from recipes.fit import METRICS_COLUMNS
from recipes.run import train
from tricks.errors import RunFolderError
from fixtures import toy_data


def toy_recipe(**kw):
    return parse_recipe("baseline", **{"epochs": 2, "bs": 32, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "toy"
    return out, train(toy_recipe(), out, data=toy_data())


def test_run_folder_holds_config_metrics_result_weights_and_curves(toy_run):
    out, result = toy_run
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "curves.png", "metrics.csv", "model.pth",
                                                      "result.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == "baseline" and config["epochs"] == 2 and config["data"] == "toy"
    assert (config["train_images"], config["test_images"], config["num_classes"]) == (128, 64, 4)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and tuple(rows[0]) == METRICS_COLUMNS
    saved = json.loads((out / "result.json").read_text())
    assert saved == {k: v for k, v in result.items() if k != "out"}
    assert saved["test_acc"] == pytest.approx(float(rows[-1]["test_acc"]), abs=1e-4)
    assert saved["best_test_acc"] == pytest.approx(max(float(r["test_acc"]) for r in rows), abs=1e-4)
    assert saved["epochs"] == 2 and saved["seed"] == 0 and saved["train_images_per_second"] > 0
    assert {"torch", "fastai", "timm", "torchvision", "fastai-tricks"} <= set(saved["versions"])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_weights_give_the_recorded_accuracy(toy_run):
    out, result = toy_run
    data = toy_data()
    model = build_model(toy_recipe(), data.num_classes, data.channels)
    model.load_state_dict(torch.load(out / "model.pth", weights_only=True))
    model.eval()
    from recipes.build import normalization
    mean, std = normalization(toy_recipe(), data)
    x = (data.test.images.float() / 255 - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        acc = (model(x).argmax(1) == data.test.labels).float().mean().item() * 100
    assert acc == pytest.approx(result["test_acc"], abs=1e-4)


def test_training_learns_the_toy_task(toy_run):
    assert toy_run[1]["test_acc"] > 50.0  # chance is 25%


def test_same_seed_same_metrics(tmp_path):
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    runs = []
    for name in ("a", "b"):
        train(toy_recipe(epochs=1), tmp_path / name, data=toy_data())
        runs.append(strip(csv.DictReader((tmp_path / name / "metrics.csv").open())))
    assert runs[0] == runs[1]
    a = torch.load(tmp_path / "a" / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weight_decay_skips_batchnorm_and_bias():
    data = toy_data()
    model = build_model(toy_recipe(), data.num_classes, data.channels)
    decay, no_decay = sgd_param_groups(model, 5e-4, wd_bn_bias=False)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(no_decay["params"]) == ids([p for m in bn for p in (m.weight, m.bias)] + [model.fc.bias])
    assert ids(decay["params"]) == ids([m.weight for m in model.modules()
                                        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))])
    (everything,) = sgd_param_groups(model, 5e-4, wd_bn_bias=True)
    assert len(everything["params"]) == len(list(model.parameters()))


def test_non_empty_out_is_refused(tmp_path):
    (tmp_path / "old.csv").write_text("x")
    with pytest.raises(RunFolderError, match="already holds files"):
        train(toy_recipe(), tmp_path, data=toy_data())
    assert [p.name for p in tmp_path.iterdir()] == ["old.csv"]


def test_recipe_run_on_real_cifar10_jpeg_archive(cifar10_jpeg, cifar10_jpeg_cache, tmp_path):
    """The console script end to end on the shared archive (cache decoded once by the fixture)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from fixtures import shared_cifar10_archive

    out = tmp_path / "run"
    env = {**os.environ, "TRICKS_CACHE": str(cifar10_jpeg_cache), "COLUMNS": "120"}
    proc = subprocess.run([str(Path(sys.executable).parent / "recipe"), "run", "baseline",
                           "--data", str(shared_cifar10_archive()), "--epochs", "1", "--subset", "500",
                           "--bs", "100", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert (config["train_images"], config["test_images"], config["image_size"]) == (500, 10000, [32, 32])
    assert config["dataset"] == "cifar10" and config["warmup_epochs"] == pytest.approx(0.05)
    assert 0.0 <= result["test_acc"] <= 100.0 and result["epochs"] == 1
    assert f"test accuracy {result['test_acc']:.2f}%" in proc.stdout


@pytest.mark.parametrize("recipe", [
    "baseline:model=preact_resnet20",
    "baseline:model=wrn10_1,drop_rate=0.1",
    "baseline:model=timm:resnet18,stem=conv3x3s1-nomaxpool,zero_init_last=false",
    "baseline:step=epoch,warmup=exp,nesterov=true,pad_mode=reflect,resize_crop=true,normalize=half",
    "baseline:subset=40,test_subset=20",
])
def test_other_models_and_options_train(recipe, tmp_path):
    r = parse_recipe(recipe, epochs=1, bs=64, device="cpu")
    result = train(r, tmp_path / "run", data=toy_data())
    assert result["epochs"] == 1 and 0.0 <= result["test_acc"] <= 100.0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"] == recipe and config["model"] == r.model
    assert (config["train_images"], config["test_images"]) == (r.subset or 128, r.test_subset or 64)
