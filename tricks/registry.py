"""A name -> object registry with close-match errors, after timm's `models/_registry.py`.

`register_trick` sits on the Callback class it registers and declares everything the recipes and the bench
need to know about the trick (its parameters, what it touches, what it conflicts with, whether it reads the
labels, whether its step can be captured in a CUDA graph), so adding a trick is one file. Looking up an
unknown name raises a `ConfigError` that lists the closest registered names; registering one name twice is
an error.
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
    `generations`: the value counts whole fits of the run (a smoke budget caps it; `bench perf` measures one).
    `images_per_class`: the value counts training images per class (0: all); a budget that trains on fewer
    images scales it with the data.
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
    generations: bool = False
    images_per_class: bool = False

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

    `conflicts`: (other trick, why) for each trick that cannot share a recipe with this one; `why` ends
    the one-line refusal "tricks A and B <why>". `reads_labels`: the trick reads the labels of a batch
    (a refinement trained without labels drops it); `mixes_batch`: it mixes pairs of images and their
    labels (dropped after generation 0 under `refine:mixup=first`). `cudagraph_unsafe`: why its training
    step cannot be captured in a CUDA graph ("" when it can); a run with it compiles without CUDA graphs.
    `compile_step_unsafe`: why it cannot run with a compiled optimizer step ("" when it can; `recipes.speed`'s
    compile_step): a run with it steps eagerly.
    """

    name: str
    build: Callable[..., Any] | None
    params: tuple[Param, ...]
    description: str
    paper: str
    touches: tuple[str, ...]
    per_run: bool = False
    conflicts: tuple[tuple[str, str], ...] = ()
    reads_labels: bool = False
    mixes_batch: bool = False
    cudagraph_unsafe: str = ""
    compile_step_unsafe: str = ""

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


def check_arguments(trick: str, **values: Any) -> None:
    """Each argument of trick `trick`'s Callback allowed by its `Param`, else a ConfigError '<trick>: <key>=...'.

    A fastai user constructs the Callback directly, where no recipe checked its parameters; its `__init__` calls
    this, so both paths use the one check."""
    spec = TRICKS.get(trick)
    for key, value in values.items():
        try:
            spec.param(key).check(value)
        except ConfigError as e:
            raise ConfigError(f"{trick}: {e}") from None


TOUCHES = ("input", "targets", "loss", "lr", "optimizer", "weights", "model")


def conflict(names: Iterable[str]) -> str | None:
    """The one-line refusal of the first declared conflict among the tricks `names`, or None.

    More than one lr schedule is refused by the recipe parser as well (from `touches`)."""
    names = list(names)
    for name in names:
        for other, why in TRICKS.get(name).conflicts:
            if other in names:
                return f"tricks {' and '.join(sorted((name, other)))} {why}"
    return None


def register_trick(name: str, *, params: tuple[Param, ...] = (), description: str, paper: str,
                   touches: tuple[str, ...], build: Callable[..., Any] | None = None, per_run: bool = False,
                   conflicts: dict[str, str] | None = None, reads_labels: bool = False,
                   cudagraph_unsafe: str = "", compile_step_unsafe: str = "") -> Callable[[T], T]:
    """Decorator on a Callback class: register it as trick `name` (the fields are `TrickSpec`'s).

    Without `build`, the trick is built as `cls(**params)`; give `build(recipe, **params)` when the
    callback needs values from the recipe. A `per_run` trick is never built from its parameters alone.
    `mixes_batch` is the class's own attribute of that name (`tricks.losses.TrainingLoss`), read here.
    """
    bad = set(touches) - set(TOUCHES)
    if bad:
        raise ValueError(f"trick '{name}': unknown touches {sorted(bad)}; allowed: {TOUCHES}")

    def deco(cls: T) -> T:
        make = build if build is not None or per_run else (lambda recipe, **kw: cls(**kw))
        mixes_batch = bool(getattr(cls, "mixes_batch", False))
        TRICKS.add(name, TrickSpec(name, make, tuple(params), description, paper, tuple(touches), per_run,
                                   tuple((conflicts or {}).items()), reads_labels or mixes_batch, mixes_batch,
                                   cudagraph_unsafe, compile_step_unsafe))
        return cls

    return deco
