"""The optimizer step compiled once per optimizer, each param group's lr a 0-d tensor on the training device.

PyTorch's own recipe ("Compiling the optimizer with torch.compile"; "Running the compiled optimizer with an LR
scheduler"): `torch.compile(opt.step)`, with each lr a tensor, so that a new lr is new data in the same graph
(dynamo guards on a Python float's value: a float lr would recompile the step every time it changes). Under a
CUDA-graph mode (reduce-overhead) the compiled step is replayed as a CUDA graph, as the compiled model is.

Three details, each to keep the compiled step the eager one:
- the SGD is not torch's fused one (its default instead: foreach on CUDA, single-tensor on the CPU): dynamo
  does not trace into the fused kernel (torch wraps `_fused_sgd` in `torch.compiler.disable`), so a compiled
  fused step would still run eagerly;
- every momentum buffer starts as zeros before the first step: torch's first step makes it a copy of the
  gradient, 0 * momentum + grad is that copy to the bit, and the compiled step then sees the same state at
  every step (with no buffers at step 1 and buffers at step 2, dynamo would trace the step twice);
- the lr is written in place (`write_hyper`), never replaced, so the graph keeps reading the same tensor.

Not to the bit the eager step: traced with a tensor lr, torch's SGD multiplies the gradients by the lr and then
adds the product (`torch.optim.sgd._multi_tensor_sgd`: `_foreach_mul`, then `_foreach_add_`: two roundings), where
the eager step adds with `alpha=-lr` in one multiply-add; the weights agree to float32 rounding, not bit for bit.
Where dynamo does not compile the step (past its recompile limit, under a Python dispatch mode) torch's eager SGD
reads the lr tensor to the host (`alpha=-lr`: once a step with foreach on CUDA, once a parameter on the CPU).
Written here: fastai's `OptimWrapper` has no compiled step and writes a hyper-parameter by replacing it.
"""
from __future__ import annotations

from functools import partial

import torch
from fastai.optimizer import OptimWrapper

from tricks.errors import ConfigError


def write_hyper(group: dict, key: str, value: float | torch.Tensor) -> None:
    """`group[key] = value`, in place when the group holds a tensor there (`fill_` a number, `copy_` a tensor)."""
    held = group[key]
    if not isinstance(held, torch.Tensor):
        group[key] = value
    elif isinstance(value, torch.Tensor):
        held.copy_(value)
    else:
        held.fill_(value)


def tensor_lrs(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """Each param group's lr as its own 0-d float32 tensor on `device` (torch gives every group that took the
    default lr the one default object: a shared tensor would make the groups' lrs one)."""
    for group in opt.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


def start_momentum(opt: torch.optim.Optimizer) -> None:
    """A zero momentum buffer for every parameter of a group with momentum that has none yet."""
    for group in opt.param_groups:
        if group.get("momentum", 0):
            for p in group["params"]:
                state = opt.state[p]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def compile_sgd_step(opt: torch.optim.SGD, mode: str | None = None, backend: str = "inductor"):
    """`opt` ready for a compiled step (`tensor_lrs` on its parameters' device, `start_momentum`), and its step
    `torch.compile`d (compiled at its first call; once per optimizer)."""
    if opt.defaults.get("fused"):
        raise ConfigError("a compiled optimizer step needs torch's SGD without fused=True (torch.compile does "
                          "not trace the fused kernel); leave fused unset")
    tensor_lrs(opt, opt.param_groups[0]["params"][0].device)
    start_momentum(opt)
    return torch.compile(opt.step, mode=mode, backend=backend)


class CompiledStepOptimizer(OptimWrapper):
    """fastai's `OptimWrapper` around a torch SGD whose step is compiled (`compile_sgd_step`). Hyper-parameters
    set through fastai (`set_hyper`, `fit(n, lr)`, a rebuilt optimizer's) are written in place; `hypers` reads
    them as numbers, as fastai's readers expect (its Recorder and ParamScheduler keep the values they read): the lr
    as the float32 tensor holds it, one host read per group and read (fastai's set_hyper reads them all; the
    recipes' schedules write the tensors directly, `tricks.schedules.set_lr`, and read nothing). Only the lr is a tensor: a momentum or weight decay that changes is a new
    constant of the step, one recompile each (fastai's `fit_one_cycle` cycles the momentum every batch: give it
    `moms=(m, m, m)`; past dynamo's recompile limit the step runs eagerly)."""

    def __init__(self, opt: torch.optim.SGD, mode: str | None = None, backend: str = "inductor"):
        self.compiled_step = compile_sgd_step(opt, mode, backend)
        super().__init__(opt=opt)

    def step(self, closure=None):
        if closure is not None:
            raise NotImplementedError("the compiled step takes no closure")
        self.compiled_step()

    @property
    def hypers(self) -> list[dict]:
        return [{k: float(v) if isinstance(v, torch.Tensor) else v for k, v in h.items()} for h in super().hypers]

    def _set_hyper(self, k, v):
        for group, value in zip(self.opt.param_groups, v):
            write_hyper(group, self.bwd_map[k], value)

    def load_state_dict(self, sd: dict) -> None:
        """torch's load replaces the param groups with the saved ones: the saved lrs are written into the tensors
        the compiled step reads, which stay in the groups."""
        lrs = [group["lr"] for group in self.opt.param_groups]
        self.opt.load_state_dict(sd)
        for group, lr in zip(self.opt.param_groups, lrs):
            loaded, group["lr"] = group["lr"], lr
            write_hyper(group, "lr", loaded)
        start_momentum(self.opt)


def compiled_sgd(params, lr: float, mom: float = 0.9, wd: float = 0.0, nesterov: bool = False,
                 mode: str | None = None, backend: str = "inductor") -> CompiledStepOptimizer:
    """A fastai `opt_func` (`Learner(dls, model, opt_func=compiled_sgd)`, or a `functools.partial` of it): torch's
    SGD (momentum `mom`, L2 decay `wd`, optional Nesterov) with its step compiled. The param groups are fastai's
    (`OptimWrapper` converts the splitter's groups); a module-level function, so `learn.export()` pickles it."""
    sgd = OptimWrapper(params, opt=partial(torch.optim.SGD, lr=lr, momentum=mom, weight_decay=wd,
                                              nesterov=nesterov)).opt
    return CompiledStepOptimizer(sgd, mode=mode, backend=backend)
