"""No host read inside a training batch: `recipe run` and every registered trick, counted by an interceptor.

A host read (the host waiting for the device's value) on a CUDA GPU stalls the queue of kernels once per
step. On the CPU nothing waits, so the reads are counted where they would happen: a `TorchDispatchMode`
sees the ops that return a value to the host (`.item()`, `bool()`, `float()` -> `_local_scalar_dense`,
`is_nonzero`, `equal`) or whose output size depends on the data (`nonzero`, `masked_select`, `unique`),
and copies to the host of a tensor on another device (`_to_copy`, `copy_`); a `TorchFunctionMode` sees
`.tolist()`, `.numpy()` and `.cpu()`, which touch no op on a CPU tensor. A read counts when it happens
between the end of `before_train` and the start of `after_train` (every training batch, the loader's
batches included); it is named by the first frame outside torch, as `path:function`.

Allowed inside a training batch: the sites of `ALLOWED` (each with why it costs no wait on a GPU) and
the NaN check (`recipes.nan_guard.StopOnNonFinite.check`) once every `every` >= 50 batches. On a CUDA
GPU the training batches of the same runs go under `torch.cuda.set_sync_debug_mode("error")` as well
(those of a trick with a known device read in `TO_FIX` excepted), which confirms the reasons given.
Written by hand: torch has the modes but no counter of host reads for the CPU.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback
from fixtures import toy_data
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from recipes.nan_guard import StopOnNonFinite
from recipes.parse import parse_recipe
from recipes.run import train
from tricks.registry import TRICKS

ROOT = Path(__file__).resolve().parents[1]
TORCH = str(Path(torch.__file__).resolve().parent)

# site -> why it costs no wait for a GPU: CPU-only reads
ALLOWED = {
    "tricks/losses.py:one_hot": "F.one_hot checks the labels' range with two host reads on the CPU only; on CUDA, "
                                "num_classes given, torch skips the check (aten/native/Onehot.cpp)",
    "tricks/mixup.py:before_batch": "lam = float(Beta(alpha, alpha).sample()): the Beta's parameters are host "
                                    "tensors, so the draw and its read stay on the host on every device",
}
# site -> (the trick that reads, why): device reads on CUDA too, known and still to be removed; the trick's test
# fails once the read is gone, so that the entry goes with it
TO_FIX: dict[str, tuple[str, str]] = {}  # site -> (trick, why): a known device read not yet removed
NAN_CHECK = "recipes/nan_guard.py:check"

VALUE_OPS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::nonzero",
             "aten::nonzero_static", "aten::masked_select", "aten::_unique2", "aten::unique_dim",
             "aten::unique_consecutive", "aten::repeat_interleave"}
HOST_METHODS = {"tolist", "numpy", "cpu"}


def _device(t) -> torch.device | None:
    return t.device if isinstance(t, torch.Tensor) else None


def _copies_to_host(name: str, args, kwargs) -> bool:
    """`_to_copy` of a device tensor to the CPU, or `copy_` of a device tensor into a CPU tensor."""
    if name == "aten::_to_copy":
        src, dst = _device(args[0]), kwargs.get("device")
        return src is not None and src.type != "cpu" and dst is not None and torch.device(dst).type == "cpu"
    if name == "aten::copy_":
        dst, src = _device(args[0]), _device(args[1])
        return dst is not None and src is not None and dst.type == "cpu" and src.type != "cpu"
    return False


class HostReads:
    """Counts host reads by site while `open`; `reads` is a Counter of 'path:function'. With `sync_errors`, on a
    CUDA GPU, torch raises at any synchronising call while open (`torch.cuda.set_sync_debug_mode('error')`)."""

    def __init__(self, sync_errors: bool = False):
        self.reads: Counter[str] = Counter()
        self._open = False
        self.sync_errors = sync_errors and torch.cuda.is_available()
        self.depth = 0  # inside a `.tolist()`/`.numpy()`/`.cpu()` already counted
        self.batches = 0

    def site(self) -> str:
        frame = sys._getframe(2)
        while frame is not None:
            path = str(Path(frame.f_code.co_filename).resolve())
            if not path.startswith(TORCH) and (path, frame.f_code.co_name) not in INTERCEPTOR:
                rel = Path(path).relative_to(ROOT) if path.startswith(str(ROOT)) else Path(path)
                return f"{rel}:{frame.f_code.co_name}"
            frame = frame.f_back
        return "?"

    @property
    def open(self) -> bool:
        return self._open

    @open.setter
    def open(self, value: bool) -> None:
        self._open = value
        if self.sync_errors:
            torch.cuda.set_sync_debug_mode("error" if value else "default")

    def count(self) -> None:
        if self.open and self.depth == 0:
            self.reads[self.site()] += 1


class ValueOps(TorchDispatchMode):
    def __init__(self, reads: HostReads):
        super().__init__()
        self.host = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in VALUE_OPS or _copies_to_host(name, args, kwargs):
            if name != "aten::repeat_interleave" or kwargs.get("output_size") is None:
                self.host.count()
        return func(*args, **kwargs)


class HostMethods(TorchFunctionMode):
    def __init__(self, reads: HostReads):
        super().__init__()
        self.host = reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name not in HOST_METHODS:
            return func(*args, **(kwargs or {}))
        self.host.count()
        self.host.depth += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.host.depth -= 1


INTERCEPTOR = {(str(Path(__file__).resolve()), name) for name in ("site", "count", "__torch_dispatch__",
                                                                  "__torch_function__")}


class OpenAfterBeforeTrain(Callback):
    """Opens the count once every callback's before_train has run."""

    order = 10 ** 6

    def __init__(self, reads: HostReads):
        self.host = reads

    def before_train(self):
        self.host.open = True

    def after_batch(self):
        if self.training:
            self.host.batches += 1


class CloseAtAfterTrain(Callback):
    """Closes the count before any callback's after_train (or a cancel) runs."""

    order = -10 ** 6

    def __init__(self, reads: HostReads):
        self.host = reads

    def after_train(self):
        self.host.open = False

    def after_cancel_train(self):
        self.host.open = False


def training_reads(text: str, tmp_path: Path, extra=(), n_train: int = 64, sync_errors: bool = True,
                   **overrides) -> HostReads:
    """`recipe run` of `text` on toy data (resnet8, 16x16 images) with the host reads of its training batches
    counted; on CUDA, with `sync_errors`, the training batches also run under
    `torch.cuda.set_sync_debug_mode('error')`."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = {"epochs": 2, "bs": 16, "eval_bs": 32, "model": "resnet8", "device": device, **overrides}
    recipe = parse_recipe(text, **settings)
    reads = HostReads(sync_errors)
    cbs = lambda stats: [OpenAfterBeforeTrain(reads), CloseAtAfterTrain(reads), *extra]
    try:
        with ValueOps(reads), HostMethods(reads):
            train(recipe, tmp_path / "run", data=toy_data(n_train=n_train, n_test=32), callbacks=cbs)
        assert reads.batches > 0 and not reads.open
    finally:
        reads.open = False  # the sync debug mode back to default whatever happened
    return reads


def disallowed(reads: HostReads, every: int = StopOnNonFinite().every) -> dict[str, int]:
    """The reads no rule allows; the NaN check may read once every `every` batches."""
    out = {site: n for site, n in reads.reads.items() if site not in {**ALLOWED, **TO_FIX, NAN_CHECK: ""}}
    if reads.reads[NAN_CHECK] > reads.batches // every:
        out[NAN_CHECK] = reads.reads[NAN_CHECK]
    return out


def test_the_nan_check_reads_once_every_fifty_batches_and_nothing_else_reads(tmp_path):
    # bs 2 on 128 images: 64 batches an epoch, the check's look at batch 50 of each epoch falls inside
    # on CUDA under sync-debug "error": the check lowers the mode for its own read (nan_guard.host_read_allowed)
    reads = training_reads("baseline", tmp_path, n_train=128, bs=2)
    assert StopOnNonFinite().every >= 50 and reads.batches == 2 * 64
    assert reads.reads[NAN_CHECK] == 2
    assert disallowed(reads) == {} and set(reads.reads) <= {NAN_CHECK}


MODEL = {"lastbn": "preact_resnet8"}  # a trick for pre-activation ResNets
PARAMS = {"stepdecay": ":at=1", "refine": ":gens=1", "dynarefine": ":start_epoch=1"}


@pytest.mark.parametrize("name", sorted(TRICKS.names()))
def test_no_trick_reads_the_host_inside_a_training_batch(name, tmp_path):
    known = any(trick == name for trick, _ in TO_FIX.values())  # a known device read: no sync errors for it yet
    reads = training_reads(f"baseline+{name}{PARAMS.get(name, '')}", tmp_path, model=MODEL.get(name, "resnet8"),
                           sync_errors=not known)
    assert reads.batches == 2 * 4 * (2 if name == "refine" else 1)  # 64 images, bs 16, 2 epochs (per generation)
    assert disallowed(reads) == {}, f"host reads inside training batches: {dict(reads.reads)}"
    fixed = [site for site, (trick, _) in TO_FIX.items() if trick == name and site not in reads.reads]
    assert not fixed, f"{fixed} reads no more: remove it from TO_FIX"


def test_the_interceptor_catches_a_read_the_trainer_adds(tmp_path, monkeypatch):
    from recipes.stats import EpochStats

    original = EpochStats.after_batch

    def after_batch_that_reads(self):  # a per-batch display of the loss, say
        original(self)
        if self.training:
            self.learn.loss.item()
            self.learn.yb[0].tolist()

    monkeypatch.setattr(EpochStats, "after_batch", after_batch_that_reads)
    reads = training_reads("baseline", tmp_path, sync_errors=False)  # on CUDA the reads would raise at once
    assert disallowed(reads) == {"tests/test_host_reads.py:after_batch_that_reads": 2 * 8}
