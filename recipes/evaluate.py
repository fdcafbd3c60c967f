"""Re-evaluate a run folder's saved weights (`recipe eval`), optionally with flip TTA, and predict images.

The model is rebuilt from the run's `config.json` (the model, then the surgery of its structural
tricks, e.g. a final BN), then `model.pth` is loaded with `torch.load(weights_only=True)`. A
refinery run is evaluated at its last generation unless another is asked for.
"""
from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from recipes.build import check_device, resolve_device, trained_model
from recipes.recipe import FIELDS, Recipe
from recipes.run_folder import CONFIG, MODEL, evaluated_folder, read_config
from tricks.data import load_dataset
from tricks.data.augment import normalize
from tricks.data.formats import read_images
from tricks.errors import ConfigError, RunFolderError, TricksError


@dataclass
class Evaluation:
    accuracy: float  # %
    per_class: list[tuple[str, int, int]]  # (class, images, correct)
    folder: Path


def _reason(e: BaseException) -> str:
    """The error's type and its first sentence."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    first = lines[0].split(". ")[0][:120] if lines else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def recipe_of(config: dict) -> Recipe:
    values = {k: v for k, v in config.items() if k in FIELDS and k != "tricks"}
    tricks = tuple((t["name"], tuple(t["params"].items())) for t in config.get("tricks", ()))
    return Recipe(**values, tricks=tricks)


def load_model(folder: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The trained model (built, changed by the recipe's structural tricks, weights loaded, eval mode)
    and the run's config."""
    config = read_config(folder)
    keys = ("num_classes", "channels", "classes", "image_size", "mean", "std", "model")
    try:
        recipe = recipe_of(config)
        num_classes, channels = int(config["num_classes"]), int(config["channels"])
        missing = [k for k in keys if k not in config]
    except (KeyError, TypeError, ValueError) as e:
        raise RunFolderError(f"'{folder / CONFIG}' is not a config `recipe run` wrote ({_reason(e)})") from None
    if missing:
        raise RunFolderError(f"'{folder / CONFIG}' has no {', '.join(missing)}; it is not a config "
                             "`recipe run` wrote")
    weights = folder / MODEL
    try:
        with warnings.catch_warnings():  # a plain pickle (protocol 4): torch warns before it refuses the file
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            model = trained_model(recipe, num_classes, channels, weights, device)
    except TricksError:
        raise
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):
            raise RunFolderError(f"cannot read the weights '{weights}' ({_reason(e)}); the file is damaged or not "
                                 "a model.pth `recipe run` wrote") from None
        raise RunFolderError(f"'{weights}' holds a pickled Python object (a whole model, as torch.save(model) "
                             "writes), not the state_dict `recipe run` writes; it is not loaded, as loading it "
                             "could run any code: give the run's own model.pth") from None
    except RuntimeError as e:
        if "state_dict" in str(e):  # weights of another model, or of another number of classes
            raise RunFolderError(f"the weights in '{weights}' do not fit the model its config.json names "
                                 f"({config['model']}, {num_classes} classes): they are another model's; "
                                 "give the run's own model.pth") from None
        raise RunFolderError(f"cannot read the weights '{weights}' ({_reason(e)}); the file is damaged or not "
                             "a model.pth `recipe run` wrote") from None
    except Exception as e:  # noqa: BLE001  (an empty, cut or foreign file: pickle, zip, EOF errors)
        raise RunFolderError(f"cannot read the weights '{weights}' ({_reason(e)}); the file is damaged or not "
                             "a model.pth `recipe run` wrote") from None
    return model.eval(), config


@torch.inference_mode()
def predict(model: torch.nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
            tta: bool = False, bs: int = 500) -> torch.Tensor:
    """Class probabilities of uint8 images; with `tta`, the mean over the image and its mirror."""
    device = next(model.parameters()).device
    mean, std = mean.to(device), std.to(device)
    out = []
    for i in range(0, len(images), bs):
        x = normalize(images[i:i + bs].to(device), mean, std)
        p = model(x).softmax(1)
        if tta:
            p = (p + model(x.flip(3)).softmax(1)) / 2
        out.append(p.float().cpu())
    return torch.cat(out)


def evaluate(path: str | Path, *, data: str | None = None, tta: bool = False, generation: int | None = None,
             device: str = "auto") -> Evaluation:
    device = check_device(resolve_device(device))  # before the folder: a device that is not here is the first error
    model, config = load_model(evaluated_folder(path, generation), device)
    dataset = load_dataset(config["dataset"], data if data is not None else config["data"])
    if list(dataset.classes) != config["classes"] or list(dataset.size) != config["image_size"]:
        raise ConfigError(f"the data at '{dataset.source}' ({dataset.num_classes} classes of {dataset.size}) is not "
                          f"what the run trained on ({len(config['classes'])} classes of {config['image_size']})")
    mean, std = torch.tensor(config["mean"]), torch.tensor(config["std"])
    pred = predict(model, dataset.test.images, mean, std, tta).argmax(1)
    labels = dataset.test.labels
    per_class = [(name, int((labels == c).sum()), int(((pred == c) & (labels == c)).sum()))
                 for c, name in enumerate(dataset.classes)]
    return Evaluation(100.0 * (pred == labels).float().mean().item(), per_class, Path(path))


def predict_folder(path: str | Path, images: str | Path, *, tta: bool = False, generation: int | None = None,
                   device: str = "auto") -> list[tuple[str, str, float]]:
    """(file, predicted class, probability) for every image in a folder; needs no dataset."""
    device = check_device(resolve_device(device))  # before the folder: a device that is not here is the first error
    model, config = load_model(evaluated_folder(path, generation), device)
    paths, x = read_images(Path(images), config["channels"], tuple(config["image_size"]))
    probs = predict(model, x, torch.tensor(config["mean"]), torch.tensor(config["std"]), tta)
    best = probs.max(1)
    return [(p, config["classes"][i], float(v)) for p, i, v in zip(paths, best.indices.tolist(), best.values)]
