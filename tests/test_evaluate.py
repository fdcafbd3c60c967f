import json

import pytest
import torch

from fixtures import write_cifar10, write_image
from recipes.cli import main
from recipes.evaluate import evaluate, predict_folder
from recipes.parse import parse_recipe
from recipes.run import train


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """A finished run on a small cifar-10-batches-py folder, with a trick that changes the model."""
    root = tmp_path_factory.mktemp("eval")
    write_cifar10(root / "cifar-10-batches-py", per_batch=20, n_test=30)
    out = root / "run"
    recipe = parse_recipe("baseline+finalbn+rotation", data=str(root / "cifar-10-batches-py"), epochs=1, bs=25,
                          device="cpu")
    return out, train(recipe, out)


def test_eval_gives_the_accuracy_the_run_recorded(cifar_run):
    out, result = cifar_run
    ev = evaluate(out, device="cpu")
    assert ev.accuracy == pytest.approx(result["test_acc"], abs=1e-4)
    assert sum(n for _, n, _ in ev.per_class) == 30
    assert sum(c for _, _, c in ev.per_class) == round(ev.accuracy * 30 / 100)
    tta = evaluate(out, device="cpu", tta=True)
    assert 0.0 <= tta.accuracy <= 100.0


def test_recipe_eval_prints_the_per_class_table(cifar_run, capsys):
    out, result = cifar_run
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "airplane" in printed and "truck" in printed
    assert f"test accuracy {result['test_acc']:.2f}%" in printed


def test_predict_a_folder_of_images(cifar_run, tmp_path):
    out, _ = cifar_run
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"img{i}.png", torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    predictions = predict_folder(out, folder, device="cpu")
    classes = json.loads((out / "config.json").read_text())["classes"]
    assert [p.rsplit("/", 1)[1] for p, _, _ in predictions] == ["img0.png", "img1.png", "img2.png"]
    assert all(c in classes and 0.1 <= prob <= 1.0 for _, c, prob in predictions)


def test_eval_of_a_refinery_run_picks_a_generation(tmp_path):
    root = tmp_path
    write_cifar10(root / "c", per_batch=10, n_test=20)
    recipe = parse_recipe("baseline+refine:gens=1", data=str(root / "c"), epochs=1, bs=25, device="cpu")
    result = train(recipe, root / "run")
    assert evaluate(root / "run", device="cpu").accuracy == pytest.approx(result["generation_test_acc"][1], abs=1e-4)
    first = evaluate(root / "run", device="cpu", generation=0).accuracy
    assert first == pytest.approx(result["generation_test_acc"][0], abs=1e-4)


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recipe: error: ") and "is not a run folder" in err and err.count("\n") == 1
