"""The ablation table: every row of the notes as a recipe (`bench/ablations.toml`), checked, and the
recipe of a row under a budget.

`load_table()` reads the TOML into `Row`s and `Conclusion`s and refuses, with one line naming the row,
anything the bench could not replay or report: duplicate ids, unknown baseline or row references, a
bad status or kind, a measured row without numbers, a recipe that does not parse.

Budgets (`row_recipe(row, budget, seed)`) change only the schedule length and the data size, never
which tricks run or their other parameters:

- `full`: the row's recipe and options as the notes ran them (200 epochs on the whole training set and
  so on), for a GPU.
- `short`: a CPU schedule; one row finishes in at most about 2.5 minutes on 2 cores, a typical row in
  about 1, so a whole section (S9: 39 rows) replays with 2 seeds in under 1.5 hours. A model of
  ResNet-20's cost trains on a class-balanced `subset` of 5,000 images and is tested on 2,000
  (`test_subset`); a 200-epoch fit becomes 4 epochs (every run length scaled by 4/200). A model that
  costs c times ResNet-20's multiply-adds on a 3x32x32 image (`relative_cost`, c >= 1) gets 5000/c
  training and 2000/c test images, at least one batch (bs) and 100. The predicted time of the row,
  sum over its fits of epochs * c * (subset / 400 + test_subset / 1400) seconds, is held to
  `SHORT_SECONDS` (150 s): when the scaled row (a refinery of 5 or 8 fits, a 320- or 400-epoch run)
  would take longer, the scale factor shrinks until it fits; each fit keeps at least 1 epoch. 400
  training and 1,400 test images/s is ResNet-20 at batch 256 on these 2 idle cores, measured with
  `recipe run baseline --data cifar10-jpeg.tar.gz --epochs 2 --subset 5000` (401 train img/s, 7 s to
  test 10,000 images), so a typical row (4 epochs, 5,000 images) is predicted at 56 s plus ~10 s of
  start-up. Two replay workers of one thread each train ~12% more images per second in all than one
  of two threads (`--workers 2`).
- `smoke`: a few batches per row, so that CI replays the whole table in minutes: 64 training and 64
  test images (at least one per class), batch 32, 1 epoch per fit, refinery generations capped at 1.
  The numbers mean nothing beyond 'it runs'.

What scales with the run length (factor r = new epochs / the row's epochs, or the budget's factor
for the refinery's own epoch counts): `epochs` (rounded down, at least 1), `warmup_epochs` (exactly r
times), `sgdr:len` (r times; with unit=iter, by the ratio of training iterations, the notes' full
training set being 50,000 CIFAR images), `stepdecay:at` (each milestone r times, rounded down, kept
increasing and after the warmup; the run is lengthened when they do not fit), `refine:first_epochs`,
`gen_epochs` and `early_stop`. With the data size: `refine:weak` (labelled images per class) scales
with the subset, keeping at least one batch. The returned `Recipe` keeps the row's recipe string; the
scaled values are in its fields and `tricks`.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.generations import generation_plan, refine_params
from recipes.parse import parse_recipe
from recipes.recipe import FIELDS, Recipe
from tricks.data import DATASETS
from tricks.errors import ConfigError
from tricks.registry import TRICKS

TABLE = Path(__file__).with_name("ablations.toml")
BUDGETS = ("smoke", "short", "full")
STATUSES = ("measured", "unmeasured", "inexpressible")
KINDS = ("single", "runs", "generations")
EXPECTS = ("better", "worse", "same")
SECTION = re.compile(r"^S[1-9][0-9]*$")
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")

# short budget (units in the names)
SHORT_TRAIN_IMAGES = 5000  # training images for a model of ResNet-20's cost
SHORT_TEST_IMAGES = 2000
SHORT_MIN_TEST_IMAGES = 100
SHORT_EPOCHS_PER_200 = 4  # a 200-epoch fit becomes 4 epochs
SHORT_SECONDS = 150.0  # predicted train + test seconds of one row at most
TRAIN_IMAGES_PER_SECOND = 400.0  # ResNet-20, batch 256, on 2 idle CPU cores, measured (module docstring)
TEST_IMAGES_PER_SECOND = 1400.0
# smoke budget
SMOKE_IMAGES = 64
SMOKE_BS = 32
SMOKE_GENERATIONS = 1
# the notes' full training sets, for scaling iteration-counted lengths and per-class counts
TRAIN_SET_IMAGES = {"cifar10": 50000, "cifar100": 50000, "fashion-mnist": 60000}

ROW_KEYS = ("id", "section", "recipe", "options", "noted", "kind", "status", "why", "baseline")
CONCLUSION_KEYS = ("id", "section", "text", "row", "versus", "expect")
NOT_OPTIONS = ("recipe", "tricks")


@dataclass(frozen=True)
class Row:
    id: str  # section + slug, e.g. "S9.mixup.a0.3"
    section: str  # "S9"
    recipe: str  # recipe string, e.g. "baseline+mixup:alpha=0.3"
    options: dict  # extra Recipe field values, e.g. {"epochs": 400}
    noted: tuple[float, ...]  # the noted accuracies (several runs, or one per refinery generation)
    kind: str  # "single" | "runs" | "generations"
    status: str  # "measured" | "unmeasured" (the notes' [no result]) | "inexpressible"
    why: str  # for inexpressible: why; for odd replays: what was odd
    baseline: str | None  # id of the row this one is compared with (its section's baseline)

    @property
    def stored_recipe(self) -> str:
        """The recipe as the results store keys it: the string, then the options as sorted JSON, if any."""
        return f"{self.recipe} {json.dumps(self.options, sort_keys=True)}" if self.options else self.recipe


@dataclass(frozen=True)
class Conclusion:
    id: str
    section: str
    text: str  # the notes' words, e.g. "mixup helps"
    row: str
    versus: str  # the row ids compared: `row` is `expect` than `versus`
    expect: str  # "better" | "worse" | "same"


def load_table(path: Path | None = None) -> tuple[list[Row], list[Conclusion]]:
    """The rows and conclusions of `path` (default bench/ablations.toml), validated (ConfigError)."""
    path = Path(path) if path is not None else TABLE
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"ablation table {path} does not exist; give the path of an ablations.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"ablation table {path} is not valid TOML: {e}") from None
    extra = set(doc) - {"row", "conclusion"}
    if extra:
        raise ConfigError(f"ablation table {path}: unknown table(s) {', '.join(sorted(extra))}; "
                          "only [[row]] and [[conclusion]]")
    for key in ("row", "conclusion"):
        if not isinstance(doc.get(key, []), list):
            raise ConfigError(f"ablation table {path}: '{key}' must be an array of tables, [[{key}]]")
    rows = [_row(entry, i) for i, entry in enumerate(doc.get("row", []))]
    conclusions = [_conclusion(entry, i) for i, entry in enumerate(doc.get("conclusion", []))]
    _check(rows, conclusions)
    return rows, conclusions


def _entry(entry: Any, i: int, what: str, keys: tuple[str, ...], required: tuple[str, ...]) -> str:
    """How errors name the entry ("row 'S9.x'"), after checking its keys and that its values are strings."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{what} #{i + 1} must be a table")
    label = f"{what} '{entry['id']}'" if isinstance(entry.get("id"), str) else f"{what} #{i + 1}"
    unknown = set(entry) - set(keys)
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(keys)}")
    for key in required:
        if key not in entry:
            raise ConfigError(f"{label}: missing '{key}'")
    for key, value in entry.items():
        if key not in ("options", "noted") and not isinstance(value, str):
            raise ConfigError(f"{label}: '{key}' must be a string")
    return label


def _row(entry: Any, i: int) -> Row:
    label = _entry(entry, i, "row", ROW_KEYS, ("id", "section", "recipe", "status"))
    noted = entry.get("noted", [])
    if not isinstance(noted, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in noted):
        raise ConfigError(f"{label}: 'noted' must be a list of numbers")
    options = entry.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{label}: 'options' must be a table of Recipe field values")
    bad = [k for k in options if k not in FIELDS or k in NOT_OPTIONS]
    if bad:
        allowed = ", ".join(k for k in FIELDS if k not in NOT_OPTIONS)
        raise ConfigError(f"{label}: unknown option(s) {', '.join(bad)}; options are Recipe fields: {allowed}")
    return Row(id=entry["id"], section=entry["section"], recipe=entry["recipe"], options=dict(options),
               noted=tuple(float(x) for x in noted), kind=entry.get("kind", "single"), status=entry["status"],
               why=entry.get("why", ""), baseline=entry.get("baseline"))


def _conclusion(entry: Any, i: int) -> Conclusion:
    _entry(entry, i, "conclusion", CONCLUSION_KEYS, CONCLUSION_KEYS)
    return Conclusion(**{k: entry[k] for k in CONCLUSION_KEYS})


def _check(rows: list[Row], conclusions: list[Conclusion]) -> None:
    ids: dict[str, Row] = {}
    for row in rows:
        _check_row(row)
        if row.id in ids:
            raise ConfigError(f"row '{row.id}' is defined twice; row ids must be unique")
        ids[row.id] = row
    for row in rows:
        if row.baseline is not None and row.baseline not in ids:
            raise ConfigError(f"row '{row.id}': baseline '{row.baseline}' is not a row id")
    seen: set[str] = set()
    for c in conclusions:
        if c.id in seen:
            raise ConfigError(f"conclusion '{c.id}' is defined twice; conclusion ids must be unique")
        seen.add(c.id)
        if not SECTION.match(c.section):
            raise ConfigError(f"conclusion '{c.id}': section '{c.section}' must look like S1, S12")
        if c.expect not in EXPECTS:
            raise ConfigError(f"conclusion '{c.id}': expect '{c.expect}' must be one of {', '.join(EXPECTS)}")
        if not c.text.strip():
            raise ConfigError(f"conclusion '{c.id}': 'text' must give the notes' words")
        for ref in (c.row, c.versus):
            if ref not in ids:
                raise ConfigError(f"conclusion '{c.id}': '{ref}' is not a row id")
            if ids[ref].status == "inexpressible":
                raise ConfigError(f"conclusion '{c.id}': row '{ref}' is inexpressible, so it cannot be compared")
        if c.row == c.versus:
            raise ConfigError(f"conclusion '{c.id}' compares row '{c.row}' with itself; name two rows")


def _check_row(row: Row) -> None:
    where = f"row '{row.id}'"
    if not SECTION.match(row.section):
        raise ConfigError(f"{where}: section '{row.section}' must look like S1, S12")
    if not (row.id.startswith(row.section + ".") and SLUG.match(row.id[len(row.section) + 1:])):
        raise ConfigError(f"{where}: the id must be its section, a dot and a slug of letters, digits, '.', '-' "
                          f"or '_', e.g. {row.section}.mixup.a0.3")
    if row.status not in STATUSES:
        raise ConfigError(f"{where}: status '{row.status}' must be one of {', '.join(STATUSES)}")
    if row.kind not in KINDS:
        raise ConfigError(f"{where}: kind '{row.kind}' must be one of {', '.join(KINDS)}")
    if row.status == "measured" and not row.noted:
        raise ConfigError(f"{where} is measured but has no noted numbers; give noted = [...] or status 'unmeasured'")
    if row.status == "unmeasured" and row.noted:
        raise ConfigError(f"{where} is unmeasured but has noted numbers; make it measured or drop them")
    if row.status == "inexpressible" and not row.why.strip():
        raise ConfigError(f"{where} is inexpressible; say in 'why' what the project is missing")
    if row.noted and row.kind == "single" and len(row.noted) != 1:
        raise ConfigError(f"{where}: kind 'single' takes one noted number, got {len(row.noted)}; use 'runs' "
                          "or 'generations'")
    if row.noted and row.kind != "single" and len(row.noted) < 2:
        raise ConfigError(f"{where}: kind '{row.kind}' needs at least two noted numbers; use 'single'")
    if not row.recipe.strip():
        if row.status != "inexpressible":
            raise ConfigError(f"{where} has an empty recipe; only an inexpressible row may")
        return
    try:
        recipe = parse_recipe(row.recipe, **row.options)
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: recipe '{row.recipe}' does not parse: {e}") from None
    refine = refine_params(recipe)
    if (refine is not None) != (row.kind == "generations"):
        raise ConfigError(f"{where}: kind 'generations' goes with a refine term and only with one "
                          f"(kind is '{row.kind}', refine is {'in' if refine else 'not in'} the recipe)")
    if refine is not None and row.noted and len(row.noted) != refine["gens"] + 1:
        raise ConfigError(f"{where}: {len(row.noted)} noted generations need refine:gens={len(row.noted) - 1}, "
                          f"the recipe has gens={refine['gens']}")


def select(rows: list[Row], pattern: str | None) -> list[Row]:
    """The rows whose id matches `pattern`, a glob (fnmatch, case-insensitive) or several joined by ','.

    None selects every row. A pattern that matches nothing is a ConfigError.
    """
    if pattern is None:
        return list(rows)
    globs = [p.strip().lower() for p in pattern.split(",") if p.strip()]
    if not globs:
        raise ConfigError(f"row pattern '{pattern}' is empty; give a glob such as 'S9.*' or a row id")
    chosen = [r for r in rows if any(fnmatch.fnmatchcase(r.id.lower(), g) for g in globs)]
    if not chosen:
        sections = sorted({r.section for r in rows}, key=lambda s: int(s[1:]))
        raise ConfigError(f"no row id matches '{pattern}'; ids look like S9.mixup.a0.3, e.g. 'S9.*' or "
                          f"'S7.sgdr.*' (sections {', '.join(sections)})")
    return chosen


def status_counts(rows: list[Row]) -> dict[str, int]:
    """Rows per status, every status present: {'measured': n, 'unmeasured': n, 'inexpressible': n}."""
    return {s: sum(r.status == s for r in rows) for s in STATUSES}


@functools.lru_cache(maxsize=None)
def relative_cost(model: str, stem: str = "default") -> float:
    """Multiply-adds of one 3x32x32 forward pass of `model`, over ResNet-20's (conv and linear layers)."""
    return _macs(model, stem) / _macs("resnet20", "default")


@functools.lru_cache(maxsize=None)
def _macs(model: str, stem: str) -> int:
    import torch
    from tricks.models import create_model

    net = create_model(model, num_classes=10, in_chans=3, stem=stem).eval()
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * module.in_channels // module.groups * k
        elif isinstance(module, torch.nn.Linear):
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in net.modules()]
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    return total


def fit_epochs(recipe: Recipe) -> list[int]:
    """Epochs of each fit the recipe trains (one, or one per refinery generation; an early stop counts)."""
    refine = refine_params(recipe)
    if refine is None:
        return [recipe.epochs]
    plan = [r.epochs for r in generation_plan(recipe, refine)]
    if refine["early_stop"]:
        plan[0] = min(plan[0], refine["early_stop"])
    return plan


def predicted_seconds(recipe: Recipe, cost: float) -> float:
    """Predicted train + test seconds on 2 CPU cores of `recipe` (with its subset sizes) for a model of `cost`."""
    per_epoch = cost * (recipe.subset / TRAIN_IMAGES_PER_SECOND + recipe.test_subset / TEST_IMAGES_PER_SECOND)
    return sum(fit_epochs(recipe)) * per_epoch


def row_recipe(row: Row, budget: str, seed: int, *, data: str | None = None, dataset: str = "cifar10",
               device: str = "auto") -> Recipe:
    """The `Recipe` that replays `row` under `budget` (see the module docstring) with `seed`.

    A dataset named in the row's options wins over `dataset`; `data` (a path for `dataset`) is then not
    passed, so the row's dataset is found by name ($TRICKS_DATA, the default locations).
    """
    if budget not in BUDGETS:
        raise ConfigError(f"budget '{budget}' is not one of {', '.join(BUDGETS)}")
    if row.status == "inexpressible":
        raise ConfigError(f"row '{row.id}' is inexpressible and cannot be replayed: {row.why}")
    options = dict(row.options)
    if options.get("dataset", dataset) != dataset:
        data = None
    overrides = {"dataset": dataset, "data": data, "seed": seed, "device": device, **options}
    try:
        full = parse_recipe(row.recipe, **overrides)
        if budget == "full":
            return full
        if budget == "smoke":
            return _smoke(full)
        return _short(full)
    except ConfigError as e:
        raise ConfigError(f"row '{row.id}' under budget '{budget}': {e}") from None


def _classes(dataset: str) -> int:
    spec = DATASETS.get(dataset)
    return spec.num_classes if spec is not None and spec.num_classes else 10


def _smoke(full: Recipe) -> Recipe:
    classes = _classes(full.dataset)
    n = max(SMOKE_IMAGES, classes)
    return scaled(full, factor=1 / full.epochs, subset=n, test_subset=n, bs=SMOKE_BS, max_gens=SMOKE_GENERATIONS)


def _short(full: Recipe) -> Recipe:
    cost = max(1.0, relative_cost(full.model, full.stem))
    classes = _classes(full.dataset)
    subset = max(full.bs, classes, round(SHORT_TRAIN_IMAGES / cost))
    test_subset = max(SHORT_MIN_TEST_IMAGES, classes, round(SHORT_TEST_IMAGES / cost))
    factor = SHORT_EPOCHS_PER_200 / 200
    recipe = scaled(full, factor=factor, subset=subset, test_subset=test_subset)
    if predicted_seconds(recipe, cost) <= SHORT_SECONDS:
        return recipe
    low, high = 0.0, factor  # bisect for the largest factor that fits; at 0 every fit trains 1 epoch
    for _ in range(40):
        mid = (low + high) / 2
        fits = predicted_seconds(scaled(full, factor=mid, subset=subset, test_subset=test_subset), cost)
        low, high = (mid, high) if fits <= SHORT_SECONDS else (low, mid)
    return scaled(full, factor=low, subset=subset, test_subset=test_subset)


def _scale_epochs(epochs: int, factor: float) -> int:
    return max(1, math.floor(epochs * factor + 1e-9))


def scaled(full: Recipe, *, factor: float, subset: int, test_subset: int, bs: int | None = None,
           max_gens: int | None = None) -> Recipe:
    """`full` with every run length times `factor` and the given data sizes (module docstring)."""
    bs = bs or full.bs
    epochs = _scale_epochs(full.epochs, factor)
    milestones = next((p["at"] for n, p in map(lambda t: (t[0], dict(t[1])), full.tricks) if n == "stepdecay"), None)
    if milestones is not None:  # each milestone needs its own epoch after the warmup and before the end
        needed = math.floor(full.warmup_epochs * epochs / full.epochs) + len(milestones.split("/")) + 1
        epochs = max(epochs, needed)
    ratio = epochs / full.epochs
    warmup = full.warmup_epochs * ratio
    full_images = full.subset or TRAIN_SET_IMAGES.get(full.dataset, 50000)
    iter_ratio = (epochs * (subset // bs)) / (full.epochs * (full_images // full.bs))
    classes = _classes(full.dataset)
    tricks = []
    for name, params in full.tricks:
        p = dict(params)
        if name == "refine":
            for key in ("first_epochs", "gen_epochs", "early_stop"):
                if p[key]:
                    p[key] = _scale_epochs(p[key], factor)
            if p["weak"]:
                p["weak"] = min(subset // classes, max(-(-bs // classes), round(p["weak"] * subset / full_images)))
            if max_gens is not None:
                p["gens"] = min(p["gens"], max_gens)
        elif name == "sgdr":
            p["len"] = p["len"] * (iter_ratio if p["unit"] == "iter" else ratio)
        elif name == "stepdecay":
            p["at"] = "/".join(map(str, _milestones(p["at"], ratio, warmup)))
        tricks.append((name, tuple(TRICKS.get(name).resolve(p).items())))
    return dataclasses.replace(full, epochs=epochs, warmup_epochs=warmup, subset=subset, test_subset=test_subset,
                               bs=bs, tricks=tuple(tricks))


def _milestones(at: str, ratio: float, warmup: float) -> list[int]:
    out: list[int] = []
    for m in (int(x) for x in at.split("/")):
        out.append(max(math.floor(m * ratio + 1e-9), math.floor(warmup) + 1, out[-1] + 1 if out else 0))
    return out
