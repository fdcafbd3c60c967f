"""Train one `Recipe` into a run folder.

A run folder holds: `config.json` (the resolved recipe), `metrics.csv` (one row per epoch, rewritten
whole after each epoch), `result.json`, `model.pth` (the weights, a `state_dict`) and `curves.png`.
Nothing is written into a folder that already holds files, except by `--resume` (`resume=True`),
which continues the run a folder holds from its `checkpoint.pth` (`recipes.checkpoint`: written at
the start of the fit and after every epoch, removed once the run has finished). A training loss that
becomes NaN or inf stops the fit with a `TrainingError` (`recipes.nan_guard`); config.json,
metrics.csv and the checkpoint stay.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from fastai.callback.core import Callback

from recipes import checkpoint as ckpt
from recipes.build import check_speed, resolve_device
from recipes.distributed import DistributedEnv, ddp_callbacks
from recipes.fit import fit_one
from recipes.generations import refine_params, train_generations
from recipes.recipe import Recipe
from recipes.speed import resolve_speed
from recipes.stats import EpochStats
from tricks.data import ImageData, load_dataset
from tricks.errors import ConfigError, RunFolderError
from tricks.files import disk_full, no_space

CLAIM = ".claim"  # the marker a running run holds locked in its folder (see `claimed`)


def default_out(recipe: Recipe, root: str | os.PathLike = "runs") -> Path:
    """`runs/<recipe>-<time>`, with a numeric suffix if that folder exists already."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", recipe.recipe)[:80]
    base = Path(root) / f"{slug}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


def check_out(out: Path) -> None:
    """Refuse an `--out` that holds files, or that cannot be created or written."""
    if out.exists():
        if not out.is_dir():
            raise RunFolderError(f"--out '{out}' is a file; give a new or empty folder")
        if any(name != CLAIM for name in os.listdir(out)):
            raise RunFolderError(f"--out '{out}' already holds files{_run_in(out)}; give a new or empty folder "
                                 "so that nothing in it is overwritten")
        if not os.access(out, os.W_OK | os.X_OK):
            raise RunFolderError(f"--out '{out}' is not writable; give a folder you can write to")
        return
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise RunFolderError(f"--out '{out}' cannot be created: '{parent}' is not a writable folder")


def _run_in(out: Path) -> str:
    """' (the run of recipe R, seed S)' when `out` holds a readable config.json, else ''."""
    try:
        config = json.loads((out / "config.json").read_text())
        return f" (the run of recipe {config['recipe']}, seed {config['seed']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _holder(path: Path) -> str:
    """Who the claim at `path` names: 'run pid N (recipe R, config C, started T)'."""
    try:
        info = json.loads(path.read_text())
        return (f"run pid {info['pid']} on {info['host']} (recipe {info['recipe']}, config {info['config'][:12]}, "
                f"started {info['started']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another run"


@contextlib.contextmanager
def claimed(out: Path, recipe: Recipe, *, resume: bool):
    """Hold `out` for this run: an exclusive `flock` on `out/.claim`, held for the run's life.

    The claim is taken before anything is written into the folder. A folder another live run holds is
    refused (a `RunFolderError` naming the folder and the run), and nothing is written. The kernel drops
    the lock of a killed process, so a claim left by `kill -9` is stale: `--resume` takes it over (its
    config is then checked against the checkpoint's), and a fresh run takes it over only if the folder
    holds nothing else. A fresh run checks, holding the claim, that the folder is still empty (another run
    may have finished in it meanwhile). On leaving, the claim file is removed, and the folders this call
    created are removed again if nothing was written into them (a run refused on bad input leaves nothing).
    """
    made, p = [], out
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    path = out / CLAIM
    while True:
        try:  # again on each try: a run that ended empty removes the folder it made
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if no_space(e):
                raise disk_full(out) from None
            raise RunFolderError(f"--out '{out}' cannot be created ({e.strerror}); give a folder you can write "
                                 "to") from None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if no_space(e):
                raise disk_full(path) from None
            raise RunFolderError(f"--out '{out}' cannot be claimed: '{path}' cannot be opened ({e.strerror}); "
                                 "give a folder you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError(f"--out '{out}' cannot be locked ({e.strerror})") from None
            raise RunFolderError(f"run folder '{out}' belongs to {_holder(path)}, which is still running; give "
                                 "another --out, or wait until that run ends") from None
        held = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break  # else the holder removed the file as it ended: claim the new one
        os.close(fd)
    try:
        if not resume and any(name != CLAIM for name in os.listdir(out)):
            raise RunFolderError(f"--out '{out}' already holds files{_run_in(out)}, written meanwhile; give a "
                                 "new or empty folder so that nothing in it is overwritten")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "recipe": recipe.recipe,
                "config": hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest(),
                "started": datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as e:
            if no_space(e):
                raise disk_full(path) from None
            raise
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        for folder in made:  # deepest first; only those still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        os.close(fd)


def check_device(device: torch.device) -> torch.device:
    """`device`, or a ConfigError when this machine cannot train or evaluate on it (mps without Apple's GPU,
    meta and the other devices that hold no data, a CUDA index beyond the GPUs there)."""
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device '{device}' asked for, but torch sees no Apple GPU (mps) here; use --device "
                              "cpu or auto")
    elif device.type == "cuda":
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{device}' asked for, but this machine has {torch.cuda.device_count()} "
                              f"CUDA GPU(s): cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        raise ConfigError(f"device '{device}' cannot train or evaluate a model (it is not a cpu, cuda or mps "
                          "device); use auto, cpu, cuda or cuda:N")
    return device


def train(recipe: Recipe, out: str | os.PathLike | None = None, *, data: ImageData | None = None,
          callbacks: Callable[[EpochStats], list[Callback]] = lambda stats: [],
          on_start: Callable[[dict], None] = lambda info: None, resume: bool = False) -> dict[str, Any]:
    """Train `recipe`, write its run folder, and return `result.json`'s content.

    With a `refine` term, generation 0 and each refinement generation get a sub-folder `gen<N>`
    (see `recipes.generations`) and the top `result.json` lists every generation's accuracy.
    `callbacks(stats)` adds display callbacks; `on_start(info)` hears the resolved setup before each
    fit starts. `data` skips loading (tests and the bench pass data they hold already).
    Started by torchrun on several processes, it trains one model with DistributedDataParallel
    (`recipes.distributed`): rank 0 alone checks `out`, writes it and hears `callbacks`/`on_start`.

    On one process, the fit writes `checkpoint.pth` after every epoch (with `refine`, each generation
    into its own `gen<N>`), and `resume=True` continues the stopped run in `out` from it
    (`recipes.checkpoint`; `recipes.generations` for refine); a run that has finished already is not
    trained again: its result.json is returned with `already_finished`.
    """
    env = DistributedEnv.from_environ()
    refine = refine_params(recipe)
    if env.enabled and refine is not None:
        raise ConfigError("refine is not supported on several processes (torchrun) yet: its generations train "
                          "one after the other in one process; run it without torchrun")
    if resume:
        if env.enabled:
            raise ConfigError("--resume runs on one process: a torchrun run writes no checkpoint to resume; "
                              "run it without torchrun")
        if out is None:
            raise ConfigError("--resume needs --out: the folder of the run to continue")
    out = Path(out) if out is not None else default_out(recipe)
    device = env.device(check_device(resolve_device(recipe.device)))
    check_speed(recipe, device)
    recipe, speed_notes = resolve_speed(recipe, device)  # config.json holds what runs, not "auto"
    if resume:
        finished = ckpt.finished_result(out)
        if finished is not None:
            ckpt.check_finished_recipe(out, recipe.to_dict())  # another recipe is refused, not "finished"
            return {**finished, "out": str(out), "already_finished": True}
        ckpt.check_resumable(out, generations=refine is not None)
    elif env.is_main:
        check_out(out)
    else:
        callbacks, on_start = (lambda stats: []), (lambda info: None)
    env.init(device)
    stack = contextlib.ExitStack()
    try:
        if env.is_main:  # the folder is this run's before anything is written into it
            stack.enter_context(claimed(out, recipe, resume=resume))
        if data is None:  # each machine's first process fills the data cache, then the others read it
            data = env.local_first(lambda: load_dataset(recipe.dataset, recipe.data))
        if refine is not None:
            return train_generations(recipe, refine, out, data, device, callbacks=callbacks, on_start=on_start,
                                     resume=resume)
        extra, info = (ddp_callbacks(env), {"processes": env.world}) if env.enabled else ([], {})
        if speed_notes:
            info["speed_notes"] = speed_notes
        result, _ = fit_one(recipe, out, data, device, extra_cbs=extra, callbacks=callbacks, on_start=on_start,
                            info=info, checkpoint=not env.enabled, resume=resume)
    finally:
        stack.close()
        env.shutdown()
    return {**result, "out": str(out)}
