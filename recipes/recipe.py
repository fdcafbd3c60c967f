"""The `Recipe`: every setting of one training run, in one frozen dataclass, with its units.

The defaults are the notes' S9 baseline as the notes accumulated it (see `recipes/presets.py` for
the section behind each value). A recipe string is parsed into a `Recipe` by `recipes.parse`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tricks.errors import ConfigError

CHOICES: dict[str, tuple[str, ...]] = {
    "shortcut": ("conv1x1", "conv3x3"),
    "stem": ("default", "conv3x3s2", "conv3x3s2-nomaxpool", "conv3x3s1-nomaxpool"),
    "warmup": ("linear", "exp"),
    "step": ("iter", "epoch"),
    "pad_mode": ("zeros", "reflect"),
    "normalize": ("dataset", "cifar", "half", "none"),
    "loss": ("ce",),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "compile_mode": ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}

# (low, high, low inclusive, high inclusive); None means unbounded.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "epochs": (1, None, True, True),
    "bs": (1, None, True, True),
    "lr": (0, None, False, True),
    "wd": (0, None, True, True),
    "momentum": (0, 1, True, False),
    "warmup_epochs": (0, None, True, True),
    "warmup_start_lr": (0, None, False, True),
    "eta": (0, None, True, True),
    "crop_pad": (0, None, True, True),
    "bn_momentum": (0, 1, True, True),
    "drop_rate": (0, 1, True, False),
    "subset": (1, None, True, True),
    "test_subset": (1, None, True, True),
    "eval_bs": (1, None, True, True),
    "seed": (0, None, True, True),
}


@dataclass(frozen=True)
class Recipe:
    """One training run. Units: epochs are full passes over the training split; lr per step."""

    recipe: str = "baseline"  # the recipe string this was parsed from
    # data
    dataset: str = "cifar10"  # cifar10 | cifar100 | fashion-mnist | folder
    data: str | None = None  # path; None = TRICKS_DATA, then the default locations
    subset: int | None = None  # train on a class-balanced subset of this many images
    test_subset: int | None = None  # evaluate on a class-balanced subset of the test split (quick runs)
    crop_pad: int = 4  # pad-and-random-crop margin in pixels; 0 = no crop
    pad_mode: str = "zeros"
    flip: bool = True  # random horizontal flip
    resize_crop: bool = False  # the notes' early random resized crop (S2, S3)
    normalize: str = "dataset"  # dataset mean/std | CIFAR mean/std | 0.5/0.5 | none
    # model
    model: str = "resnet20"
    shortcut: str = "conv1x1"
    bn_momentum: float | None = None  # None = torch's 0.1
    zero_init_last: bool = True  # zero-init the last BN gamma of every residual branch
    stem: str = "default"  # timm models only
    drop_rate: float = 0.0  # WRN and timm models only
    # optimisation
    epochs: int = 200
    bs: int = 256  # images per step
    lr: float = 0.2  # peak lr
    wd: float = 5e-4  # L2 weight decay (torch SGD `weight_decay`)
    wd_bn_bias: bool = False  # also decay BatchNorm weights and biases
    momentum: float = 0.9
    nesterov: bool = False
    warmup: str = "linear"
    warmup_epochs: float = 10.0
    warmup_start_lr: float = 1e-5
    eta: float = 1e-4  # cosine floor
    step: str = "iter"  # schedule stepped per iteration or per epoch
    loss: str = "ce"  # one-hot cross entropy
    # speed: how fast a run goes; precision also changes the arithmetic. "auto" / None resolve per device
    # (`recipes.speed.resolve_speed`: the fastest measured setting there) and config.json holds the result.
    channels_last: bool = True  # model and batches in channels-last memory format (faster on CPU and GPU)
    precision: str = "auto"  # auto = bf16 on a CUDA GPU, fp32 elsewhere; bf16 / fp16 autocast on CUDA only
    compile: bool | None = None  # torch.compile the model after the tricks' model surgery; None = on CUDA only
    compile_mode: str = "auto"  # torch.compile mode; auto = reduce-overhead (CUDA graphs) on CUDA
    eval_bs: int = 1000  # images per evaluation batch (evaluation keeps no activations for a backward pass)
    # run
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    tricks: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = field(default=())

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not allowed; choose one of {', '.join(allowed)}")
        for name, (lo, hi, lo_inc, hi_inc) in RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            bad = (lo is not None and (value < lo if lo_inc else value <= lo)) or (
                hi is not None and (value > hi if hi_inc else value >= hi))
            if bad:
                raise ConfigError(f"{name}={value} is out of range; allowed: {interval(lo, hi, lo_inc, hi_inc)}")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"warmup_epochs={self.warmup_epochs} must be less than epochs={self.epochs}")

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tricks"] = [{"name": n, "params": dict(p)} for n, p in self.tricks]
        return d


def interval(lo, hi, lo_inc: bool, hi_inc: bool) -> str:
    left = "(-inf" if lo is None else ("[" if lo_inc else "(") + f"{lo:g}"
    right = "inf)" if hi is None else f"{hi:g}" + ("]" if hi_inc else ")")
    return f"{left}, {right}"


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Recipe)}
