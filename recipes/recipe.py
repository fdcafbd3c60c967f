"""The `Recipe`: every setting of one training run, in one frozen dataclass, with its units.

The defaults are the notes' S9 baseline as the notes accumulated it (see `recipes/presets.py` for
the section behind each value). A recipe string is parsed into a `Recipe` by `recipes.parse`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tricks.errors import ConfigError
from tricks.models import SHORTCUTS, STEMS
from tricks.registry import Param

NOT_SETTABLE = ("recipe", "tricks")  # set by parsing, never by key=value
KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def setting(default: Any, **allowed: Any) -> Any:
    """A `Recipe` field with its allowed values (a `tricks.registry.Param`'s low, high, choices, epochs, ...):
    `PARAMS` holds its `Param`, with the field's name and type; the field's own comment says what it is."""
    return field(default=default, metadata={"allowed": allowed})


@dataclass(frozen=True)
class Recipe:
    """One training run. Units: epochs are full passes over the training split; lr per step."""

    recipe: str = "baseline"  # the recipe string this was parsed from
    # data
    dataset: str = "cifar10"  # cifar10 | cifar100 | fashion-mnist | folder
    data: str | None = None  # path; None = TRICKS_DATA, then the default locations
    subset: int | None = setting(None, low=1)  # train on a class-balanced subset of this many images
    test_subset: int | None = setting(None, low=1)  # evaluate on a class-balanced subset of the test split (quick runs)
    crop_pad: int = setting(4, low=0)  # pad-and-random-crop margin in pixels; 0 = no crop
    pad_mode: str = setting("zeros", choices=("zeros", "reflect"))
    flip: bool = True  # random horizontal flip
    resize_crop: bool = False  # the notes' early random resized crop (S2, S3)
    # dataset mean/std | CIFAR mean/std | 0.5/0.5 | none
    normalize: str = setting("dataset", choices=("dataset", "cifar", "half", "none"))
    # model
    model: str = "resnet20"
    shortcut: str = setting("conv1x1", choices=SHORTCUTS)  # pad: option A, CIFAR ResNets only
    bn_momentum: float | None = setting(None, low=0, high=1)  # None = torch's 0.1
    zero_init_last: bool = True  # zero-init the last BN gamma of every residual branch
    stem: str = setting("default", choices=STEMS)  # timm, torchvision and fastai ResNets only
    drop_rate: float = setting(0.0, low=0, high=1, high_open=True)  # WRN and timm models only
    # optimisation
    epochs: int = setting(200, low=1, epochs=True)
    bs: int = setting(256, low=1)  # images per step
    lr: float = setting(0.2, low=0, low_open=True)  # peak lr
    wd: float = setting(5e-4, low=0)  # L2 weight decay (torch SGD `weight_decay`)
    wd_bn_bias: bool = False  # also decay BatchNorm weights and biases
    momentum: float = setting(0.9, low=0, high=1, high_open=True)
    nesterov: bool = False
    warmup: str = setting("linear", choices=("linear", "exp"))
    warmup_epochs: float = setting(10.0, low=0, epochs=True)
    warmup_start_lr: float = setting(1e-5, low=0, low_open=True)
    eta: float = setting(1e-4, low=0)  # cosine floor
    step: str = setting("iter", choices=("iter", "epoch"))  # schedule stepped per iteration or per epoch
    # speed: how fast a run goes; precision also changes the arithmetic. "auto" / None resolve per device
    # (`recipes.speed.resolve_speed`: the fastest measured setting there) and config.json holds the result.
    channels_last: bool = True  # model and batches in channels-last memory format (faster on CPU and GPU)
    # auto = bf16 on a CUDA GPU, fp32 elsewhere; bf16 / fp16 autocast on CUDA only
    precision: str = setting("auto", choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool | None = None  # torch.compile the model after the tricks' model surgery; None = on CUDA only
    # torch.compile mode; auto = reduce-overhead (CUDA graphs) on CUDA
    compile_mode: str = setting("auto", choices=("auto", "default", "reduce-overhead", "max-autotune",
                                                 "max-autotune-no-cudagraphs"))
    # torch.compile the optimizer step too, its lr a tensor on the device; None = auto (off: not yet measured faster)
    compile_step: bool | None = None
    # images per evaluation batch (evaluation keeps no activations for a backward pass)
    eval_bs: int = setting(1000, low=1)
    # run
    seed: int = setting(0, low=0)
    device: str = "auto"  # auto = cuda when available, else cpu
    tricks: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = field(default=())

    def __post_init__(self):
        for p in PARAMS.values():
            p.check(getattr(self, p.name))
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"warmup_epochs={self.warmup_epochs} must be less than epochs={self.epochs}")

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tricks"] = [{"name": n, "params": dict(p)} for n, p in self.tricks]
        return d


def field_param(f: dataclasses.Field) -> Param:
    """The `Param` of a `Recipe` field: its name, its type (from the annotation), its default and allowed values."""
    kind, _, rest = f.type.partition(" | ")  # the annotation's text: "int", "float | None", ...
    return Param(f.name, KINDS[kind], f.default, none=rest == "None", **f.metadata.get("allowed", {}))


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Recipe)}
PARAMS: dict[str, Param] = {name: field_param(f) for name, f in FIELDS.items() if name not in NOT_SETTABLE}
