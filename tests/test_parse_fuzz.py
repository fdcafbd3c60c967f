"""Hypothesis fuzz of the recipe parser: any text gives a `Recipe` or a one-line `ConfigError`, nothing else."""
from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipes.parse import parse_recipe
from recipes.presets import PRESETS
from recipes.recipe import FIELDS, Recipe
from tricks.errors import ConfigError
from tricks.registry import TRICKS

TRICK_NAMES = sorted(TRICKS.names())
NAMES = TRICK_NAMES + PRESETS.names()
KEYS = sorted({p.name for n in TRICK_NAMES for p in TRICKS.get(n).params} | set(FIELDS))
SPECIAL = ["nan", "NaN", "inf", "-inf", "+inf", "1e309", "-1e309", "0", "-0", "-1", "1", "0.5", "1e-300", "none",
           "null", "true", "false", "on", "off", "yes", "", " ", "1_000", "0x10", "1e", "\x00", "é", "100/150", "a/b",
           "9" * 400, "first", "all", "labels", "losses", "before", "after", "reflect", "zeros", "resnet20"]

values = st.one_of(st.sampled_from(SPECIAL), st.integers(-10**30, 10**30).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=8))
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
pairs = st.lists(st.tuples(keys, st.sampled_from(["=", "==", "", ":"]), values), max_size=4).map(
    lambda ps: ",".join(k + eq + v for k, eq, v in ps))
names = st.one_of(st.sampled_from(NAMES), st.text(max_size=6), st.sampled_from(NAMES).map(str.upper))
junk_term = st.one_of(names, st.builds(lambda n, sep, p: n + sep + p, names, st.sampled_from([":", "::", ""]), pairs))


def well_formed(name: str, keys: list[str]) -> st.SearchStrategy[str]:
    """`name` or `name:key=value,...` with its own keys and any values."""
    if not keys:
        return st.just(name)
    kv = st.lists(st.tuples(st.sampled_from(keys), values), max_size=3, unique_by=lambda t: t[0])
    return kv.map(lambda ps: name + (":" + ",".join(f"{k}={v}" for k, v in ps) if ps else ""))


trick_term = st.sampled_from(TRICK_NAMES).flatmap(lambda n: well_formed(n, [p.name for p in TRICKS.get(n).params]))
preset_term = st.sampled_from(PRESETS.names()).flatmap(lambda n: well_formed(n, sorted(FIELDS)))
recipes = st.builds(lambda first, rest, joiner: joiner.join([first, *rest]),
                    st.one_of(preset_term, trick_term, junk_term),
                    st.lists(st.one_of(trick_term, trick_term, preset_term, junk_term), max_size=4),
                    st.sampled_from(["+", "+", "+", "++", " + ", "+\n"]))
# what the command line may pass on top, typed as argparse types them
overrides = st.fixed_dictionaries({}, optional={
    "epochs": st.integers(-5, 10**6), "bs": st.integers(-5, 4096), "subset": st.integers(-5, 10**6),
    "seed": st.integers(-5, 10**6), "lr": st.floats(allow_nan=True, allow_infinity=True),
    "wd": st.floats(allow_nan=True, allow_infinity=True), "model": st.text(max_size=8),
    "dataset": st.sampled_from(["cifar10", "folder", "mnist", ""]), "device": st.text(max_size=6)})


def floats_in(recipe: Recipe) -> list[float]:
    found = [v for v in recipe.to_dict().values() if isinstance(v, float)]
    return found + [v for _, params in recipe.tricks for _, v in params if isinstance(v, float)]


def check(text: str, **kw) -> None:
    try:
        recipe = parse_recipe(text, **kw)
    except ConfigError as e:
        msg = str(e)
        assert len(msg.splitlines()) == 1 and msg.isprintable(), repr(msg)
        return
    assert isinstance(recipe, Recipe)
    assert all(math.isfinite(v) for v in floats_in(recipe)), recipe  # NaN or inf never gets through


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_any_text_parses_or_fails_in_one_line(text):
    check(text)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes)
def test_grammar_shaped_text_parses_or_fails_in_one_line(text):
    check(text)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes, overrides)
def test_command_line_overrides_parse_or_fail_in_one_line(text, kw):
    check(text, **kw)


def test_non_finite_numbers_are_refused():
    for text, kw, message in [("baseline:lr=nan", {}, "lr='nan': lr must be a finite number"),
                              ("baseline:eta=1e400", {}, "eta='1e400': eta must be a finite number"),
                              ("baseline+mixup:alpha=nan", {}, "alpha='nan': alpha must be a finite number"),
                              ("baseline+sgdr:len=inf", {}, "len='inf': len must be a finite number"),
                              ("baseline", {"lr": math.nan}, "lr=nan: lr must be a finite number"),
                              ("baseline", {"wd": math.inf}, "wd=inf: wd must be a finite number")]:
        try:
            parse_recipe(text, **kw)
        except ConfigError as e:
            assert message in str(e), str(e)
        else:
            raise AssertionError(f"{text} {kw} was accepted")
