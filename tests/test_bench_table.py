"""The ablation table (bench/ablations.toml, bench/table.py) and its budgets (bench/budgets.py): the table
loads and validates, it holds every number of the notes, every replayable row parses and builds under
every budget, and the budgets give the documented schedule and data sizes."""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.budgets import BUDGETS, SHORT_SECONDS, fit_epochs, predicted_seconds, relative_cost, row_recipe
from bench.table import Row, load_table, select, status_counts
from recipes.build import build_model, build_tricks
from recipes.parse import parse_recipe
from tricks.errors import ConfigError
from bench.cli import main
from tests.fixtures import cifar10_jpeg_folder
from tricks.models import create_model

ACCURACY = re.compile(r"(?<![\d.])\d{2,}\.\d+(?![\d.])")  # every accuracy in the notes: 54.29 ... 94.15
GROUP = re.compile(r"(?<![\w./-])\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)+(?![\w./])")  # a/b/c of plain numbers
NOT_ACCURACIES = {  # slash groups in the notes that are not accuracies, and what they are
    "20/120": "n_epoch=W/T: 20 warmup of 120 epochs (S1), in S1.e120's options",
    "20/200": "n_epoch=W/T: 20 warmup of 200 epochs (S1-S3), the naive preset",
    "0.9/0.0001": "label smoothing on/off target values, lsmooth:on=0.9,off=0.0001",
    "0.95/0.00005": "label smoothing on/off target values, lsmooth:on=0.95,off=0.00005",
    "0.9/0.00005": "label smoothing on/off target values, lsmooth:on=0.9,off=0.00005",
    "50/100/150/200": "S10: epochs done after each 50-epoch refinery generation (no accuracies noted)",
}
INEXPRESSIBLE = {"S10.reid", "S11.opencv-aug"}


def notes_path(name: str) -> Path:
    env = os.environ.get("TRICKS_SHARED")
    shared = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    return shared / "notes" / name


@pytest.fixture(scope="module")
def table():
    return load_table()


@pytest.fixture(scope="module")
def notes() -> str:
    path = notes_path("experiment-log.md")
    if not path.is_file():
        pytest.skip(f"notes not found at {path} (set TRICKS_SHARED to the shared folder)")
    return path.read_text(encoding="utf-8")


def by_id(rows: list[Row]) -> dict[str, Row]:
    return {r.id: r for r in rows}


def replayable(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.status != "inexpressible"]


# ---------------------------------------------------------------- the table and the notes


def test_table_loads_with_unique_ids_and_these_counts(table):
    rows, conclusions = table
    assert len({r.id for r in rows}) == len(rows) == 151
    assert len({c.id for c in conclusions}) == len(conclusions) == 51
    assert status_counts(rows) == {"measured": 129, "unmeasured": 20, "inexpressible": 2}
    assert {r.id for r in rows if r.status == "inexpressible"} == INEXPRESSIBLE
    assert sorted({r.section for r in rows}, key=lambda s: int(s[1:])) == [f"S{i}" for i in range(1, 12)]
    assert Counter(r.kind for r in rows) == {"single": 132, "generations": 15, "runs": 4}


def test_every_accuracy_in_the_notes_is_a_noted_number_of_some_row(table, notes):
    rows, _ = table
    in_notes = Counter(float(x) for x in ACCURACY.findall(notes))
    in_table = {x for r in rows for x in r.noted}
    assert len(in_notes) > 100 and sum(in_notes.values()) == 179
    assert sorted(set(in_notes) - in_table) == []
    assert sorted(in_table - set(in_notes)) == []  # and no number that the notes do not have
    assert 94.15 in by_id(rows)["S6.chdrop2.refine.first50.gen50"].noted  # [sic], kept as written


def test_every_slash_group_is_one_rows_noted_numbers_or_allowed(table, notes):
    rows, _ = table
    noted = {r.noted for r in rows}
    groups = GROUP.findall(notes)
    accuracy_groups = [g for g in groups if all(ACCURACY.fullmatch(x) for x in g.split("/"))]
    assert len(accuracy_groups) == 12
    for g in accuracy_groups:
        assert tuple(float(x) for x in g.split("/")) in noted, g
    assert {g for g in groups if g not in accuracy_groups} == set(NOT_ACCURACIES)


def test_the_chinese_original_has_the_same_accuracies(notes):
    path = notes_path("experiment-log.zh.txt")
    if not path.is_file():
        pytest.skip(f"{path} not found")
    assert Counter(ACCURACY.findall(path.read_text(encoding="utf-8"))) == Counter(ACCURACY.findall(notes))


def test_rows_of_several_numbers_and_statuses(table):
    rows, _ = table
    row = by_id(rows)
    assert row["S2.naive"].kind == "runs" and row["S2.naive"].noted == (84.06, 85.18, 83.32)
    assert row["S9.refine.mixup-first"].kind == "generations"
    assert row["S9.refine.mixup-first"].noted == (93.06, 93.24, 93.20, 93.45, 93.37)
    for r in rows:
        assert (r.status == "unmeasured") == (r.status != "inexpressible" and not r.noted), r.id
        assert r.baseline is None or r.baseline in row
        if r.status == "inexpressible":
            assert len(r.why) > 60, r.id  # says what is missing
    assert row["S6.base"].baseline == "S6.base" and row["S6.refine"].baseline == "S6.base"
    assert row["S10.reid"].recipe == "" and row["S10.reid"].noted == ()
    assert row["S5.preact.lastgamma"].noted == (54.29,)  # the notes' number is kept for an inexpressible row


def test_conclusions_compare_replayable_rows(table):
    rows, conclusions = table
    row = by_id(rows)
    for c in conclusions:
        assert c.expect in ("better", "worse", "same")
        assert row[c.row].status != "inexpressible" and row[c.versus].status != "inexpressible"
    texts = {c.id: (c.row, c.versus, c.expect) for c in conclusions}
    assert texts["S7.cos-better"] == ("S7.mul", "S7.cos", "worse")
    assert texts["S9.mixup-helps"] == ("S9.mixup.a0.3", "S9.baseline", "better")
    assert texts["S9.refine-without-mixup"] == ("S9.refine.mixup-first", "S9.refine.mixup-all", "better")
    assert texts["S9.ema-needs-scheduler"] == ("S9.ema.noschedule", "S9.ema", "worse")
    assert texts["S6.warmup-same"] == ("S6.warmup1", "S6.warmup10", "same")


# ---------------------------------------------------------------- recipes under every budget


@pytest.mark.parametrize("budget", BUDGETS)
def test_every_replayable_row_parses_and_its_tricks_and_model_build(table, budget):
    rows, _ = table
    built: set = set()
    for row in replayable(rows):
        recipe = row_recipe(row, budget, seed=1, device="cpu")
        assert recipe.seed == 1 and recipe.recipe == row.recipe
        build_tricks(recipe)  # schedules check their milestones and floors here
        key = (recipe.model, recipe.shortcut, recipe.zero_init_last, recipe.stem, recipe.drop_rate)
        if budget == "full" and key not in built:
            built.add(key)
            build_model(recipe, 10, 3)


def test_inexpressible_rows_are_refused_and_their_models_do_not_build(table):
    rows, _ = table
    row = by_id(rows)
    for rid in INEXPRESSIBLE:
        with pytest.raises(ConfigError, match=re.escape(rid)):
            row_recipe(row[rid], "full", 0)
    # S5.preact.lastgamma: the lastgamma surgery zeros the BN before the last conv of timm's ResNetV2 blocks
    lastgamma = row["S5.preact.lastgamma"]
    recipe = parse_recipe(lastgamma.recipe, **lastgamma.options)
    model = build_model(recipe, 10, 3)
    (trick,) = [cb for cb in build_tricks(recipe) if type(cb).__name__ == "LastGamma"]
    trick.edit(model, trick.check(model))
    zeroed = sorted(n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and not m.weight.any())
    assert len(zeroed) == 8 and all(n.endswith(".norm2") for n in zeroed)


def test_s4_shortcut3x3_and_s5_preact_rows_build_their_models(table):
    rows, _ = table
    row = by_id(rows)
    for rid in ("S4.shortcut3x3", "S5.preact"):
        assert (row[rid].status, row[rid].why, row[rid].kind) == ("measured", "", "single"), rid
    s4 = row_recipe(row["S4.shortcut3x3"], "full", 0)
    assert (s4.model, s4.stem, s4.shortcut, s4.warmup_epochs) == ("timm:resnet18", "conv3x3s1-nomaxpool",
                                                                  "conv3x3", 10.0)
    assert row_recipe(row["S4.eta0"], "full", 0).shortcut == "conv3x3"  # S5 puts the 1x1 shortcut back
    model = build_model(s4, 10, 3)
    convs = {n: m for n, m in model.named_modules() if ".downsample." in n and isinstance(m, nn.Conv2d)}
    assert len(convs) == 3 and all(c.kernel_size == (3, 3) and c.stride == (2, 2) for c in convs.values())
    s5 = row_recipe(row["S5.preact"], "full", 0)
    assert (s5.model, s5.stem, s5.shortcut) == ("timm:resnetv2_18", "conv3x3s1-nomaxpool", "conv1x1")
    model = build_model(s5, 10, 3)
    assert isinstance(model.stem.pool, nn.Identity) and not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.stem.conv.kernel_size == (3, 3) and model.stem.conv.stride == (1, 1)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert relative_cost("timm:resnetv2_18", "conv3x3s1-nomaxpool") == pytest.approx(
        relative_cost("timm:resnet18", "conv3x3s1-nomaxpool"), rel=0.01)


def test_budgets_change_only_schedule_and_data(table):
    rows, _ = table
    scheduled = {"refine": {"gens", "first_epochs", "gen_epochs", "early_stop", "weak"}, "sgdr": {"len"},
                 "stepdecay": {"at"}}
    same_fields = ("model", "lr", "wd", "eta", "momentum", "crop_pad", "resize_crop", "normalize", "stem",
                   "zero_init_last", "warmup", "warmup_start_lr", "step", "dataset")
    for row in replayable(rows):
        full = row_recipe(row, "full", 0)
        for budget in ("smoke", "short"):
            other = row_recipe(row, budget, 0)
            assert [n for n, _ in other.tricks] == [n for n, _ in full.tricks]
            for (name, p), (_, q) in zip(full.tricks, other.tricks):
                changed = {k for k, v in p if dict(q)[k] != v}
                assert changed <= scheduled.get(name, set()), (row.id, budget, name, changed)
            assert all(getattr(other, f) == getattr(full, f) for f in same_fields), (row.id, budget)


def test_full_budget_is_the_row_as_noted(table):
    rows, _ = table
    row = by_id(rows)
    r = row_recipe(row["S9.baseline"], "full", 3, data="/d/cifar", device="cpu")
    assert (r.epochs, r.warmup_epochs, r.subset, r.test_subset, r.bs, r.seed, r.data, r.device) == (
        200, 10.0, None, None, 256, 3, "/d/cifar", "cpu")
    r = row_recipe(row["S7.sgdr.len10.mult2.e160"], "full", 0)
    assert (r.epochs, r.warmup_epochs, dict(r.tricks[0][1])["len"]) == (160, 10.0, 10.0)
    r = row_recipe(row["S1.e120"], "full", 0)
    assert (r.model, r.epochs, r.warmup_epochs, r.bs, r.lr, r.wd, r.eta, r.resize_crop, r.crop_pad) == (
        "timm:resnet18", 120, 20.0, 64, 0.01, 1e-4, 1e-5, True, 0)
    r = row_recipe(row["S9.cifar100"], "full", 0, data="/d/cifar10")
    assert (r.dataset, r.data) == ("cifar100", None)  # the row's own dataset; the cifar10 path is not passed


def test_short_budget_sizes(table):
    rows, _ = table
    row = by_id(rows)
    r = row_recipe(row["S9.baseline"], "short", 0)
    assert (r.epochs, r.warmup_epochs, r.subset, r.test_subset, r.bs) == (4, 0.2, 5000, 2000, 256)
    r = row_recipe(row["S6.chdrop2.e400"], "short", 0)  # 400 epochs: 8, predicted at 111 s
    assert (r.epochs, r.warmup_epochs) == (8, 0.2)
    assert predicted_seconds(r, 1.0) == pytest.approx(8 * (5000 / 400 + 2000 / 1400))
    r = row_recipe(row["S7.sgdr.len10.mult2.e160"], "short", 0)  # 160 * 4/200 -> 3 epochs, ratio 3/160
    assert (r.epochs, r.warmup_epochs, dict(r.tricks[0][1])["len"]) == (3, 0.1875, 0.1875)
    r = row_recipe(row["S7.mul"], "short", 0)
    assert (r.epochs, dict(r.tricks[0][1])["at"]) == (4, "2/3")
    r = row_recipe(row["S9.refine.mixup-first"], "short", 0)  # 5 fits of 4 epochs (279 s) do not fit: 5 of 2 (139 s)
    assert (r.epochs, fit_epochs(r)) == (2, [2, 2, 2, 2, 2])
    r = row_recipe(row["S10.refine.gen50"], "short", 0)  # four 50-epoch fits: 4 x 1 epoch
    assert fit_epochs(r) == [1, 1, 1, 1]
    r = row_recipe(row["S6.chdrop2.refine.first50.gen50"], "short", 0)
    assert fit_epochs(r) == [1] * 8
    r = row_recipe(row["S10.weak"], "short", 0)
    assert dict(dict(r.tricks)["refine"])["weak"] == 50  # 500 of 5,000 per class -> 50 of 500
    r = row_recipe(row["S11.wrn28_10"], "short", 0)  # ~128x ResNet-20's multiply-adds: one batch
    assert (r.epochs, r.subset, r.test_subset) == (1, 256, 100)
    r = row_recipe(row["S3.wd5e-4"], "short", 0)  # timm ResNet-18 with the 3x3 stride-1 stem, ~13.6x
    assert (r.epochs, r.subset, r.test_subset) == (4, 367, 147)
    assert predicted_seconds(row_recipe(row["S9.baseline"], "short", 0), 1.0) == pytest.approx(55.714, abs=1e-3)
    assert relative_cost("resnet56") == pytest.approx(3.08, abs=0.01)


def test_every_short_row_is_predicted_to_fit(table):
    rows, _ = table
    for row in replayable(rows):
        r = row_recipe(row, "short", 0)
        cost = max(1.0, relative_cost(r.model, r.stem))
        assert predicted_seconds(r, cost) <= SHORT_SECONDS or set(fit_epochs(r)) == {1}, row.id


def test_smoke_budget_sizes(table):
    rows, _ = table
    row = by_id(rows)
    for rid in ("S9.baseline", "S6.chdrop2.e400", "S11.wrn28_10"):
        r = row_recipe(row[rid], "smoke", 0)
        assert (r.epochs, r.subset, r.test_subset, r.bs) == (1, 40, 40, 32)
    r = row_recipe(row["S6.chdrop2.refine.first50"], "smoke", 0)
    assert fit_epochs(r) == [1, 1]  # generations capped at 1
    r = row_recipe(row["S7.mul"], "smoke", 0)  # two milestones need three epochs
    assert (r.epochs, dict(r.tricks[0][1])["at"]) == (3, "1/2")
    r = row_recipe(row["S9.cifar100"], "smoke", 0)
    assert (r.subset, r.test_subset) == (100, 100)  # one image per class at least
    r = row_recipe(row["S10.weak"], "smoke", 0)
    assert dict(dict(r.tricks)["refine"])["weak"] == 4  # one batch of 32 for generation 0
    with pytest.raises(ConfigError, match="budget 'long' is not one of smoke, short, full"):
        row_recipe(row["S9.baseline"], "long", 0)


# ---------------------------------------------------------------- select


def test_select_globs(table):
    rows, _ = table
    assert select(rows, None) == rows
    assert [r.id for r in select(rows, "S9.mixup.*")] == ["S9.mixup.a0.1", "S9.mixup.a0.3", "S9.mixup.a0.5"]
    assert [r.id for r in select(rows, "s9.MIXUP.a0.3")] == ["S9.mixup.a0.3"]  # case-insensitive
    assert [r.id for r in select(rows, "S1.*,S11.look*")] == ["S1.e120", "S1.e200", "S1.dynarefine",
                                                               "S11.lookahead"]
    assert len(select(rows, "S7.sgdr.*")) == 11
    assert len(select(rows, "S1.*")) == 3  # not S10, S11
    with pytest.raises(ConfigError, match=r"^no row id matches 'S12\.\*'; ids look like") as e:
        select(rows, "S12.*")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- validation


ROW = 'id = "S1.a"\nsection = "S1"\nrecipe = "baseline"\nnoted = [90.0]\nstatus = "measured"\n'


@pytest.mark.parametrize("text, message", [
    (f"[[row]]\n{ROW}\n[[row]]\n{ROW}", "row 'S1.a' is defined twice"),
    (f"[[row]]\n{ROW}baseline = \"S1.b\"\n", "row 'S1.a': baseline 'S1.b' is not a row id"),
    (f"[[row]]\n{ROW.replace('measured', 'done')}", "row 'S1.a': status 'done' must be one of"),
    (f"[[row]]\n{ROW}kind = \"many\"\n", "row 'S1.a': kind 'many' must be one of"),
    (f"[[row]]\n{ROW.replace('[90.0]', '[]')}", "row 'S1.a' is measured but has no noted numbers"),
    (f"[[row]]\n{ROW.replace('baseline', 'baselin')}", "row 'S1.a': recipe 'baselin' does not parse: unknown"),
    (f"[[row]]\n{ROW}options = {{epoch = 3}}\n", "row 'S1.a': unknown option(s) epoch"),
    (f"[[row]]\n{ROW.replace('[90.0]', '[90.0, 91.0]')}", "row 'S1.a': kind 'single' takes one noted number"),
    (f"[[row]]\n{ROW.replace('baseline', 'baseline+refine:gens=2').replace('[90.0]', '[1.0, 2.0]')}"
     'kind = "generations"\n', "row 'S1.a': 2 noted generations need refine:gens=1"),
    (f"[[row]]\n{ROW.replace('S1.a', 'S2.a')}", "row 'S2.a': the id must be its section"),
    ("[[row]]\n" + ROW.replace('recipe = "baseline"', 'recipe = ""'), "row 'S1.a' has an empty recipe"),
    (f"[[row]]\n{ROW}colour = \"red\"\n", "row 'S1.a': unknown key(s) colour"),
    (f"[[row]]\n{ROW}\n[[conclusion]]\nid = \"S1.c\"\nsection = \"S1\"\ntext = \"t\"\nrow = \"S1.a\"\n"
     "versus = \"S1.x\"\nexpect = \"better\"\n", "conclusion 'S1.c': 'S1.x' is not a row id"),
    (f"[[row]]\n{ROW}\n[[conclusion]]\nid = \"S1.c\"\nsection = \"S1\"\ntext = \"t\"\nrow = \"S1.a\"\n"
     "versus = \"S1.a\"\nexpect = \"higher\"\n", "conclusion 'S1.c': expect 'higher' must be one of"),
    ("[[row]]\nid = \n", "is not valid TOML"),
])
def test_validation_errors_name_the_row(tmp_path, text, message):
    path = tmp_path / "ablations.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_table(path)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_missing_table_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_table(tmp_path / "nope.toml")


# --------------------------------------------------------------------------- tables of your own (--table)
README = Path(__file__).resolve().parents[1] / "README.md"
HE2016 = Path(__file__).resolve().parents[1] / "bench" / "he2016.toml"


def own_table() -> str:
    """The README's example table (between its own-table markers)."""
    block = README.read_text(encoding="utf-8").split("<!-- own-table:start -->")[1].split("<!-- own-table:end -->")[0]
    return block.split("```toml\n")[1].split("```")[0]


@pytest.mark.parametrize("old, new, message", [
    ("baseline:model=resnet8+mixup:alpha=0.2", "baseline:model=resnet8+mixupp:alpha=0.2",
     "my-table.toml, line 9: row 'S1.mixup': recipe 'baseline:model=resnet8+mixupp:alpha=0.2' does not parse"),
    ('versus = "S1.base"', 'versus = "S1.basis"', "my-table.toml, line 25: conclusion 'S1.mixup-helps': "
                                                  "'S1.basis' is not a row id"),
    ('id = "S1.lsmooth"', 'id = "S1.mixup"', "my-table.toml, line 17: row 'S1.mixup' is defined twice"),
])
@pytest.mark.parametrize("command", ["list", "replay", "report", "decide"])
def test_a_malformed_own_table_is_one_line_naming_its_line(tmp_path, capsys, old, new, message, command):
    table = tmp_path / "my-table.toml"
    table.write_text(own_table().replace(old, new), encoding="utf-8")
    results = tmp_path / "results"
    argv = [command, "--table", str(table)] + (["--results", str(results)] if command != "list" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not results.exists()  # refused before anything is written


def test_the_readme_own_table_is_decided_at_the_smoke_budget_on_an_image_folder(tmp_path, capsys):
    table = tmp_path / "my-table.toml"
    table.write_text(own_table(), encoding="utf-8")
    folder = cifar10_jpeg_folder(tmp_path / "my-images")
    argv = ["decide", "--table", str(table), "--data", str(folder), "--dataset", "folder", "--budget", "smoke",
            "--max-seeds", "3", "--results", str(tmp_path / "my-results")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| S1.mixup-helps"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:3] == ["mixup helps on my data", "better than S1.base"]
    assert cells[4] in ("confirmed", "contradicted", "undecided") and 2 <= int(cells[5]) <= 3
    assert "they are not conclusions" in out
    assert (tmp_path / "my-results" / "decide.md").read_text() in out
    assert main(argv) == 0  # decided: a second call trains nothing
    assert "ran 0, failed 0" in capsys.readouterr().out


def test_he2016_table_holds_table_6_in_the_papers_setting():
    rows, conclusions = load_table(HE2016)
    depths = (20, 32, 44, 56, 110)
    assert [r.id for r in rows] == [f"S1.resnet{d}" for d in depths]
    assert [r.noted for r in rows] == [(91.25,), (92.49,), (92.83,), (93.03,), (93.57,)]  # 100 - 8.75, ..., 6.43
    for row, depth in zip(rows, depths):
        recipe = row_recipe(row, "full", 0)
        assert (recipe.model, recipe.shortcut, recipe.zero_init_last) == (f"resnet{depth}", "pad", False)
        assert (recipe.bs, recipe.lr, recipe.wd, recipe.momentum, recipe.epochs) == (128, 0.1, 1e-4, 0.9, 164)
        assert (recipe.crop_pad, recipe.flip, recipe.resize_crop) == (4, True, False)
        assert dict(recipe.tricks)["stepdecay"] == (("at", "82/123"), ("gamma", 0.1), ("warmup", True))
        assert recipe.warmup_epochs == (1.03 if depth == 110 else 0)
    assert row_recipe(rows[-1], "full", 0).warmup_start_lr == 0.01
    assert [(c.row, c.versus, c.expect) for c in conclusions] == [
        (f"S1.resnet{b}", f"S1.resnet{a}", "better") for a, b in zip(depths, depths[1:])]


@pytest.mark.parametrize("depth, millions", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_option_a_nets_have_the_papers_parameter_counts(depth, millions):
    """Table 6's '# params' column, which only the parameter-free option A shortcut gives."""
    model = create_model(f"resnet{depth}", num_classes=10, shortcut="pad")
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(count, 2 if millions < 1 else 1) == millions


def test_option_a_shortcut_subsamples_and_pads_zero_channels():
    model = create_model("resnet20", num_classes=10, shortcut="pad")
    shortcut = model.stages[1][0].shortcut
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()
    assert not list(shortcut.parameters())


def test_he2016_rows_run_at_the_smoke_budget(tmp_path, capsys):
    folder = cifar10_jpeg_folder(tmp_path / "images")
    argv = ["replay", "--table", str(HE2016), "--budget", "smoke", "--data", str(folder), "--dataset", "folder",
            "--results", str(tmp_path / "results")]
    assert main(argv) == 0
    assert "ran 5" in capsys.readouterr().out
