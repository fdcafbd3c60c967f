"""`bench perf`: what the trainer costs over the plainest PyTorch loop that does the same work.

Every ratio is measured against its reference in the same run, on the same data, one after the other:

1. trainer: training images/s of `recipes.run.train` (what `recipe run` does: the fastai Learner, the
   recipe's callbacks, the device loaders) over `plain_fit`, a hand-written loop with the same model,
   batch size, data order, augmentation, SGD parameter groups and per-iteration lr. Both count only
   the training passes (no evaluation, no file writes); each side runs `repeats` times, alternating
   which goes first, and the best of each is compared. The two also reach bit-identical weights on
   the CPU (item 5), which shows the work is the same.
2. augmentation: images/s of the batched uint8 augmentation (`DeviceLoader`: pad-4 crop, flip,
   normalise) over torchvision's transforms on PIL images through a `DataLoader` (`RandomCrop(32, 4)`,
   `RandomHorizontalFlip`, `ToTensor`, `Normalize`, as torchvision's CIFAR10 dataset serves them), with
   0 and `cores` loader workers, the faster of the two taken as the reference; and the augmentation's
   share of one training step (its seconds per batch over the plain loop's).
3. tricks: training images/s of `baseline+<trick>` over `baseline` for every registered trick that
   composes with the baseline (the refinery's generation 1, the one with a teacher forward); the
   baseline runs at the start, the middle and the end, and its spread is the noise of these ratios.
4. memory: peak RSS (on a GPU, peak allocated) of a fresh process training ResNet-20 and ResNet-56 at
   batch 256 for a few steps.
5. parity: test accuracy of the same short schedule through `recipe` and through the plain loop, for
   each seed, and the 95% Welch interval of the difference.

`--quick` sizes everything to finish in under 5 minutes on 2 CPU cores; the ratios print last.
Written by hand: no library compares a fastai Learner with its own plain-loop equivalent.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from recipes.build import build_dataloaders, build_model, resolve_device, sgd_param_groups
from recipes.checkpoint import FORMAT as CHECKPOINT_FORMAT
from recipes.checkpoint import Damaged, read_checkpoint, rng_state, save_checkpoint, set_rng_state
from recipes.parse import parse_recipe
from recipes.recipe import Recipe
from recipes.run_folder import CHECKPOINT, PREVIOUS, config_difference
from recipes.speed import resolve_speed, seed_everything
from tricks.compiled_step import compile_sgd_step, write_hyper
from tricks.data import ImageData
from tricks.errors import RunFolderError, TricksError
from tricks.files import write_atomic
from tricks.registry import TRICKS
from tricks.schedules import warmup_cosine

TRAINER_GOAL = 0.97  # issue 6: recipe / plain loop images/s at least this
AUG_SHARE_GOAL = 0.03  # the augmentation's share of a training step at most this


@dataclass(frozen=True)
class Sizes:
    """How much each measurement trains (images are class-balanced subsets of the training split)."""

    subset: int  # training images for the trainer ratio, the trick costs and parity
    test_subset: int  # test images for parity
    epochs: int  # epochs per trainer-ratio fit
    repeats: int  # fits per side for the trainer ratio (best taken)
    trick_subset: int
    trick_epochs: int
    aug_images: int  # images pushed through each augmentation path
    memory_steps: int
    parity_seeds: int
    parity_epochs: int
    bs: int = 256  # the baseline's batch size
    memory_bs: int = 256


QUICK = Sizes(subset=2560, test_subset=1000, epochs=2, repeats=3, trick_subset=1280, trick_epochs=1,
              aug_images=5120, memory_steps=3, parity_seeds=2, parity_epochs=2)
FULL = Sizes(subset=10240, test_subset=10000, epochs=3, repeats=3, trick_subset=4096, trick_epochs=2,
             aug_images=25600, memory_steps=5, parity_seeds=3, parity_epochs=10)


def perf_recipe(text: str, *, sizes: Sizes, epochs: int, subset: int, test_subset: int, seed: int = 0,
                device: str = "auto") -> Recipe:
    return parse_recipe(text, epochs=epochs, subset=subset, test_subset=test_subset, seed=seed, device=device,
                        bs=sizes.bs)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_fit(recipe: Recipe, data: ImageData, device: torch.device,
              make_model: Callable[[], torch.nn.Module] | None = None, *, folder: Path | None = None,
              deadline: float | None = None) -> dict[str, Any]:
    """The recipe's baseline training as the plainest PyTorch loop: no fastai, no callbacks.

    Same seed handling, loaders, model, SGD groups, per-iteration warmup + cosine lr and speed settings
    (`recipes.speed.resolve_speed`: channels-last, bf16 autocast with the loss on fp32 logits,
    torch.compile in the same mode, fused SGD on CUDA, eager evaluation in `eval_bs` batches) as
    `recipes.fit.fit_one` (a recipe without tricks); with `compile_step`, the same compiled SGD step
    (`tricks.compiled_step.compile_sgd_step`: torch's non-fused SGD, each lr a device tensor written in place).
    Returns train images/s (training passes only), each epoch's training and evaluation seconds, per-epoch test
    accuracy, the final weights and the epoch it started from (`start_epoch`: 0, or a checkpoint's).
    `make_model` builds the model in place of the recipe's (as `recipes.fit.fit_one`'s).

    `folder`: a checkpoint there at the end of every epoch (`plain_state`), and a checkpoint found there is
    resumed from its next epoch, to the bit the run that was never stopped (`load_plain_checkpoint`; a finished
    run's last checkpoint stays: started again it trains nothing and returns the same result). `deadline` (a
    `bench.job._now()` value; needs `folder`): past it, an epoch's checkpoint ends the run with `Abandoned`.
    """
    if recipe.tricks:
        raise ValueError("plain_fit replays recipes without tricks only")
    if deadline is not None and folder is None:
        raise ValueError("plain_fit stops at a deadline only with a checkpoint folder to resume from")
    recipe, _ = resolve_speed(recipe, device)
    if recipe.precision == "fp16":
        raise ValueError("plain_fit runs fp32 and bf16 (fp16 needs a gradient scaler)")
    saved = None if folder is None else load_plain_checkpoint(Path(folder), plain_config(recipe, device))
    seed_everything(recipe.seed, device)
    dls = build_dataloaders(recipe, data, device)
    model = make_model() if make_model is not None else build_model(recipe, data.num_classes, data.channels)
    model = model.to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    if recipe.compile:
        model.compile(mode=recipe.compile_mode)
    opt = torch.optim.SGD(sgd_param_groups(model, recipe.wd, recipe.wd_bn_bias), lr=recipe.lr,
                          momentum=recipe.momentum, nesterov=recipe.nesterov,
                          fused=True if device.type == "cuda" and not recipe.compile_step else None)
    opt_step = compile_sgd_step(opt, mode=recipe.compile_mode) if recipe.compile_step else opt.step
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=recipe.precision == "bf16")
    lr_at = warmup_cosine(peak_lr=recipe.lr, floor_lr=recipe.eta, warmup_pct=recipe.warmup_epochs / recipe.epochs,
                          start_lr=recipe.warmup_start_lr, warmup=recipe.warmup)
    done = {"epoch": 0, "step": 0, "images": 0, "epoch_acc": [], "train_seconds": [], "eval_seconds": []}
    if saved is not None:
        done = restore_plain(saved, model, opt, [dls.train, dls.valid])  # last: no draw before the first batch
    start_epoch, n_iter = done["epoch"], len(dls.train)
    step, images, accs, train_s, eval_s = (done[k] for k in ("step", "images", "epoch_acc", "train_seconds",
                                                             "eval_seconds"))
    for epoch in range(start_epoch, recipe.epochs):
        model.train()
        _sync(device)
        start = time.perf_counter()
        for x, y in dls.train:
            p = step / (recipe.epochs * n_iter) if recipe.step == "iter" else epoch / recipe.epochs
            for group in opt.param_groups:
                write_hyper(group, "lr", lr_at(p))
            with autocast:
                pred = model(x)
            loss = F.cross_entropy(pred.float(), y)
            loss.backward()
            opt_step()
            opt.zero_grad()
            step, images = step + 1, images + len(y)
        _sync(device)
        train_s.append(time.perf_counter() - start)
        model.eval()
        start = time.perf_counter()
        correct = torch.zeros((), device=device)
        with torch.inference_mode(), torch.compiler.set_stance("force_eager"), autocast:
            for x, y in dls.valid:
                correct += (model(x).argmax(1) == y).sum()
        accs.append(100.0 * correct.item() / dls.valid.n)
        eval_s.append(time.perf_counter() - start)
        if folder is not None:
            done = {"epoch": epoch + 1, "step": step, "images": images, "epoch_acc": accs, "train_seconds": train_s,
                    "eval_seconds": eval_s}
            save_checkpoint(Path(folder), plain_state(done, model, opt, [dls.train, dls.valid],
                                                      plain_config(recipe, device)))
            stop_at_deadline(deadline, epoch + 1, recipe.epochs, Path(folder))
    return {"train_images_per_second": images / sum(train_s), "epoch_acc": accs, "test_acc": accs[-1],
            "train_seconds": train_s, "eval_seconds": eval_s, "train_images": dls.train.n // recipe.bs * recipe.bs,
            "state_dict": model.state_dict(), "start_epoch": start_epoch}


def plain_config(recipe: Recipe, device: torch.device) -> dict[str, Any]:
    """What a plain run's checkpoint must match to be resumed: the resolved recipe, the loop and the device type."""
    return json.loads(json.dumps({**recipe.to_dict(), "loop": "plain", "device_type": device.type}))  # as saved


def plain_state(done: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer, loaders: list,
                config: dict[str, Any]) -> dict[str, Any]:
    """A plain run's checkpoint after `done["epoch"]` epochs: `recipes.checkpoint`'s format (its digest and atomic
    write, `save_checkpoint`) with `"loop": "plain"`: the model, the optimizer (momentum buffers, the lrs), the
    epochs, steps and images so far, each epoch's accuracy and seconds, every random state the loop draws from
    (`recipes.checkpoint.rng_state`: torch CPU and CUDA, each loader's order and augmentation generators) and the
    config it must match."""
    return {"format": CHECKPOINT_FORMAT, "loop": "plain", **done, "model": model.state_dict(),
            "opt": opt.state_dict(), "rng": rng_state(loaders), "config": json.dumps(config)}


def load_plain_checkpoint(folder: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The newest whole plain checkpoint in `folder` (`checkpoint.pth`, else the `checkpoint.prev.pth` the last
    write kept), None where the folder has neither; a `RunFolderError` (one line) for damaged files only, a recipe
    run's checkpoint, or one of other settings (the first difference named). Nothing in `folder` is changed."""
    damaged = []
    for path in (folder / CHECKPOINT, folder / PREVIOUS):
        if not path.exists():
            continue
        try:
            state = read_checkpoint(path)
        except Damaged as e:
            damaged.append(f"{path.name} is damaged: {e}")
            continue
        if state.get("loop") != "plain":
            raise RunFolderError(f"'{path}' is a recipe run's checkpoint, not the plain loop's; give the plain "
                                 "loop a folder of its own")
        saved = json.loads(state["config"])
        keys = config_difference(saved, config)
        if keys:
            k = keys[0]
            raise RunFolderError(f"the plain run in '{folder}' was trained with {k}={saved.get(k, '<unset>')!r}, "
                                 f"this one has {k}={config.get(k, '<unset>')!r}; run it with the settings it was "
                                 "started with, or remove the folder to train it again")
        return state
    if damaged:
        raise RunFolderError(f"{'; '.join(damaged)}; no whole checkpoint is left in '{folder}' (the files are kept); "
                             "remove the folder to train the run again")
    return None


def plain_checkpoint_whole(folder: Path) -> bool:
    """Whether `folder` holds a checkpoint that reads whole (`checkpoint.pth` or `checkpoint.prev.pth`; a plain run's
    or not): a folder without one is left by an attempt killed before its first epoch ended."""
    for path in (folder / CHECKPOINT, folder / PREVIOUS):
        try:
            read_checkpoint(path)
        except Damaged:  # cut short, changed, or missing
            continue
        return True
    return False


def restore_plain(state: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
                  loaders: list) -> dict[str, Any]:
    """Load a plain checkpoint into a freshly built run; returns its epochs, steps, images, accuracies and seconds.
    The optimizer keeps its own lr objects (a compiled step's lr tensors: torch's load would put the saved ones in
    their place) with the saved values written into them, as `tricks.compiled_step.CompiledStepOptimizer` does."""
    model.load_state_dict(state["model"])
    lrs = [group["lr"] for group in opt.param_groups]
    opt.load_state_dict(state["opt"])
    for group, lr in zip(opt.param_groups, lrs):
        loaded, group["lr"] = group["lr"], lr
        write_hyper(group, "lr", loaded)
    set_rng_state(state["rng"], loaders)
    return {"epoch": int(state["epoch"]), "step": int(state["step"]), "images": int(state["images"]),
            **{k: [float(v) for v in state[k]] for k in ("epoch_acc", "train_seconds", "eval_seconds")}}


def stop_at_deadline(deadline: float | None, epoch: int, epochs: int, folder: Path) -> None:
    """`bench.job.Abandoned` once `deadline` has passed and epochs are left (as `bench.job.Deadline` stops a recipe
    run): the checkpoint of `epoch` is in `folder`."""
    from bench import job as job_module

    if deadline is not None and job_module._now() >= deadline and epoch < epochs:
        raise job_module.Abandoned(f"stopped at the deadline after epoch {epoch} of {epochs}; its checkpoint in "
                                   f"'{folder}' resumes it")


def recipe_fit(recipe: Recipe, data: ImageData) -> dict[str, Any]:
    """`recipes.run.train` into a temporary run folder: its last fit's result.json and final weights, and that
    fit's per-epoch records (`recipes.stats.EpochStats`, training seconds included)."""
    from recipes.run import train
    from recipes.run_folder import MODEL, finished_result, last_fit_folder

    stats = []
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        out = train(recipe, Path(tmp) / "run", data=data, callbacks=lambda s: stats.append(s) or [])["out"]
        folder = last_fit_folder(Path(out))
        result = {**finished_result(folder), "out": out}
        state = torch.load(folder / MODEL, map_location="cpu", weights_only=True)
    return {**result, "state_dict": state, "records": [dict(r) for r in stats[-1].records]}


def trainer_ratio(data: ImageData, sizes: Sizes, device: torch.device, log) -> dict[str, Any]:
    recipe = perf_recipe("baseline", sizes=sizes, epochs=sizes.epochs, subset=sizes.subset,
                         test_subset=sizes.test_subset, device=str(device))
    plain, trainer = [], []
    for r in range(sizes.repeats):
        for side in (("plain", "recipe") if r % 2 == 0 else ("recipe", "plain")):
            if side == "plain":
                plain.append(plain_fit(recipe, data, device)["train_images_per_second"])
            else:
                trainer.append(recipe_fit(recipe, data)["train_images_per_second"])
            log(f"trainer ratio: repeat {r + 1}, {side}: {(plain if side == 'plain' else trainer)[-1]:.1f} img/s")
    return {"recipe_images_per_second": trainer, "plain_images_per_second": plain,
            "ratio": max(trainer) / max(plain), "goal": TRAINER_GOAL,
            "setup": f"ResNet-20, batch {recipe.bs}, {sizes.subset} images x {sizes.epochs} epochs, best of "
                     f"{sizes.repeats} per side"}


class PILDataset(torch.utils.data.Dataset):
    """uint8 CHW images served as torchvision's CIFAR10 dataset serves them: a PIL image, then transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC, like torchvision's CIFAR10.data
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.data[i] if self.data.shape[-1] > 1 else self.data[i][..., 0])
        return self.transform(img), self.targets[i]


def augmentation_ratio(data: ImageData, sizes: Sizes, device: torch.device, step_seconds: float,
                       log) -> dict[str, Any]:
    import torchvision.transforms as T

    from tricks.data.loaders import DeviceLoader

    recipe = perf_recipe("baseline", sizes=sizes, epochs=1, subset=sizes.aug_images, test_subset=100,
                         device=str(device))
    dls = build_dataloaders(recipe, data, device)
    train = dls.train
    mean, std = train.mean.cpu(), train.std.cpu()
    images, labels = train.images.cpu(), train.labels.cpu()
    loader = DeviceLoader(images, labels, bs=recipe.bs, mean=mean, std=std, shuffle=True, drop_last=True,
                          augment=train.augment, seed=0, device=device)
    for _ in loader:  # warm up once
        break
    _sync(device)
    start = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    _sync(device)
    batched = n / (time.perf_counter() - start)
    log(f"augmentation: batched {batched:.0f} img/s")
    tf = T.Compose([T.RandomCrop(tuple(data.size), padding=recipe.crop_pad), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(mean.tolist(), std.tolist())])
    ds = PILDataset(images, labels, tf)
    reference = {}
    for workers in sorted({0, min(2, os.cpu_count() or 1)}):
        dl = torch.utils.data.DataLoader(ds, batch_size=recipe.bs, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=False)
        start = time.perf_counter()
        m = 0
        for x, y in dl:
            x, y = x.to(device), y.to(device)
            m += len(y)
        _sync(device)
        reference[workers] = m / (time.perf_counter() - start)
        log(f"augmentation: torchvision DataLoader, {workers} workers: {reference[workers]:.0f} img/s")
    best = max(reference.values())
    per_batch = recipe.bs / batched
    return {"batched_images_per_second": batched,
            "torchvision_images_per_second": {str(k): v for k, v in reference.items()},
            "ratio": batched / best, "seconds_per_batch": per_batch, "step_seconds": step_seconds,
            "share_of_step": per_batch / step_seconds, "share_goal": AUG_SHARE_GOAL}


def composable_tricks() -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(trick, recipe) for every registered trick that composes with the baseline and its ResNet-20 (a trick
    whose parameters count generations with one generation), and {trick: why not} for the others."""
    from recipes.build import build_model, build_tricks
    from tricks.surgery import check_surgery

    out, skipped = [], {}
    for name in sorted(TRICKS.names()):
        once = ",".join(f"{q.name}=1" for q in TRICKS.get(name).params if q.generations)
        text = f"baseline+{name}" + (f":{once}" if once else "")
        try:
            recipe = parse_recipe(text)
            check_surgery(build_model(recipe, 10, 3), build_tricks(recipe))
        except TricksError as e:
            skipped[name] = " ".join(str(e).split())
            continue
        out.append((name, text))
    return out, skipped


def trick_costs(data: ImageData, sizes: Sizes, device: torch.device, log) -> dict[str, Any]:
    from bench.budgets import scaled

    def ips(text: str) -> float:  # run lengths (milestones, cycles, generations) scaled as the bench does
        full = parse_recipe(text, device=str(device), bs=sizes.bs)
        r = scaled(full, factor=sizes.trick_epochs / full.epochs, subset=sizes.trick_subset,
                   test_subset=min(100, len(data.test)))
        return recipe_fit(r, data)["train_images_per_second"]

    base = [ips("baseline")]
    costs = {}
    tricks, skipped = composable_tricks()
    for i, (name, text) in enumerate(tricks):
        if i == len(tricks) // 2:  # the machine's speed drifts: the baseline at the start, middle and end
            base.append(ips("baseline"))
        costs[name] = {"recipe": text, "images_per_second": ips(text)}
        log(f"trick {name}: {costs[name]['images_per_second']:.1f} img/s")
    base.append(ips("baseline"))
    reference = statistics.fmean(base)
    for c in costs.values():
        c["ratio"] = c["images_per_second"] / reference
    return {"baseline_images_per_second": base, "tricks": costs, "skipped": skipped,
            "setup": f"{sizes.trick_subset} images x {sizes.trick_epochs} epochs each; the baseline at the start, "
                     "the middle and the end, the tricks over their mean"}


def _status_mib(key: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB. VmHWM (peak RSS) starts afresh at
    exec, unlike getrusage's ru_maxrss, which a spawned child inherits from its parent on Linux."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _memory_child(model_name: str, bs: int, steps: int, device: str, queue) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from tricks.models import create_model

    dev = torch.device(device)
    before = _status_mib("VmRSS")
    model = create_model(model_name, num_classes=10, in_chans=3).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(bs, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (bs,), device=dev)
    for _ in range(steps):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    out = {"peak_rss_mib": _status_mib("VmHWM"), "rss_before_model_mib": before}
    if dev.type == "cuda":
        out["peak_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    queue.put(out)


def peak_memory(sizes: Sizes, device: torch.device, log) -> dict[str, Any]:
    bs = sizes.memory_bs
    ctx = multiprocessing.get_context("spawn")
    out = {}
    for name in ("resnet20", "resnet56"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_memory_child, args=(name, bs, sizes.memory_steps, str(device), queue))
        proc.start()
        out[name] = queue.get(timeout=600)
        proc.join()
        log(f"memory {name}: peak RSS {out[name]['peak_rss_mib']:.0f} MiB")
    return {"batch": bs, "models": out}


def parity(data: ImageData, sizes: Sizes, device: torch.device, log) -> dict[str, Any]:
    from bench.stats import welch

    recipe_acc, plain_acc, identical = [], [], []
    for seed in range(sizes.parity_seeds):
        r = perf_recipe("baseline", sizes=sizes, epochs=sizes.parity_epochs, subset=sizes.subset,
                        test_subset=sizes.test_subset, seed=seed, device=str(device))
        a, b = recipe_fit(r, data), plain_fit(r, data, device)
        recipe_acc.append(a["test_acc"])
        plain_acc.append(b["test_acc"])
        identical.append(all(torch.equal(a["state_dict"][k].cpu(), v.cpu()) for k, v in b["state_dict"].items()))
        log(f"parity seed {seed}: recipe {a['test_acc']:.2f}, plain {b['test_acc']:.2f}, "
            f"identical weights {identical[-1]}")
    d, interval = welch(recipe_acc, plain_acc)
    return {"seeds": list(range(sizes.parity_seeds)), "recipe_test_acc": recipe_acc, "plain_test_acc": plain_acc,
            "difference": d, "interval95": interval, "identical_weights": identical,
            "setup": f"baseline, {sizes.subset} images x {sizes.parity_epochs} epochs, {sizes.test_subset} test"}


def run_perf(data: ImageData, *, quick: bool, device: str = "auto", log=print,
             sizes: Sizes | None = None) -> dict[str, Any]:
    """All five measurements; the dict written to perf.json. `sizes` overrides QUICK / FULL (tests)."""
    sizes = sizes or (QUICK if quick else FULL)
    dev = resolve_device(device)
    start = time.perf_counter()
    trainer = trainer_ratio(data, sizes, dev, log)
    step_seconds = sizes.bs / max(trainer["plain_images_per_second"])
    out = {
        "quick": quick, "device": str(dev), "threads": torch.get_num_threads(), "sizes": dataclasses.asdict(sizes),
        "trainer": trainer,
        "augmentation": augmentation_ratio(data, sizes, dev, step_seconds, log),
        "tricks": trick_costs(data, sizes, dev, log),
        "memory": peak_memory(sizes, dev, log),
        "parity": parity(data, sizes, dev, log),
    }
    out["seconds"] = time.perf_counter() - start
    return out


def markdown(perf: dict[str, Any]) -> str:
    t, a, m, p = perf["trainer"], perf["augmentation"], perf["memory"], perf["parity"]
    ref = ", ".join(f"{v:.0f} ({k} workers)" for k, v in a["torchvision_images_per_second"].items())
    lines = [
        f"# bench perf ({'quick' if perf['quick'] else 'full'}, {perf['device']}, {perf['threads']} threads, "
        f"{perf['seconds']:.0f} s)", "",
        "| measurement | measured | reference (same run) | ratio | goal |", "|---|---|---|---|---|",
        f"| 1. trainer: `recipe run baseline` vs a plain PyTorch loop, train img/s ({t['setup']}) | "
        f"{max(t['recipe_images_per_second']):.1f} | {max(t['plain_images_per_second']):.1f} | "
        f"**{t['ratio']:.3f}** | >= {t['goal']} |",
        f"| 2. batched augmentation vs torchvision transforms on PIL images in a DataLoader, img/s | "
        f"{a['batched_images_per_second']:.0f} | {ref} | **{a['ratio']:.1f}** | - |",
        f"| 2b. augmentation's share of a training step | {1000 * a['seconds_per_batch']:.1f} ms per batch | "
        f"{1000 * a['step_seconds']:.0f} ms per step | **{100 * a['share_of_step']:.2f}%** | "
        f"< {100 * a['share_goal']:.0f}% |", "",
        f"Trick costs: train img/s of `baseline+<trick>` over `baseline` ({perf['tricks']['setup']}; "
        f"baseline {' / '.join(f'{v:.1f}' for v in perf['tricks']['baseline_images_per_second'])} img/s).", "",
        "| trick | recipe | img/s | over baseline |", "|---|---|---|---|",
    ]
    for name, c in perf["tricks"]["tricks"].items():
        lines.append(f"| {name} | `{c['recipe']}` | {c['images_per_second']:.1f} | {c['ratio']:.2f} |")
    for name, why in perf["tricks"]["skipped"].items():
        lines.append(f"| {name} | not measured: {why} | - | - |")
    lines += ["", f"Peak memory, training at batch {m['batch']} (a fresh process each):", "",
              "| model | peak RSS (MiB) | RSS before the model (MiB) | peak GPU allocated (MiB) |", "|---|---|---|---|"]
    for name, v in m["models"].items():
        gpu = f"{v['peak_allocated_mib']:.0f}" if "peak_allocated_mib" in v else "-"
        lines.append(f"| {name} | {v['peak_rss_mib']:.0f} | {v['rss_before_model_mib']:.0f} | {gpu} |")
    interval = p["interval95"]
    ci = f"[{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "(n<2)"
    lines += ["", f"Accuracy parity ({p['setup']}): seeds {p['seeds']}: recipe "
              f"{' / '.join(f'{v:.2f}' for v in p['recipe_test_acc'])}, plain loop "
              f"{' / '.join(f'{v:.2f}' for v in p['plain_test_acc'])}; difference {p['difference']:+.2f} "
              f"points, 95% interval {ci}; bit-identical weights: {p['identical_weights']}.", ""]
    return "\n".join(lines)


def write_perf(perf: dict[str, Any], results_dir: Path) -> tuple[Path, Path]:
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    j, md = results_dir / "perf.json", results_dir / "perf.md"
    write_atomic(j, json.dumps(perf, indent=2) + "\n")
    write_atomic(md, markdown(perf))
    return j, md
