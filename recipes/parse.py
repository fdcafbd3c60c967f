"""Recipe strings -> `Recipe`.

Grammar (shell-safe, no quoting needed):

    recipe := term ("+" term)*
    term   := name | name ":" key "=" value ("," key "=" value)*

A name is a preset from `recipes.presets` (its trick chain first, then its values, then the term's
key=value pairs, which may set any `Recipe` field; a later term naming one of its tricks overrides
that trick's parameters), or a trick from `tricks.registry.TRICKS` (its
key=value pairs are the trick's typed parameters; defaults are the notes' values). Changing `epochs`
without `warmup_epochs` scales the warmup with it, so `--epochs 10` on the 200-epoch baseline warms
up for 0.5 epochs. A trick named twice, or two tricks that both set the lr schedule, are errors.
"""
from __future__ import annotations

import re
from typing import Any

from recipes.presets import PRESETS
from recipes.recipe import PARAMS, Recipe
from tricks.errors import ConfigError
import tricks  # noqa: F401  (importing the package registers every trick)
from tricks.registry import TRICKS, conflict, unknown_name_message

NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


def coerce(key: str, text: str) -> Any:
    """The typed value of `key=text` for a `Recipe` field, or a ConfigError saying what was expected."""
    if key not in PARAMS:
        raise ConfigError(f"unknown key '{key}'; allowed keys: {', '.join(PARAMS)}")
    return PARAMS[key].coerce(text)


def printable(text: str) -> str:
    """`text` with each unprintable character (newlines included) escaped, so that a message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def apply(recipe: Recipe, values: dict[str, Any]) -> Recipe:
    """`recipe` with `values` set; a new `epochs` without `warmup_epochs` rescales the warmup."""
    values = dict(values)
    if "epochs" in values and "warmup_epochs" not in values:
        values["warmup_epochs"] = recipe.warmup_epochs * values["epochs"] / recipe.epochs
    return recipe.replace(**values)


def parse_term(term: str, coerce=coerce) -> tuple[str, dict[str, Any]]:
    """`name:key=value,...` -> (name, {key: typed value}); `coerce(key, text)` types each value."""
    name, _, rest = term.partition(":")
    if not NAME.match(name):
        raise ConfigError(f"recipe term '{term}' must be a name or name:key=value,key=value")
    params: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")) if rest else ():
        key, eq, value = pair.partition("=")
        if not eq or not key or not value:
            raise ConfigError(f"recipe term '{term}': '{pair}' must be key=value")
        if key in params:
            raise ConfigError(f"recipe term '{term}': key '{key}' is given twice")
        try:
            params[key] = coerce(key, value)
        except ConfigError as e:
            raise ConfigError(f"recipe term '{term}': {e}") from None
    if rest == "" and ":" in term:
        raise ConfigError(f"recipe term '{term}': expected key=value after ':'")
    return name, params


def parse_recipe(text: str, **overrides: Any) -> Recipe:
    """The `Recipe` for a recipe string; `overrides` (e.g. from the command line) are applied last.

    Raises ConfigError with a one-line message (the user's text in it escaped) for anything wrong.
    """
    try:
        return _parse_recipe(text, **overrides)
    except ConfigError as e:
        raise ConfigError(printable(str(e))) from None


SEED_MAX = 2**63 - 1  # torch.manual_seed takes 64 bits; the loaders and the refinery seed with seed + a few


def _parse_recipe(text: str, **overrides: Any) -> Recipe:
    text = text.strip()
    if not text:
        raise ConfigError("empty recipe; give a name such as 'baseline' (see `recipe list`)")
    odd = next((i for i, c in enumerate(text) if not c.isascii()), None)
    if odd is not None:  # int('３') == 3: a full-width digit would be read as its ASCII twin
        raise ConfigError(f"recipe '{text}' has the non-ASCII character '{text[odd]}' (U+{ord(text[odd]):04X}) at "
                          f"position {odd + 1}; write recipes in ASCII only (digits 0-9, '.', '-')")
    recipe = _parse(text, overrides)
    if recipe.seed > SEED_MAX:
        raise ConfigError(f"seed={recipe.seed} is out of range; allowed: [0, {SEED_MAX}] (63 bits)")
    return recipe


def _parse(text: str, overrides: dict[str, Any]) -> Recipe:
    recipe = Recipe(recipe=text)
    chosen: dict[str, tuple[tuple[str, Any], ...]] = {}
    from_preset: set[str] = set()

    def add(term: str, in_preset: bool) -> None:
        nonlocal recipe
        name = term.partition(":")[0]
        if name in TRICKS:
            spec = TRICKS.get(name)
            _, params = parse_term(term, coerce=lambda key, value: spec.param(key).coerce(value))
            if name in chosen and name not in from_preset:
                raise ConfigError(f"recipe term '{term}': trick '{name}' is named twice; name it once")
            chosen[name] = tuple(spec.resolve(params).items())  # a term after a preset overrides its trick
            (from_preset.add if in_preset else from_preset.discard)(name)
            return
        _, params = parse_term(term)
        if name not in PRESETS:
            raise ConfigError(unknown_name_message("recipe term", name, PRESETS.names() + TRICKS.names()))
        values = dict(PRESETS.get(name))
        for inner in values.pop("chain", "").split("+") if "chain" in values else ():
            add(inner, in_preset=True)
        try:
            recipe = apply(recipe, {**values, **params})
        except ConfigError as e:
            raise ConfigError(f"recipe term '{term}': {e}") from None

    for term in text.split("+"):
        add(term, in_preset=False)
    refusal = conflict(chosen)
    if refusal:
        raise ConfigError(refusal)
    schedules = [n for n in chosen if "lr" in TRICKS.get(n).touches]
    if len(schedules) > 1:
        raise ConfigError(f"tricks {' and '.join(schedules)} both set the lr schedule; keep one")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return apply(recipe.replace(tricks=recipe.tricks + tuple(chosen.items())), overrides)
