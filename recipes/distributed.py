"""One model trained on several processes (GPUs, machines) with torch DistributedDataParallel.

    torchrun --nproc_per_node N -m recipes.cli run baseline --data ...

`recipes.run.train` reads torchrun's environment (`DistributedEnv`), joins the process group and adds
`DDPTrainer` to the Learner. Every rank builds the same model from the same seed, trains on its own
shard of each epoch with batch `bs` (the global batch is `bs` times the number of processes), and
evaluates its shard of the test split; `recipes.stats.EpochStats` sums the statistics over the ranks
once per epoch, so every rank's metrics are the global ones. Only rank 0 prints and writes the run
folder.

What comes from where: torchrun starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT (the variables fastai's `rank_distrib`/`num_distrib` read); torch's
`init_process_group` (env://) and `DistributedDataParallel` do all the communication, the gradient
all-reduce included. Written here by hand: `DDPTrainer`, which does what fastai's
`DistributedTrainer` does (wrap the model, swap in sharded loaders, unwrap after the fit) but cannot
be it: fastai's needs `accelerate` and NCCL, and its `DistributedDL` wraps fastai's `TfmdDL` and
broadcasts the indices over CUDA, while our `DeviceLoader` shards itself (`rank`, `world`) from a
permutation every rank draws alike. BatchNorm stays per process (no SyncBatchNorm, which is
CUDA-only): each process normalises its own `bs` images, as in Goyal et al. 2017.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from torch.nn.parallel import DistributedDataParallel

from tricks.errors import ConfigError

T = TypeVar("T")
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedEnv:
    """This process's place in a torchrun launch; `world == 1` when started without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "DistributedEnv":
        env = os.environ if environ is None else environ
        world = int(env.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        missing = [k for k in TORCHRUN_VARS if not env.get(k)]
        if missing:
            raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; start several processes "
                              "with torchrun, which sets them")
        return cls(rank=int(env["RANK"]), world=world, local_rank=int(env["LOCAL_RANK"]),
                   master_addr=env["MASTER_ADDR"], master_port=int(env["MASTER_PORT"]))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """A CUDA device becomes this process's GPU, `cuda:LOCAL_RANK`; the CPU stays the CPU."""
        if self.enabled and device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise ConfigError(f"local rank {self.local_rank} has no GPU: this machine has "
                                  f"{torch.cuda.device_count()}; start at most that many processes per machine")
            return torch.device("cuda", self.local_rank)
        return device

    def init(self, device: torch.device) -> None:
        """Join the process group: NCCL between GPUs, gloo on the CPU."""
        if not self.enabled or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def local_first(self, fn: Callable[[], T]) -> T:
        """`fn()` on each machine's local rank 0 first, then on the other ranks (e.g. fill a data cache once)."""
        if not self.enabled:
            return fn()
        if self.local_rank != 0:
            dist.barrier()
        result = fn()
        if self.local_rank == 0:
            dist.barrier()
        return result


def world_size() -> int:
    """Processes in the current process group (1 when there is none)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and writes."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_sum(*values: torch.Tensor | int | float) -> list[torch.Tensor]:
    """The sums over all ranks of scalars, in one collective call (device tensors stay on their device)."""
    device = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
    t = torch.stack([torch.as_tensor(v, device=device, dtype=torch.float64) for v in values])
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return list(t.unbind())


class DDPTrainer(Callback):
    """Train `learn.model` as a torch `DistributedDataParallel` module on sharded `DeviceLoader`s.

    before_fit: every loader becomes its rank's shard (`dl.new(rank=, world=)`), before the tricks
    read `len(dls.train)`. The model is wrapped lazily at the first before_train, after the model
    surgery of the tricks' before_fit, and only while training: evaluation, epoch-end snapshots and
    EMA swaps see the plain module, and evaluation (shards of unequal length) makes no collective
    call per batch. after_fit / after_cancel_fit: the plain model and the full loaders are put back,
    as fastai's `DistributedTrainer` does. Use it with `SyncState` (`ddp_callbacks`).
    """

    order = 0  # after TrainEvalCallback (-10), before every trick (1 and up)

    def __init__(self, env: DistributedEnv):
        self.env = env
        self.ddp: DistributedDataParallel | None = None
        self.old_loaders: list | None = None

    def before_fit(self):
        self.ddp = None
        self.old_loaders = list(self.dls.loaders)
        self.learn.dls.loaders = [dl.new(rank=self.env.rank, world=self.env.world) for dl in self.old_loaders]

    def before_train(self):
        if self.ddp is None:
            model = self.learn.model
            device = next(model.parameters()).device
            self.ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.learn.model = self.ddp

    def after_train(self):
        self._unwrap()

    def _unwrap(self):
        if isinstance(self.learn.model, DistributedDataParallel):
            self.learn.model = self.learn.model.module

    def _restore(self):
        self._unwrap()
        self.ddp = None
        if self.old_loaders is not None:
            self.learn.dls.loaders, self.old_loaders = self.old_loaders, None

    def after_cancel_fit(self):
        self._restore()

    def after_fit(self):
        self._restore()


class SyncState(Callback):
    """Rank 0's model state on every rank, once per epoch and at the end.

    DDP keeps the parameters equal, but each rank's BatchNorm running statistics see its own last
    batch, and an EMA average those of its own rank. before_validate (after an EMA has swapped its
    average in) rank 0's buffers are broadcast, so every rank evaluates the same model; after_fit
    (after an EMA has loaded its average) the whole state is, so every rank ends with the model rank 0
    saves.
    """

    order = 80  # after the tricks (EMA: 70), before EpochStats (90)

    def _broadcast(self, tensors):
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t, src=0)

    def before_validate(self):
        self._broadcast(self.learn.model.buffers())

    def after_fit(self):
        self._broadcast(self.learn.model.state_dict().values())


def ddp_callbacks(env: DistributedEnv) -> list[Callback]:
    """The callbacks that make a Learner train on all the processes of `env`."""
    return [DDPTrainer(env), SyncState()]
