"""The README's Python examples run as written; the fastai-Learner example (issue 12) on a small image folder."""
import re
from pathlib import Path

from fixtures import cifar10_jpeg_folder

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
LEARNER = re.search(r"<!-- learner-example:start -->\n```python\n(.*?)```\n<!-- learner-example:end -->", TEXT, re.S)
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", TEXT, flags=re.S) if LEARNER is None or b != LEARNER[1]]
# The example's data and length, and what the test puts in their place: a few hundred images, one epoch.
SETTINGS = ('path = Path("cifar10")', "EPOCHS, BS = 20, 128")


def test_the_readme_has_the_fastai_learner_example():
    assert LEARNER is not None, "README.md lacks the block between <!-- learner-example:start/end -->"
    section = TEXT[TEXT.index("### A trick in your own fastai Learner"):]
    assert section.index("<!-- learner-example:start -->") < section.index("\n### ")  # under that heading
    for setting in SETTINGS:
        assert LEARNER[1].count(setting) == 1, setting


def test_every_python_block_of_the_readme_is_run_here():
    """The learner example is the README's only Python block; a new one needs its own run in this file."""
    assert BLOCKS == [], f"README.md has {len(BLOCKS)} Python block(s) no test runs: add one here"


def test_the_fastai_learner_example_trains_predicts_exports_and_loads(tmp_path, monkeypatch, one_torch_thread):
    import torch
    from fastai.losses import CrossEntropyLossFlat
    from fastai.vision.all import load_learner
    from torch import nn

    from tricks import FinalBN, LabelRefinery
    from tricks.surgery import ClassifierWrap

    folder = cifar10_jpeg_folder(tmp_path / "images")
    n_images = sum(1 for f in folder.rglob("*") if f.is_file())
    code = LEARNER[1]
    for setting, mine in zip(SETTINGS, (f"path = Path({str(folder)!r})", "EPOCHS, BS = 1, 64")):
        assert code.count(setting) == 1, setting
        code = code.replace(setting, mine)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    printed: list = []
    ns: dict = {"print": lambda *args: printed.append(args)}  # what the example prints (fastai's bars aside)
    exec(compile(code, str(README), "exec"), ns)

    dls, learn, student, image = ns["dls"], ns["learn"], ns["student"], ns["image"]
    assert dls.path == folder and len(dls.train_ds) + len(dls.valid_ds) == n_images
    for lrn in (learn, student):  # one epoch each, the Learner's own loss back after it, FinalBN in the model
        assert lrn.recorder.values and len(lrn.recorder.values) == 1
        assert isinstance(lrn.loss_func, CrossEntropyLossFlat)
        head = lrn.model[-1]
        assert isinstance(head, ClassifierWrap) and isinstance(head[0], nn.BatchNorm1d)
    assert not any(isinstance(cb, LabelRefinery) for cb in student.cbs)

    label, _, probs = student.predict(image)
    assert printed == [(label,), (label,)] and label in dls.vocab
    loaded = load_learner(folder / "student.pkl")
    assert [type(cb) for cb in loaded.cbs if isinstance(cb, FinalBN)] == [FinalBN]
    label2, _, probs2 = loaded.predict(image)
    assert label2 == label
    torch.testing.assert_close(probs2, probs)
