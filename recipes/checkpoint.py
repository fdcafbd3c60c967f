"""Checkpoints of a run, and resuming from them (`recipe run ... --resume`).

`Checkpoint` (a fastai callback, order 200: after every other callback) writes `checkpoint.pth` into
the run folder once the fit has set up (epoch 0, before any training) and at the end of every epoch.
The file holds everything the rest of the run depends on, so that a resumed run ends with the same
weights, bit for bit, as one that was never stopped (on the same machine, device and library
versions): the model's state_dict; the optimizer's state (SGD momentum buffers, lookahead's slow
weights); the completed epochs and training iterations (the lr schedule's position); the state of
every callback that has a `checkpoint_state()` / `load_checkpoint_state()` pair (EMA average, dynamic
refine's snapshot, the lrs so far as one float64 tensor, the metrics records); the random states of python, numpy, torch
(CPU and CUDA) and of the loaders' generators (the epoch's permutation, the augmentation); the
training seconds so far; and the resolved config with its sha256.

Writes are atomic (temporary file, fsync, rename, fsync of the folder); before the rename the last
checkpoint becomes `checkpoint.prev.pth`. Every file carries the sha256 of its content, so a file
that was cut short or changed is found out on loading (`torch.load(weights_only=True)` reads it:
tensors, dicts, lists, tuples, numbers, strings and None only). After the run has written
`model.pth` and `result.json`, both checkpoints are removed.

Resuming (`train(..., resume=True)`) builds the run exactly as a fresh one (same seed first), checks
that the resolved config is the one of the checkpoint, and restores the states at the end of the
fit's setup (`before_fit`), so the first resumed epoch starts where the saved one ended. A checkpoint of
format 1 (before the lrs became a tensor: a list of floats, which the sha256 and the pickling took one by one,
~35-60 ms an epoch at 39,000 lrs) is read as it is and resumes as exactly.
SIGTERM and SIGINT during a fit stop it at the end of the current batch (`Interrupted`); what the
last checkpoint holds is kept, the partial epoch is not saved and runs again on resume.

A run of several fits (a refinery, `recipes.generations`) has no checkpoint in its top folder: each fit
checkpoints its own folder as above (`recipes.run_folder` names them). Resuming checks the top config.json,
takes each finished fit (its result.json) as it is, and resumes the first unfinished one (`recipes.run`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback

from recipes.run_folder import CHECKPOINT, DAMAGED, PREVIOUS, config_hash, refuse_difference, with_added_settings
from tricks.errors import RunFolderError, TrainingError
from tricks.files import fsync_dir, write_atomic
FORMAT = "fastai-tricks checkpoint 2"  # 2: the lr schedule's lrs as one float64 tensor
READABLE = (FORMAT, "fastai-tricks checkpoint 1")  # 1 held them as a list of floats: read as they are


class Interrupted(TrainingError):
    """A fit stopped by SIGTERM or SIGINT; the run folder holds the last end-of-epoch checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


# ---- content hash, and the checkpoint's config ----

def _digest(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"d{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _digest(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for v in obj:
            _digest(h, v)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def digest(obj: Any) -> str:
    """sha256 of a nest of dicts, lists, tuples, tensors and scalars (tensor bytes, dtypes and shapes)."""
    h = hashlib.sha256()
    _digest(h, obj)
    return h.hexdigest()


def check_config(state: dict, config: dict, out: Path) -> None:
    """Refuse a resume whose resolved config differs from the checkpoint's, naming the first difference."""
    if state["config_hash"] == config_hash(config):
        return
    saved = json.loads(state["config"])
    if config_hash(with_added_settings(saved)) == config_hash(config):  # written before a setting it lacks existed
        return
    refuse_difference(saved, config, out)


# ---- random states ----

def rng_state(loaders: list) -> dict:
    key, pos, has_gauss, gauss = np.random.get_state()[1:]
    version, internal, gauss_next = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"python": [version, list(internal), gauss_next],
            "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "gauss": float(gauss)},
            "torch": torch.get_rng_state(), "cuda": cuda,
            "loaders": [{"order": dl.order_rng.get_state(), "aug": dl.aug_rng.get_state()} for dl in loaders]}


def set_rng_state(state: dict, loaders: list) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for dl, s in zip(loaders, state["loaders"], strict=True):
        dl.order_rng.set_state(s["order"])
        dl.aug_rng.set_state(s["aug"])


# ---- files ----

def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def save_checkpoint(out: Path, state: dict) -> Path:
    """Write `out/checkpoint.pth` atomically; the one it replaces becomes `checkpoint.prev.pth`."""
    state = _cpu(state)
    state["sha256"] = digest(state)
    # a full disk: DiskFullError, the last checkpoint kept
    return write_atomic(out / CHECKPOINT, lambda f: torch.save(state, f), previous=out / PREVIOUS)


class Damaged(Exception):
    pass


def read_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`, checked against its sha256; `Damaged` (one line) if it is not whole."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (a cut or changed zip, pickle or tensor record)
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = (lines[0] if lines else type(e).__name__)[:120]
        raise Damaged(f"it cannot be read ({reason})") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE:
        raise Damaged("it is not a checkpoint of this program")
    saved = state.pop("sha256", None)
    if saved != digest(state):
        raise Damaged("its content does not match the sha256 written with it")
    return state


def load_for_resume(out: Path) -> tuple[dict, str | None, Path | None]:
    """(the newest whole checkpoint, a note for the user or None, the damaged file to set aside or None).

    A damaged `checkpoint.pth` with a whole `checkpoint.prev.pth` resumes from the latter; with none
    whole it is a `RunFolderError` that names both, and nothing is changed in `out`.
    """
    errors: list[str] = []
    damaged = None
    for name in (CHECKPOINT, PREVIOUS):
        path = out / name
        if not path.exists():
            continue
        try:
            state = read_checkpoint(path)
        except Damaged as e:
            errors.append(f"{name} is damaged: {e}")
            damaged = damaged or path
            continue
        note = None
        if name == PREVIOUS:
            why = errors[0] if errors else f"{CHECKPOINT} is missing"
            note = f"{why}; resuming from {PREVIOUS} (epoch {state['epoch']})" + (
                f"; the damaged file is kept as {DAMAGED}" if errors else "")
        return state, note, (damaged if errors else None)
    raise RunFolderError(f"--resume: {'; '.join(errors)}; no whole checkpoint is left in '{out}' (the files "
                         "are kept); start the run again in a new --out")


def set_aside(damaged: Path) -> None:
    """Keep a damaged checkpoint as checkpoint.damaged.pth, out of the way of the next checkpoints."""
    os.replace(damaged, damaged.with_name(DAMAGED))
    fsync_dir(damaged.parent)


# ---- the callback ----

class Checkpoint(Callback):
    """Saves the run's state at the end of the fit's setup and of every epoch; restores one on resume.

    `resume`: a state from `load_for_resume`, restored at before_fit (after every other callback's
    before_fit: model surgery, optimizer wrappers, an EMA's copy of the model). `stop` is set by
    `signals()` on SIGTERM/SIGINT; the fit then stops at the end of the current batch.
    """

    order = 200  # after EpochStats (90), the progress display (95) and every trick

    def __init__(self, out: Path, config: dict, resume: dict | None = None):
        self.out, self.config, self.resume = Path(out), config, resume
        self.hash = config_hash(config)
        self.stop: int | None = None  # the signal received
        self.saved_epoch = 0
        self.seconds_before = 0.0

    def loaders(self) -> list:
        return [dl for dl in (self.dls.train, self.dls.valid) if hasattr(dl, "order_rng")]

    def stateful(self) -> dict[str, Callback]:
        found: dict[str, Callback] = {}
        for cb in self.learn.cbs:
            if cb is not self and callable(getattr(type(cb), "checkpoint_state", None)):
                name, i = type(cb).__name__, 1
                while name in found:
                    i += 1
                    name = f"{type(cb).__name__}{i}"
                found[name] = cb
        return found

    def state(self, epoch: int) -> dict:
        return {"format": FORMAT, "epoch": epoch, "train_iter": int(self.learn.train_iter),
                "seconds": self.seconds_before + time.perf_counter() - self.fit_start,
                "model": self.learn.model.state_dict(), "opt": self.learn.opt.state_dict(),
                "callbacks": {name: cb.checkpoint_state() for name, cb in self.stateful().items()},
                "rng": rng_state(self.loaders()), "config_hash": self.hash, "config": json.dumps(self.config)}

    def before_fit(self):
        self.fit_start, self.stop = time.perf_counter(), None
        if self.resume is None:
            self.save(0)
            return
        s, self.resume = self.resume, None
        self.learn.model.load_state_dict(s["model"])
        self.learn.opt.load_state_dict(s["opt"])
        stateful = self.stateful()
        if set(stateful) != set(s["callbacks"]):
            raise RunFolderError(f"--resume: the checkpoint holds the state of {sorted(s['callbacks'])}, this run "
                                 f"has {sorted(stateful)}; start the run again in a new --out")
        for name, cb in stateful.items():
            cb.load_checkpoint_state(s["callbacks"][name])
        self.learn.resume_epoch = self.saved_epoch = int(s["epoch"])
        self.learn.train_iter = int(s["train_iter"])
        self.learn.pct_train = self.saved_epoch / self.n_epoch
        self.seconds_before = float(s["seconds"])
        set_rng_state(s["rng"], self.loaders())  # last: nothing after this draws before the first batch

    def save(self, epoch: int):
        save_checkpoint(self.out, self.state(epoch))
        self.saved_epoch = epoch

    def after_epoch(self):
        self.save(self.epoch + 1)

    def after_batch(self):
        if self.stop is not None:
            name = signal.Signals(self.stop).name
            where = f"epoch {self.epoch + 1}, {'batch' if self.training else 'test batch'} {self.iter + 1} of " \
                    f"{self.n_iter}"
            raise Interrupted(f"stopped by {name} in {where}; the checkpoint of epoch {self.saved_epoch} is in "
                              f"'{self.out}': run the same command with --resume to continue", self.stop)

    def after_fit(self):
        self.learn.resume_epoch = 0

    def after_cancel_fit(self):
        self.learn.resume_epoch = 0

    @property
    def seconds(self) -> float:
        """Training seconds of the run, the stopped parts included."""
        return self.seconds_before + time.perf_counter() - self.fit_start

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """While in it, SIGTERM and SIGINT set `stop` (a second one interrupts at once). Main thread only."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.stop is not None:
                raise KeyboardInterrupt
            self.stop = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
