"""The model registry: names (`MODELS`), name patterns (`PATTERNS`) and the surgery descriptions of the model families
(`FAMILIES`), filled by the family files as `tricks.models` imports them; and `create_model`, which builds any of them.

Imports no family file, so the family files import it without a cycle.

`create_model(name, num_classes=...)` resolves, in order: a registered name in `MODELS`; a registered pattern
('timm:<name>', 'fastai:<name>', 'torchvision:<name>', 'wrn<depth>_<width>' with depth 6n+4), in the order the families
registered them. An option that does not apply to the chosen model raises ConfigError when it differs from its
default, so an ablation never silently ignores a setting.
"""
from __future__ import annotations

import inspect
import numbers
from dataclasses import dataclass
from typing import Callable

from torch import nn

from tricks.errors import ConfigError
from tricks.models.family import Family, batchnorms
from tricks.models.options import SHORTCUTS, STEMS
from tricks.registry import Registry

MODELS = Registry("model")  # fixed names: each entry's meta has 'description', 'paper' and 'options'


@dataclass(frozen=True)
class ModelPattern:
    """Model names resolved by their form rather than listed ('timm:<name>', 'wrn<depth>_<width>'): `resolve(name)`
    gives the builder for a name of this form (called with num_classes, in_chans and `options`), else None."""

    pattern: str
    description: str
    resolve: Callable[[str], Callable[..., nn.Module] | None]
    options: tuple[str, ...]


PATTERNS: dict[str, ModelPattern] = {}
FAMILIES: list[Family] = []  # in the order `tricks.surgery.find_family` tries them


def register_pattern(pattern: ModelPattern) -> None:
    if pattern.pattern in PATTERNS:
        raise ConfigError(f"model pattern '{pattern.pattern}' is registered twice; each pattern must be unique")
    PATTERNS[pattern.pattern] = pattern


def register_family(family: Family) -> None:
    if any(f.name == family.name for f in FAMILIES):
        raise ConfigError(f"model family '{family.name}' is registered twice; each family must be unique")
    FAMILIES.append(family)


def model_names() -> list[str]:
    """Registered names, then the patterns ('wrn<depth>_<width>', 'timm:<name>', 'fastai:<name>', ...)."""
    return MODELS.names() + list(PATTERNS)


def set_bn_momentum(model: nn.Module, momentum: float) -> int:
    """Set the momentum of every BatchNorm in `model`; returns how many were set."""
    bns = batchnorms(model)
    for m in bns:
        m.momentum = momentum
    return len(bns)


def _check_values(num_classes, in_chans, shortcut, bn_momentum, zero_init_last, stem, drop_rate) -> None:
    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    def is_real(v):
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    if not is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1; got {num_classes!r}")
    if not is_int(in_chans) or in_chans < 1:
        raise ConfigError(f"in_chans must be an integer >= 1; got {in_chans!r}")
    if shortcut not in SHORTCUTS:
        raise ConfigError(f"unknown shortcut {shortcut!r}; allowed: {', '.join(SHORTCUTS)}")
    if bn_momentum is not None and not (is_real(bn_momentum) and 0 <= bn_momentum <= 1):
        raise ConfigError(f"bn_momentum must be None (torch default 0.1) or a number in [0, 1]; got {bn_momentum!r}")
    if not isinstance(zero_init_last, bool):
        raise ConfigError(f"zero_init_last must be True or False; got {zero_init_last!r}")
    if stem not in STEMS:
        raise ConfigError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
    if not (is_real(drop_rate) and 0 <= drop_rate < 1):
        raise ConfigError(f"drop_rate must be a number in [0, 1); got {drop_rate!r}")


def _factory(name: str) -> tuple[Callable[..., nn.Module], tuple[str, ...]]:
    """The builder of model `name` and the options it takes; ConfigError with the close matches for an unknown name."""
    if name in MODELS:
        return MODELS.get(name), MODELS.meta(name)["options"]
    for pattern in PATTERNS.values():
        factory = pattern.resolve(name)
        if factory is not None:
            return factory, pattern.options
    MODELS.get(name)  # raises ConfigError with the close matches
    raise AssertionError("unreachable")


def create_model(name: str, *, num_classes: int, in_chans: int = 3, shortcut: str = "conv1x1",
                 bn_momentum: float | None = None, zero_init_last: bool = False,
                 stem: str = "default", drop_rate: float = 0.0) -> nn.Module:
    """Build model `name` (see `model_names()`); ConfigError for unknown names and bad or inapplicable options."""
    _check_values(num_classes, in_chans, shortcut, bn_momentum, zero_init_last, stem, drop_rate)
    options = {"shortcut": shortcut, "zero_init_last": zero_init_last, "stem": stem, "drop_rate": drop_rate}
    factory, takes = _factory(name)
    defaults = inspect.signature(create_model).parameters
    for key, value in options.items():
        if key not in takes and value != defaults[key].default:
            raise ConfigError(f"option {key}={value!r} does not apply to model '{name}'; "
                              f"it takes: {', '.join(takes) or 'none'} (and bn_momentum)")
    model = factory(num_classes=num_classes, in_chans=in_chans, **{k: options[k] for k in takes})
    if bn_momentum is not None and set_bn_momentum(model, bn_momentum) == 0:
        raise ConfigError(f"option bn_momentum={bn_momentum!r} does not apply to model '{name}': it has no BatchNorm")
    return model
