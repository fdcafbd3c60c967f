import json
import subprocess
import sys

import pytest

from recipes.cli import main
from recipes.parse import parse_recipe
from recipes.recipe import Recipe
from tricks.errors import ConfigError


def test_baseline_is_the_notes_s9_baseline():
    r = parse_recipe("baseline")
    assert (r.model, r.shortcut, r.zero_init_last, r.bn_momentum) == ("resnet20", "conv1x1", True, None)
    assert (r.crop_pad, r.pad_mode, r.flip, r.resize_crop, r.normalize) == (4, "zeros", True, False, "dataset")
    assert (r.bs, r.lr, r.wd, r.momentum, r.epochs) == (256, 0.2, 5e-4, 0.9, 200)
    assert (r.warmup, r.warmup_epochs, r.warmup_start_lr, r.eta, r.step) == ("linear", 10.0, 1e-5, 1e-4, "iter")
    assert r.tricks == ()  # one-hot cross entropy: the Learner's own loss, no target trick


def test_epochs_override_scales_the_warmup():
    assert parse_recipe("baseline", epochs=10).warmup_epochs == pytest.approx(0.5)
    assert parse_recipe("baseline:epochs=20").warmup_epochs == pytest.approx(1.0)
    r = parse_recipe("baseline:epochs=20,warmup_epochs=2")
    assert (r.epochs, r.warmup_epochs) == (20, 2.0)


def test_term_values_are_typed():
    r = parse_recipe("baseline:flip=off,subset=500,eta=1e-5,bn_momentum=0.01,model=preact_resnet56")
    assert (r.flip, r.subset, r.eta, r.bn_momentum, r.model) == (False, 500, 1e-5, 0.01, "preact_resnet56")
    assert parse_recipe("baseline:bn_momentum=none").bn_momentum is None


def test_cli_overrides_come_last_and_none_is_ignored():
    r = parse_recipe("baseline:lr=0.1", lr=0.05, wd=None)
    assert (r.lr, r.wd) == (0.05, 5e-4)


@pytest.mark.parametrize("text, message", [
    ("baselin", "unknown recipe term 'baselin'; did you mean 'baseline'"),
    ("baseline:epochs=ten", "recipe term 'baseline:epochs=ten': epochs='ten': epochs must be an integer"),
    ("baseline:colour=red", "recipe term 'baseline:colour=red': unknown key 'colour'; allowed keys: dataset,"),
    ("baseline:lr=0", "recipe term 'baseline:lr=0': lr=0.0 is out of range; allowed: (0, inf)"),
    ("baseline:momentum=1", "momentum=1.0 is out of range; allowed: [0, 1)"),
    ("baseline:epochs=0", "epochs=0 is out of range; allowed: [1, inf)"),
    ("baseline:pad_mode=edge", "pad_mode='edge' is not allowed; choose one of zeros, reflect"),
    ("baseline:lr", "recipe term 'baseline:lr': 'lr' must be key=value"),
    ("baseline:lr=1,lr=2", "key 'lr' is given twice"),
    ("baseline:epochs=5,warmup_epochs=5", "warmup_epochs=5.0 must be less than epochs=5"),
    ("", "empty recipe"),
    ("baseline+lsmooth+onehot", "tricks lsmooth and onehot both make the soft targets; keep one"),
    ("baseline+klmixup+mixup", "tricks klmixup and mixup both mix the batch"),
    ("baseline+sgdr+stepdecay", "tricks sgdr and stepdecay both set the lr schedule; keep one"),
    ("baseline+mixup+mixup:alpha=1", "trick 'mixup' is named twice; name it once"),
    ("baseline+mixup:alpha=-1", "recipe term 'mixup:alpha=-1': alpha=-1.0 is out of range"),
    ("baseline+mixup:beta=1", "trick 'mixup' has no parameter 'beta'; its parameters: alpha, mix"),
    ("baseline+fcdrop:where=middle", "where='middle' is not allowed; choose one of before, after"),
    ("baseline+refine:gens=x", "gens='x': gens must be an integer"),
    ("Baseline", "must be a name or name:key=value"),
])
def test_bad_recipes_fail_with_one_line(text, message):
    with pytest.raises(ConfigError) as e:
        parse_recipe(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_recipe_show_prints_the_resolved_config(capsys):
    assert main(["show", "baseline:eta=1e-5", "--epochs", "20", "--model", "preact_resnet20"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config == {**Recipe().to_dict(), "recipe": "baseline:eta=1e-5", "eta": 1e-5, "epochs": 20,
                      "warmup_epochs": 1.0, "model": "preact_resnet20", "tricks": []}


def test_recipe_list_shows_baseline(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "S9" in out
    assert "preact_resnet56" in out and "wrn<depth>_<width>" in out and "timm:<name>" in out


@pytest.mark.parametrize("argv, message", [
    (["run", "baselin"], "recipe: error: unknown recipe term 'baselin'; did you mean 'baseline'"),
    (["run", "baseline", "--epochs", "x"], "recipe: error: argument --epochs: invalid int value: 'x'"),
    (["fly"], "recipe: error: argument command: invalid choice: 'fly'"),
])
def test_cli_errors_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_missing_data_path_is_one_line_exit_2(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "recipes.cli", "run", "baseline", "--data", str(tmp_path / "nope"),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("recipe: error: data path ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr and not out.exists()


def test_out_folder_with_files_is_refused_and_kept(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["run", "baseline", "--out", str(out), "--data", str(tmp_path)]) == 2
    assert (out / "keep.txt").read_text() == "precious" and len(list(out.iterdir())) == 1


def test_a_trick_the_model_cannot_take_fails_before_anything_is_written(tmp_path, capsys):
    from fixtures import write_cifar10

    write_cifar10(tmp_path / "cifar-10-batches-py")
    out = tmp_path / "run"
    argv = ["run", "baseline+lastbn:on=false", "--data", str(tmp_path / "cifar-10-batches-py"), "--out", str(out),
            "--device", "cpu", "--epochs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("recipe: error: lastbn applies to pre-activation models") and err.count("\n") == 1
    assert not out.exists()


def test_presets_expand_their_trick_chain():
    best = parse_recipe("best")
    assert [n for n, _ in best.tricks] == ["finalbn", "mixup", "refine"]
    assert dict(dict(best.tricks)["mixup"])["alpha"] == 0.3 and dict(dict(best.tricks)["refine"])["mixup"] == "first"
    assert dict(dict(parse_recipe("best+mixup:alpha=0.5").tricks)["mixup"])["alpha"] == 0.5
    pre = parse_recipe("preact_baseline")
    assert (pre.model, pre.zero_init_last, pre.eta) == ("preact_resnet20", False, 1e-5)


ALL_TRICKS_A = ("baseline+channeldrop:max=1+resdrop:p=0.1+fcdrop:where=after+finalbn+lastgamma:on=false+leakyrelu:slope=0.01"
                "+bnmom:momentum=0.01+rotation:weight=0.5+onehot+mixup:alpha=0.3+dynarefine+sgdr:len=10,mult=2"
                "+lookahead:k=5+ema:decay=0.9+refine:gens=2")
ALL_TRICKS_B = "preact_baseline+lastbn:on=false+swish+lsmooth:on=0.9,off=0.0001+klmixup+stepdecay:at=100/150"


def test_recipe_show_resolves_recipes_that_name_every_trick(capsys):
    from tricks.registry import TRICKS

    named = set()
    for text in (ALL_TRICKS_A, ALL_TRICKS_B):
        assert main(["show", text]) == 0
        config = json.loads(capsys.readouterr().out)
        tricks = {t["name"]: t["params"] for t in config["tricks"]}
        named |= set(tricks)
        spec_keys = {name: [p.name for p in TRICKS.get(name).params] for name in tricks}
        assert all(list(params) == spec_keys[name] for name, params in tricks.items())  # every default filled in
    assert named == set(TRICKS.names())
    assert tricks["lsmooth"] == {"eps": 0.0, "on": 0.9, "off": 0.0001}


def test_recipe_list_shows_every_trick(capsys):
    from tricks.registry import TRICKS

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in TRICKS.names())


def test_a_refine_run_ends_with_its_generations_table():
    import io

    from rich.console import Console

    from recipes.cli import print_generations

    out = "/runs/baseline_model=resnet8_crop_pad=0_refine_gens=2-20261130-032952"
    for width in (80, 140):  # nothing cut or wrapped at 80 columns
        console = Console(file=io.StringIO(), width=width)
        print_generations(console, {"generation_test_acc": [88.25, 88.75, 87.5], "seed": 0, "out": out,
                                    "generations": [{"folder": "gen0"}, {"folder": "gen1"}, {"folder": "gen2"}]})
        text = console.file.getvalue()
        rows = [line for line in text.splitlines() if "curves.png" in line and "│" in line]
        assert len(rows) == 3 and "generations (seed 0)" in text
        assert "88.25" in rows[0] and "88.75" in rows[1] and "+0.50" in rows[1] and "-0.75" in rows[2]
        assert all(f"gen{i}/curves.png" in rows[i] for i in range(3))
        assert f"in {out}" in text.replace("\n", "")
