"""`bench perf` on a tiny real-format CIFAR-10: the plain loop is the recipe's exact work, every part is reported."""
from __future__ import annotations

import json
import statistics

import pytest
import torch
from fixtures import write_cifar10

from bench.cli import main
from bench.perf import Sizes, composable_tricks, perf_recipe, plain_fit, recipe_fit
from tricks.data import load_dataset
from tricks.registry import TRICKS

TINY = Sizes(subset=64, test_subset=100, epochs=1, repeats=2, trick_subset=64, trick_epochs=1, aug_images=64,
             memory_steps=1, parity_seeds=2, parity_epochs=2, bs=32, memory_bs=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("perf") / "cifar-10-batches-py"
    write_cifar10(folder, per_batch=40, n_test=100)
    return folder


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_plain_loop_does_exactly_the_recipes_work(tiny, tmp_path):
    data = load_dataset("cifar10", tiny, cache_dir=tmp_path / "cache")
    recipe = perf_recipe("baseline", sizes=TINY, epochs=3, subset=64, test_subset=100, seed=1, device="cpu")
    a, b = recipe_fit(recipe, data), plain_fit(recipe, data, torch.device("cpu"))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())  # bit-identical
    assert a["test_acc"] == b["test_acc"]
    with pytest.raises(ValueError, match="without tricks"):
        plain_fit(perf_recipe("baseline+mixup", sizes=TINY, epochs=1, subset=64, test_subset=100), data,
                  torch.device("cpu"))


def test_bench_perf_measures_everything_writes_json_and_markdown_and_prints_the_ratios_last(tiny, tmp_path, capsys,
                                                                                           monkeypatch):
    import bench.perf

    monkeypatch.setattr(bench.perf, "QUICK", TINY)
    monkeypatch.setenv("TRICKS_CACHE", str(tmp_path / "cache"))
    rc = main(["perf", "--quick", "--data", str(tiny), "--device", "cpu", "--results", str(tmp_path / "r")])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert out[-2].startswith("ratio 1, trainer / plain loop, train img/s: ")
    assert out[-1].startswith("ratio 2, batched / torchvision augmentation, img/s: ")
    perf = json.loads((tmp_path / "r" / "perf.json").read_text())
    t = perf["trainer"]
    assert len(t["recipe_images_per_second"]) == len(t["plain_images_per_second"]) == 2
    assert t["ratio"] == max(t["recipe_images_per_second"]) / max(t["plain_images_per_second"])
    a = perf["augmentation"]
    assert set(a["torchvision_images_per_second"]) == {"0", "2"}
    assert a["ratio"] == a["batched_images_per_second"] / max(a["torchvision_images_per_second"].values())
    assert a["share_of_step"] == a["seconds_per_batch"] / a["step_seconds"]
    measured, skipped = composable_tricks()
    assert list(perf["tricks"]["tricks"]) == [name for name, _ in measured] and perf["tricks"]["skipped"] == skipped
    assert sorted([*perf["tricks"]["tricks"], *skipped]) == sorted(TRICKS.names())  # every trick, one or the other
    assert "lastbn" in skipped and "pre-activation" in skipped["lastbn"] and len(measured) >= 17
    assert all(c["images_per_second"] > 0 for c in perf["tricks"]["tricks"].values())
    base = perf["tricks"]["baseline_images_per_second"]
    assert len(base) == 3 and all(c["ratio"] == c["images_per_second"] / statistics.fmean(base)
                                  for c in perf["tricks"]["tricks"].values())
    mem = perf["memory"]["models"]
    assert set(mem) == {"resnet20", "resnet56"} and all(v["peak_rss_mib"] >= v["rss_before_model_mib"] > 0
                                                        for v in mem.values())
    assert mem["resnet56"]["peak_rss_mib"] > mem["resnet20"]["peak_rss_mib"]  # each child's own peak, not the parent's
    p = perf["parity"]
    assert p["identical_weights"] == [True, True] and p["recipe_test_acc"] == p["plain_test_acc"]
    assert p["difference"] == 0.0
    md = (tmp_path / "r" / "perf.md").read_text()
    assert f"**{perf['trainer']['ratio']:.3f}**" in md and f"**{perf['augmentation']['ratio']:.1f}**" in md
    assert md.count("\n| ") >= 3 + len(perf["tricks"]["tricks"]) + len(perf["tricks"]["skipped"]) + 2
