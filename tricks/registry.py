"""A name -> object registry with close-match errors, after timm's `models/_registry.py`.

`Registry.register` sits next to the definition it registers; looking up an unknown name raises a
`ConfigError` that lists the closest registered names. Registering one name twice is an error.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

from tricks.errors import ConfigError

T = TypeVar("T")


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The registered names closest to `name` (difflib ratio, plus names that share its prefix)."""
    candidates = sorted(set(candidates))
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    for c in candidates:
        if len(found) >= n:
            break
        if c not in found and name and (c.startswith(name) or name.startswith(c)):
            found.append(c)
    return found


def unknown_name_message(kind: str, name: str, candidates: Iterable[str]) -> str:
    """One line: the unknown name, the close matches if any, else every known name."""
    candidates = sorted(set(candidates))
    near = close_matches(name, candidates)
    if near:
        return f"unknown {kind} '{name}'; did you mean {', '.join(repr(n) for n in near)}?"
    return f"unknown {kind} '{name}'; known: {', '.join(candidates) or '(none)'}"


class Registry:
    """Maps short names to objects (factories, classes, presets) with optional metadata."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: `@REG.register("name", description=..., paper=...)` above a definition."""

        def deco(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return deco

    def add(self, name: str, obj: Any, **meta: Any) -> None:
        if name in self._entries:
            raise ConfigError(f"{self.kind} '{name}' is registered twice; each name must be unique")
        self._entries[name] = obj
        self._meta[name] = dict(meta)

    def get(self, name: str) -> Any:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(unknown_name_message(self.kind, name, self._entries)) from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
NONE_WORDS = ("none", "null")


@dataclass(frozen=True)
class Param:
    """A typed value of a trick or of a `Recipe` field: its default and what values are allowed.

    `epochs`: the value counts epochs (a budget that shortens the run scales it with the run's length,
    `bench.budgets.scaled`): an int is a schedule of its own (0: none), a float a length inside the run
    (in iterations when its trick's `unit` is 'iter'), a str '/'-separated epochs inside the run.
    """

    name: str
    kind: type  # int, float, bool or str
    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is not allowed
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    none: bool = False  # None is allowed too (written none or null)
    epochs: bool = False

    def coerce(self, text: str) -> Any:
        """The typed value of the text in `key=text`; a ConfigError saying what was expected."""
        if self.none and text.lower() in NONE_WORDS:
            return None
        try:
            if self.kind is bool:
                if text.lower() in TRUE_WORDS:
                    return self.check(True)
                if text.lower() in FALSE_WORDS:
                    return self.check(False)
                raise ValueError
            value = self.kind(text)
        except ValueError:
            word = {bool: "true or false", int: "an integer", float: "a number", str: "a word"}[self.kind]
            raise ConfigError(f"{self.name}={text!r}: {self.name} must be {word}") from None
        return self._check(value, repr(text))

    def check(self, value: Any) -> Any:
        """`value` if allowed, else a ConfigError naming the allowed values (a NaN or inf is never allowed)."""
        return self._check(value, value)

    def _check(self, value: Any, shown: Any) -> Any:
        if value is None and self.none:
            return None
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{self.name}={value!r} is not allowed; choose one of {', '.join(self.choices)}")
        if self.kind in (int, float):
            too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
            if too_low or too_high:
                raise ConfigError(f"{self.name}={value} is out of range; allowed: {self.allowed()}")
        if isinstance(value, float) and not math.isfinite(value):  # no range refuses NaN
            raise ConfigError(f"{self.name}={shown}: {self.name} must be a finite number")
        return value

    def allowed(self) -> str:
        if self.choices is not None:
            return "|".join(self.choices)
        if self.kind not in (int, float):
            return self.kind.__name__
        left = "(-inf" if self.low is None else ("(" if self.low_open else "[") + f"{self.low:g}"
        right = "inf)" if self.high is None else f"{self.high:g}" + (")" if self.high_open else "]")
        return f"{left}, {right}"


@dataclass(frozen=True)
class TrickSpec:
    """A registered trick: how to build its Callback from a resolved recipe and typed parameters.

    `build(recipe, **params)` returns the Callback; `recipe` is the resolved `recipes.recipe.Recipe`
    (read for values such as the peak lr, never imported here). `touches` names what the trick
    changes: input, targets, loss, lr, optimizer, weights, model. A `per_run` trick configures the
    whole run (the refinery's generations): the trainer builds its callbacks itself, and `build` is None.
    """

    name: str
    build: Callable[..., Any] | None
    params: tuple[Param, ...]
    description: str
    paper: str
    touches: tuple[str, ...]
    per_run: bool = False

    def param(self, key: str) -> Param:
        for p in self.params:
            if p.name == key:
                return p
        keys = ", ".join(p.name for p in self.params) or "none"
        raise ConfigError(f"trick '{self.name}' has no parameter '{key}'; its parameters: {keys}")

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, every given value checked."""
        for key, value in given.items():
            self.param(key).check(value)
        return {p.name: given.get(p.name, p.default) for p in self.params}


TRICKS = Registry("trick")
# Pairs of tricks that cannot share a recipe, and why (more than one lr schedule is refused as well).
CONFLICTS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"onehot", "lsmooth"}), "both make the soft targets; keep one"),
    (frozenset({"mixup", "klmixup"}), "both mix the batch; keep one (klmixup is mixup with a KL loss)"),
    (frozenset({"leakyrelu", "swish"}), "both replace the activations; keep one"),
)
TOUCHES = ("input", "targets", "loss", "lr", "optimizer", "weights", "model")


def register_trick(name: str, *, params: tuple[Param, ...] = (), description: str, paper: str,
                   touches: tuple[str, ...], build: Callable[..., Any] | None = None,
                   per_run: bool = False) -> Callable[[T], T]:
    """Decorator on a Callback class: register it as trick `name`.

    Without `build`, the trick is built as `cls(**params)`; give `build(recipe, **params)` when the
    callback needs values from the recipe. A `per_run` trick is never built from its parameters alone.
    """
    bad = set(touches) - set(TOUCHES)
    if bad:
        raise ValueError(f"trick '{name}': unknown touches {sorted(bad)}; allowed: {TOUCHES}")

    def deco(cls: T) -> T:
        make = build if build is not None or per_run else (lambda recipe, **kw: cls(**kw))
        TRICKS.add(name, TrickSpec(name, make, tuple(params), description, paper, tuple(touches), per_run))
        return cls

    return deco
