"""The speed settings: channels-last memory format, autocast precision (CUDA only) and torch.compile."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from fastai.callback.fp16 import MixedPrecision
from fixtures import toy_data

from recipes.build import CompileModel, build_dataloaders, build_learner, build_model
from recipes.cli import main
from recipes.parse import parse_recipe
from recipes.run import train
from tricks.errors import ConfigError
from tricks.registry import TRICKS

TOY = dict(dataset="folder", model="resnet20", epochs=2, bs=32, device="cpu", warmup_epochs=0.5)


def test_channels_last_reaches_batches_and_weights_and_trains(tmp_path):
    data = toy_data()
    recipe = parse_recipe("baseline", channels_last=True, **TOY)
    dls = build_dataloaders(recipe, data, torch.device("cpu"))
    x, _ = next(iter(dls.train))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    x, _ = next(iter(dls.valid))
    assert x.is_contiguous(memory_format=torch.channels_last)
    model = build_model(recipe, data.num_classes, data.channels)
    build_learner(recipe, dls, model)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    result = train(recipe, tmp_path / "cl", data=data)
    plain = train(parse_recipe("baseline", **TOY), tmp_path / "plain", data=data)
    assert result["test_acc"] > 60 and abs(result["test_acc"] - plain["test_acc"]) <= 10  # same maths, other kernels


def test_precision_is_fastais_mixed_precision_and_needs_cuda(tmp_path, capsys):
    data = toy_data()
    recipe = parse_recipe("baseline", precision="bf16", **TOY)
    dls = build_dataloaders(recipe, data, torch.device("cpu"))
    learn = build_learner(recipe, dls, build_model(recipe, data.num_classes, data.channels))
    mp = [cb for cb in learn.cbs if isinstance(cb, MixedPrecision)]
    assert len(mp) == 1 and mp[0].amp_mode.value == "bf16"
    fp32 = build_learner(parse_recipe("baseline", **TOY), dls, build_model(recipe, data.num_classes, data.channels))
    assert not any(isinstance(cb, MixedPrecision) for cb in fp32.cbs)
    with pytest.raises(ConfigError, match=r"precision=bf16 autocasts on a CUDA GPU .* use precision=fp32 here"):
        train(recipe, tmp_path / "bf16", data=data)
    assert not (tmp_path / "bf16").exists()
    out = tmp_path / "cli"
    assert main(["run", "baseline", "--precision", "fp16", "--device", "cpu", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "precision=fp16 autocasts on a CUDA GPU" in err and not out.exists()
    with pytest.raises(ConfigError, match="precision=.fp8. is not allowed; choose one of auto, fp32, bf16, fp16"):
        parse_recipe("baseline:precision=fp8")


def test_compile_compiles_in_place_and_trains_like_eager(tmp_path):
    from fastai.callback.core import Callback

    calls = []

    class Hook(Callback):  # sees every call of the model: traced by dynamo (training) or run eagerly
        def before_fit(self):
            self.learn.model.register_forward_pre_hook(
                lambda m, a: calls.append((m.training, torch.compiler.is_compiling())))

    data = toy_data()
    compiled = train(parse_recipe("baseline", compile=True, **TOY), tmp_path / "c", data=data,
                     callbacks=lambda stats: [Hook()])
    # training went through dynamo (the hook ran while tracing); evaluation ran the eager module
    # (`torch.compiler.set_stance("force_eager")`): every evaluation call outside a trace
    assert any(c for t, c in calls if t) and any(not t for t, c in calls) and not any(c for t, c in calls if not t)
    eager = train(parse_recipe("baseline", **TOY), tmp_path / "e", data=data)
    assert compiled["test_acc"] > 60 and abs(compiled["test_acc"] - eager["test_acc"]) <= 10
    a = torch.load(tmp_path / "c" / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "e" / "model.pth", weights_only=True)
    assert a.keys() == b.keys()  # compiled in place: no `_orig_mod.` prefix in the saved weights
    assert json.loads((tmp_path / "c" / "config.json").read_text())["compile"] is True
    recipe = parse_recipe("baseline", compile=True, **TOY)
    dls = build_dataloaders(recipe, data, torch.device("cpu"))
    learn = build_learner(recipe, dls, build_model(recipe, data.num_classes, data.channels))
    assert sum(isinstance(cb, CompileModel) for cb in learn.cbs) == 1


def test_evaluation_runs_under_inference_mode_and_training_goes_on_after_it(tmp_path):
    from fastai.callback.core import Callback

    seen = []

    class Mode(Callback):
        def after_batch(self):
            seen.append((self.training, torch.is_inference_mode_enabled(), torch.is_grad_enabled()))

    data = toy_data()
    recipe = parse_recipe("baseline+ema:eval=true", **{**TOY, "epochs": 3})
    dls = build_dataloaders(recipe, data, torch.device("cpu"))
    learn = build_learner(recipe, dls, build_model(recipe, data.num_classes, data.channels), cbs=[Mode()])
    learn.fit(recipe.epochs)
    assert {s for s in seen if s[0]} == {(True, False, True)}  # training: autograd on, not inference mode
    assert {s for s in seen if not s[0]} == {(False, True, False)}  # every evaluation batch in inference mode
    assert len([s for s in seen if not s[0]]) == 3 * len(dls.valid) and not torch.is_inference_mode_enabled()


def test_auto_speed_settings_resolve_per_device(monkeypatch):
    from recipes import speed

    recipe = parse_recipe("baseline")
    assert (recipe.channels_last, recipe.precision, recipe.compile, recipe.compile_mode) == (True, "auto", None, "auto")
    cpu, notes = speed.resolve_speed(recipe, torch.device("cpu"))
    assert (cpu.channels_last, cpu.precision, cpu.compile, cpu.compile_mode, notes) == (True, "fp32", False, "default", [])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda, notes = speed.resolve_speed(recipe, torch.device("cuda"))
    assert (cuda.precision, cuda.compile, cuda.compile_mode, notes) == ("bf16", True, "reduce-overhead", [])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert speed.resolve_speed(recipe, torch.device("cuda"))[0].precision == "fp32"
    named = parse_recipe("baseline", precision="fp32", compile=False, compile_mode="default", channels_last=False,
                         compile_step=False)
    assert speed.resolve_speed(named, torch.device("cuda"))[0] == named  # what the user names is kept
    unsafe = dataclasses.replace(TRICKS.get("mixup"), cudagraph_unsafe="a host-side draw per step")
    monkeypatch.setitem(TRICKS._entries, "mixup", unsafe)  # as if mixup had registered with cudagraph_unsafe=...
    mixed, notes = speed.resolve_speed(parse_recipe("baseline+mixup"), torch.device("cuda"))
    assert mixed.compile_mode == "default"
    assert notes == ["compile_mode=default instead of reduce-overhead: mixup cannot run in a CUDA graph "
                     "(a host-side draw per step)"]


def test_config_json_holds_the_resolved_settings_and_the_cli_turns_them_off(tmp_path):
    data = toy_data()
    train(parse_recipe("baseline", **TOY), tmp_path / "a", data=data)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (config["channels_last"], config["precision"], config["compile"], config["eval_bs"]) == (True, "fp32", False, 1000)
    from recipes.cli import build_parser, recipe_from

    args = build_parser().parse_args(["run", "baseline", "--no-channels-last", "--no-compile", "--precision", "fp32",
                                      "--compile-mode", "default"])
    r = recipe_from(args)
    assert (r.channels_last, r.compile, r.precision, r.compile_mode) == (False, False, "fp32", "default")
