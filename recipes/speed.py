"""The speed settings of a run, resolved for the device it trains on.

A recipe says `precision=auto`, `compile=None` (auto), `compile_mode=auto` and `compile_step=None` (auto)
unless the user names a setting; `resolve_speed` turns them into what runs, the fastest measured setting on
that device (`bench perf --device cuda`, README "GPU"); `recipes.run.train` resolves the recipe before its fits, so each
fit's config.json (`recipes.fit.fit_one`) holds the resolved settings:

| setting      | CUDA GPU                                    | CPU                                   |
|--------------|---------------------------------------------|---------------------------------------|
| channels_last| true (the recipe's default everywhere)      | true (ResNet-20 trains ~25% faster)   |
| precision    | bf16 autocast (fp32 where bf16 is missing)  | fp32 (autocast is CUDA-only here)     |
| compile      | on                                          | off (a compile takes minutes on a few cores) |
| compile_mode | reduce-overhead: inductor + CUDA graphs     | -                                     |
| compile_step | off (not yet measured faster: --only speed) | off                                   |
| cuDNN        | benchmark: the fastest algorithm per shape  | deterministic (CPU runs repeat to the bit) |

`seed_everything` seeds every generator (fastai's `set_seed`) and sets the cuDNN row: a CUDA run repeats
its seed's data order and augmentation but not its last bits (cuDNN's fastest algorithms may be
non-deterministic), as the GPU trainers the issue compares with do.

Under bf16 autocast the convolutions and the classifier run in bf16; BatchNorm keeps fp32 statistics
and weights, and the loss is computed on fp32 logits (fastai's `MixedPrecision.after_pred`).
`--precision fp32 --no-compile` (or `precision=fp32,compile=false` in the recipe) is the plain path.

compile_step=true compiles the SGD step as well (`tricks.compiled_step`: torch's non-fused SGD, each group's lr
a 0-d tensor on the device written in place, the step compiled once per optimizer in the model's compile mode, a
CUDA graph under reduce-overhead); `auto` stays off on every device until a GPU measurement shows it faster.
"""
from __future__ import annotations

import torch
from fastai.torch_core import set_seed

from recipes.recipe import Recipe
import tricks  # noqa: F401  (importing the package registers every trick)
from tricks.registry import TRICKS

CUDA_COMPILE_MODE = "reduce-overhead"  # the fastest mode measured for ResNet-20 by `bench perf --device cuda`
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
# A trick whose training step cannot be captured in a CUDA graph says why at its registration
# (`register_trick(cudagraph_unsafe=...)`); a run with one compiles without CUDA graphs (one line says so).
# Every registered trick's random draws happen on the device, inside or outside the model, so none says so today.
CUDA_COMPILE_STEP = False  # auto: not measured faster yet (`bench perf --device cuda --only speed` measures both)
# A trick that cannot run with a compiled optimizer step says why at its registration
# (`register_trick(compile_step_unsafe=...)`); a run with one steps eagerly (one line says so). None says so today.


def resolve_speed(recipe: Recipe, device: torch.device) -> tuple[Recipe, list[str]]:
    """`recipe` with its auto speed settings decided for `device`, and the lines that say what changed."""
    cuda = device.type == "cuda"
    notes: list[str] = []
    precision = recipe.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    compile_on = cuda if recipe.compile is None else recipe.compile
    mode = recipe.compile_mode
    if mode == "auto":
        mode = CUDA_COMPILE_MODE if cuda else "default"
        unsafe = [(name, TRICKS.get(name).cudagraph_unsafe) for name, _ in recipe.tricks
                  if TRICKS.get(name).cudagraph_unsafe]
        if compile_on and unsafe and mode in CUDAGRAPH_MODES:
            mode = "max-autotune-no-cudagraphs" if mode == "max-autotune" else "default"
            notes.append(f"compile_mode={mode} instead of {CUDA_COMPILE_MODE}: {unsafe[0][0]} cannot run in a "
                         f"CUDA graph ({unsafe[0][1]})")
    step_on, step_notes = resolve_compile_step(recipe, cuda)
    return recipe.replace(precision=precision, compile=compile_on, compile_mode=mode, compile_step=step_on), \
        notes + step_notes


def resolve_compile_step(recipe: Recipe, cuda: bool) -> tuple[bool, list[str]]:
    """compile_step as it runs: auto is `CUDA_COMPILE_STEP` on CUDA, off elsewhere; off, with the line that says
    why, when one of the recipe's tricks cannot run with a compiled step."""
    step_on = (cuda and CUDA_COMPILE_STEP) if recipe.compile_step is None else recipe.compile_step
    unsafe = [(name, TRICKS.get(name).compile_step_unsafe) for name, _ in recipe.tricks
              if TRICKS.get(name).compile_step_unsafe]
    if step_on and unsafe:
        return False, [f"compile_step=false: {unsafe[0][0]} cannot run with a compiled optimizer step "
                       f"({unsafe[0][1]})"]
    return step_on, []


def seed_everything(seed: int, device: torch.device) -> None:
    """fastai's `set_seed`, reproducible (deterministic cuDNN) on the CPU; on CUDA cuDNN benchmarks."""
    cuda = device.type == "cuda"
    set_seed(seed, reproducible=not cuda)
    if cuda:
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
