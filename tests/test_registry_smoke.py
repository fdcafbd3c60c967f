"""One parametrised smoke test over the whole trick registry, on real CIFAR-10 images."""
import csv
import math

import pytest

import tricks  # noqa: F401  (registers every trick)
from recipes.parse import parse_recipe
from recipes.run import train
from tricks.data import ImageData, Split, class_balanced_subset
from tricks.registry import TRICKS

# Tricks that need a pre-activation model, and settings that fit a 2-epoch run.
MODEL = {"lastbn": "preact_resnet20"}
PARAMS = {"stepdecay": ":at=1", "refine": ":gens=1"}


@pytest.fixture(scope="module")
def small_cifar(cifar10_jpeg) -> ImageData:
    """32 training and 64 test images of the real archive, every class present."""
    def take(split, n):
        idx = class_balanced_subset(split.labels, n, seed=0)
        return Split(split.images[idx].contiguous(), split.labels[idx])

    d = cifar10_jpeg
    return ImageData(d.name, d.classes, take(d.train, 32), take(d.test, 64), d.source, d.format)


def test_the_registry_holds_every_trick_of_the_notes():
    assert {"mixup", "klmixup", "onehot", "lsmooth", "sgdr", "stepdecay", "ema", "channeldrop", "resdrop",
            "fcdrop", "finalbn", "lastbn", "lastgamma", "leakyrelu", "swish", "bnmom", "rotation", "lookahead",
            "dynarefine"} <= set(TRICKS.names())


@pytest.mark.parametrize("name", sorted(TRICKS.names()))
def test_every_trick_trains_two_batches_and_evaluates(name, small_cifar, tmp_path):
    recipe = parse_recipe(f"baseline+{name}{PARAMS.get(name, '')}", epochs=2, bs=32, device="cpu",
                          model=MODEL.get(name, "resnet20"))
    result = train(recipe, tmp_path / "run", data=small_cifar)
    last = tmp_path / "run" / (f"gen{len(result['generations']) - 1}" if "generations" in result else "")
    rows = list(csv.DictReader((last / "metrics.csv").open()))
    assert len(rows) == 2 and result["epochs"] == 2 * len(result.get("generations", [None]))
    assert all(math.isfinite(float(r["train_loss"])) and math.isfinite(float(r["test_loss"])) for r in rows)
    assert 0.0 <= result["test_acc"] <= 100.0
