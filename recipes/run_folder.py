"""The run folder: its layout, its claim, its config.json and result.json, and the checks that say whether it
can be written or resumed. Every other module names a run folder's files through this one.

A run is a plan of fits (`recipes.run`). A plan of one fit writes into the run folder itself:

    config.json    the resolved recipe and what the data made of it (classes, normalization, image counts)
    metrics.csv    one row per epoch, rewritten whole after each epoch
    model.pth      the trained weights (a state_dict)
    result.json    the fit's result, written once it has finished
    curves.png     loss, accuracy and lr against epochs
    checkpoint.pth (and checkpoint.prev.pth) while it trains (`recipes.checkpoint`)

A plan of several fits (a refinery) writes each fit into `gen<N>/` as above; the run folder itself holds a
config.json (the recipe and the number of fits) and, once every fit has finished, a result.json over them.
While a run lives it holds `.claim` locked (`claimed`). Every file is written whole (`tricks.files.write_atomic`).
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
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Callable

from recipes.recipe import Recipe
from tricks.errors import ConfigError, RunFolderError
from tricks.files import disk_full, fsync_dir, no_space, write_atomic

CONFIG, RESULT, METRICS, MODEL, CURVES = "config.json", "result.json", "metrics.csv", "model.pth", "curves.png"
CHECKPOINT, PREVIOUS, DAMAGED = "checkpoint.pth", "checkpoint.prev.pth", "checkpoint.damaged.pth"
CLAIM = ".claim"  # the marker a running run holds locked in its folder (see `claimed`)


# ---- layout ----

def fit_folder(out: Path, fit: int, fits: int) -> Path:
    """The folder of fit `fit` (0-based) of a plan of `fits`: the run folder itself for one fit, else gen<N>."""
    return Path(out) if fits == 1 else Path(out) / fit_folder_name(fit)


def fit_folder_name(fit: int) -> str:
    """The name of fit `fit`'s folder inside the run folder of a plan of several fits."""
    return f"gen{fit}"


def last_fit_folder(out: Path, fit: int | None = None) -> Path:
    """The folder of the run's last fit (or of fit `fit`), by the number of fits its config.json names."""
    fits = saved_config(out).get("generations") or 1
    return fit_folder(out, fits - 1 if fit is None else fit, fits)


def default_out(recipe: Recipe, root: str | os.PathLike = "runs") -> Path:
    """`runs/<recipe>-<time>`, with a numeric suffix if that folder exists already."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", recipe.recipe)[:80]
    base = Path(root) / f"{slug}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


# ---- config.json and result.json ----

def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def saved_config(folder: Path) -> Any:
    """`folder/config.json` as JSON; an OSError or ValueError (not UTF-8, not JSON) as raised."""
    return json.loads((Path(folder) / CONFIG).read_text(encoding="utf-8"))


def json_text(content: dict) -> str:
    """config.json's and result.json's text."""
    return json.dumps(content, indent=2) + "\n"


def write_config(folder: Path, config: dict) -> None:
    write_atomic(Path(folder) / CONFIG, json_text(config))


def write_result(folder: Path, result: dict) -> None:
    write_atomic(Path(folder) / RESULT, json_text(result))


def read_config(folder: Path) -> dict:
    """`folder/config.json`, or a RunFolderError naming it when it cannot be read or is not a run's config."""
    file = Path(folder) / CONFIG
    try:
        config = saved_config(folder)
    except OSError as e:
        raise RunFolderError(f"cannot read '{file}' ({e.strerror}); give a folder `recipe run` wrote") from None
    except ValueError as e:  # not UTF-8, not JSON
        why = (str(e).splitlines() or [type(e).__name__])[0][:100]
        raise RunFolderError(f"'{file}' is not valid JSON ({why}); it is not a config `recipe run` wrote") from None
    if not isinstance(config, dict):
        raise RunFolderError(f"'{file}' holds a {type(config).__name__}, not a run's config")
    return config


def finished_result(out: Path) -> dict | None:
    """result.json's content when the run (or fit) in `out` has finished, else None."""
    path = Path(out) / RESULT
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # cut, not UTF-8, not JSON
        raise RunFolderError(f"--resume: '{path}' cannot be read ({type(e).__name__}); the run's result is damaged: "
                             "start the run again in a new --out") from None
    if not isinstance(result, dict):
        raise RunFolderError(f"--resume: '{path}' is not a result `recipe run` wrote; start the run again in a new "
                             "--out")
    return result


def evaluated_folder(path: str | Path, generation: int | None = None) -> Path:
    """The folder holding the config.json and model.pth to evaluate: the run's last fit, or fit `generation`."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise RunFolderError(f"'{path}' is not a run folder (no config.json); give a folder `recipe run` wrote")
    generations = read_config(path).get("generations")
    if generations is not None:
        g = generations - 1 if generation is None else generation
        if not 0 <= g < generations:
            raise ConfigError(f"--generation {g} is out of range; this run has generations 0..{generations - 1}")
        path = fit_folder(path, g, generations)
    elif generation not in (None, 0):
        raise ConfigError(f"'{path}' is not a refinery run; leave out --generation")
    if not (path / MODEL).is_file():
        raise RunFolderError(f"'{path}' has no model.pth (the run did not finish); evaluate a finished run")
    return path


# ---- a run's start and a fit's end ----

def start_run(out: str | os.PathLike | None, recipe: Recipe, *, resume: bool, fits: int,
              main: bool = True) -> tuple[Path, dict | None]:
    """(the run folder, its result.json when `resume` finds the run finished already, else None), once the
    folder is checked: `resume` needs a stopped run of this recipe in `out`, a new run (on the main process) a
    new or empty `out` (None: `default_out`). Nothing is written."""
    out = Path(out) if out is not None else default_out(recipe)
    if not resume:
        if main:
            check_out(out)
        return out, None
    finished = finished_result(out)
    if finished is not None:
        check_finished_recipe(out, recipe.to_dict())  # another recipe is refused, not "finished"
        return out, finished
    check_resumable(out, fits=fits)
    return out, None


def finish_fit(out: Path, weights: bytes | Callable[[BinaryIO], None], result: dict, curves: bytes, *, checkpoints: bool) -> None:
    """A finished fit's files: model.pth, result.json and curves.png, in this order; then its checkpoints go."""
    for name, content in ((MODEL, weights), (RESULT, json_text(result)), (CURVES, curves)):
        write_atomic(out / name, content)
    if checkpoints:
        for name in (CHECKPOINT, PREVIOUS):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
        fsync_dir(out)


# ---- a new run: --out and the claim ----

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
        config = saved_config(out)
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


def _open_claim(out: Path, path: Path) -> int:
    """Create `out` and open its claim file; one line on a folder that cannot be made or a full disk."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if no_space(e):
            raise disk_full(out) from None
        raise RunFolderError(f"--out '{out}' cannot be created ({e.strerror}); give a folder you can write "
                             "to") from None
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if no_space(e):
            raise disk_full(path) from None
        raise RunFolderError(f"--out '{out}' cannot be claimed: '{path}' cannot be opened ({e.strerror}); "
                             "give a folder you can write to") from None


def _lock_claim(out: Path) -> int:
    """An exclusive `flock` on `out/.claim` (the file that is there when it is taken); its descriptor."""
    path = out / CLAIM
    while True:
        fd = _open_claim(out, path)  # again on each try: a run that ended empty removes the folder it made
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
            return fd
        os.close(fd)  # the holder removed the file as it ended: claim the new one


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
    fd = _lock_claim(out)
    try:
        if not resume and any(name != CLAIM for name in os.listdir(out)):
            raise RunFolderError(f"--out '{out}' already holds files{_run_in(out)}, written meanwhile; give a "
                                 "new or empty folder so that nothing in it is overwritten")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "recipe": recipe.recipe,
                "config": config_hash(recipe.to_dict()), "started": datetime.now().isoformat(timespec="seconds")}
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


# ---- a stopped run: the resume checks ----

def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Settings a config gained after runs were written without them, each with the value those runs ran with: a saved
# config that lacks one is read as holding that value, so a run stopped before the setting existed resumes.
ADDED_SETTINGS = {"compile_step": False}


def with_added_settings(saved: dict) -> dict:
    """`saved` with each of `ADDED_SETTINGS` it lacks, at the value the code that wrote it ran with."""
    return {**saved, **{k: v for k, v in ADDED_SETTINGS.items() if k not in saved}}


def config_difference(saved: dict, now: dict) -> list[str]:
    """The keys whose values differ, in the saved config's order (then the new keys); a setting of
    `ADDED_SETTINGS` the saved config lacks counts as its value then."""
    saved = with_added_settings(saved)
    keys = list(saved) + [k for k in now if k not in saved]
    return [k for k in keys if saved.get(k, "<unset>") != now.get(k, "<unset>")]


def refuse_difference(saved: dict, config: dict, out: Path) -> None:
    """The one-line refusal of a resume whose config is not the saved one."""
    keys = config_difference(saved, config)
    if not keys:  # same values, different hash: a config written by another version
        raise RunFolderError(f"--resume: the checkpoint in '{out}' was made with another config format; "
                             "start the run again in a new --out")
    k = keys[0]
    more = f" (and {len(keys) - 1} more setting{'s' if len(keys) > 2 else ''}: {', '.join(keys[1:4])})" \
        if len(keys) > 1 else ""
    raise RunFolderError(f"--resume: the run in '{out}' was {k}={_show(saved.get(k, '<unset>'))}, this is "
                         f"{k}={_show(config.get(k, '<unset>'))}{more}; resume with the settings it was started "
                         "with, or give a new --out")


def _resume_config(out: Path) -> Any:
    try:
        return saved_config(out)
    except (OSError, ValueError) as e:
        raise RunFolderError(f"--resume: the config.json in '{out}' cannot be read ({type(e).__name__}); start "
                             "the run again in a new --out") from None


def check_folder_config(out: Path, config: dict) -> None:
    """Refuse a resume whose config differs from the one in `out/config.json` (a folder that holds no
    checkpoint of its own: the run folder of a plan of several fits), naming the first difference."""
    saved = _resume_config(out)
    now = json.loads(json.dumps(config))  # as config.json holds it (lists, not tuples)
    if with_added_settings(saved) != now:
        refuse_difference(saved, now, out)


def check_finished_recipe(out: Path, recipe: dict) -> None:
    """Refuse `--resume` of a finished run (its config.json) with another recipe or other data: the one-line
    refusal of `refuse_difference` instead of "has finished already". The data are compared as the real
    path of `data` when the run names one (the loaders record the real path they read); the device is not."""
    saved = with_added_settings(_resume_config(out))
    now = {k: v for k, v in json.loads(json.dumps(recipe)).items() if k not in ("data", "device", "dataset")}
    was = {k: saved.get(k, "<unset>") for k in now}
    if recipe.get("data") is not None and saved.get("data") is not None:
        now["data"], was["data"] = os.path.realpath(recipe["data"]), saved["data"]
    if was != now:
        refuse_difference(was, now, out)


def has_checkpoint(out: Path) -> bool:
    return any((Path(out) / n).exists() for n in (CHECKPOINT, PREVIOUS))


def check_resumable(out: Path, *, fits: int = 1) -> None:
    """Refuse (one line) an `--out` that holds no run that could be resumed.

    `fits` > 1: the run folder of a plan of several fits, which holds config.json and the fits' folders
    (each with its own checkpoint) but no checkpoint of its own.
    """
    if not out.exists():
        raise RunFolderError(f"--resume: '{out}' does not exist; give the --out of the run to continue")
    if not out.is_dir():
        raise RunFolderError(f"--resume: '{out}' is a file; give the --out folder of the run to continue")
    if fits > 1:
        if not (out / CONFIG).is_file():
            raise RunFolderError(f"--resume: '{out}' holds no run (no config.json); give the --out of the run to "
                                 "continue")
        if not os.access(out, os.W_OK | os.X_OK):
            raise RunFolderError(f"--resume: '{out}' is not writable")
        return
    if not (out / CONFIG).is_file() and not has_checkpoint(out):
        raise RunFolderError(f"--resume: '{out}' holds no run (no config.json, no {CHECKPOINT}); give the --out "
                             "of the run to continue")
    if not has_checkpoint(out):
        raise RunFolderError(f"--resume: '{out}' holds no {CHECKPOINT} (nor {PREVIOUS}): the run stopped before "
                             "its first checkpoint; start it again in a new --out")
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunFolderError(f"--resume: '{out}' is not writable")


def remove_temporaries(out: Path) -> None:
    """Temporary files a killed run left behind (`.NAME.XXXX.tmp` of `tricks.files.write_atomic`)."""
    for tmp in Path(out).glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
