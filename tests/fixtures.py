"""The tests' shared helpers: writers of small datasets in the exact on-disk formats, the path of the
shared real archive, toy data and Learners, spying callbacks, ablation-table rows.

Plain functions (not pytest fixtures) so that any test file can import them (`from fixtures import ...`,
the one way). Each writer returns what a reader must give back: class names and (images uint8
(N, C, H, W), labels int64) per split.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback, CancelFitException
from PIL import Image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def shared_cifar10_archive() -> Path:
    """`<shared>/data/cifar10-jpeg.tar.gz`; shared is `$TRICKS_SHARED`, else beside the repo."""
    env = os.environ.get("TRICKS_SHARED")
    shared = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    return shared / "data" / "cifar10-jpeg.tar.gz"


def pixels(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Known uint8 images (N, C, H, W)."""
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def labels_for(n: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Labels that cover every class when n >= num_classes, in a seeded order."""
    lab = torch.arange(n) % num_classes
    return lab[torch.randperm(n, generator=torch.Generator().manual_seed(seed))].to(torch.int64)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _rows(images: torch.Tensor) -> np.ndarray:
    return images.reshape(len(images), -1).numpy().copy()  # (N, 3072): R plane, G plane, B plane


def write_cifar10(folder: Path, per_batch: int = 3, n_test: int = 4, classes=CIFAR10_CLASSES, seed: int = 0) -> dict:
    """A `cifar-10-batches-py` folder: data_batch_1..5, test_batch, batches.meta."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_train = 5 * per_batch
    train, test = pixels(n_train, 3, 32, 32, seed), pixels(n_test, 3, 32, 32, seed + 1)
    ytrain, ytest = labels_for(n_train, len(classes), seed), labels_for(n_test, len(classes), seed + 1)
    for b in range(5):
        s = slice(b * per_batch, (b + 1) * per_batch)
        _pickle(folder / f"data_batch_{b + 1}", {
            b"batch_label": f"training batch {b + 1} of 5".encode(), b"labels": ytrain[s].tolist(),
            b"data": _rows(train[s]), b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]})
    _pickle(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": ytest.tolist(),
                                    b"data": _rows(test), b"filenames": [b"t.png"] * n_test})
    _pickle(folder / "batches.meta", {b"label_names": [c.encode() for c in classes],
                                      b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return {"classes": tuple(classes), "train": (train, ytrain), "test": (test, ytest)}


def write_cifar100(folder: Path, n_train: int = 200, n_test: int = 100, num_classes: int = 100, seed: int = 0) -> dict:
    """A `cifar-100-python` folder: train, test, meta (fine and coarse labels)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    classes = tuple(f"fine_{i:02d}" for i in range(num_classes))
    out = {"classes": classes}
    for split, n, sd in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, fine = pixels(n, 3, 32, 32, sd), labels_for(n, num_classes, sd)
        _pickle(folder / split, {b"filenames": [f"{i}.png".encode() for i in range(n)], b"batch_label": split.encode(),
                                 b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(), b"data": _rows(images)})
        out[split] = (images, fine)
    _pickle(folder / "meta", {b"fine_label_names": [c.encode() for c in classes],
                              b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]})
    return out


def _idx_bytes(t: torch.Tensor) -> bytes:
    magic = 0x0800 + t.dim()
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in t.shape)
    return header + t.to(torch.uint8).numpy().tobytes()


def write_idx(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True, seed: int = 0, hw=(28, 28)) -> dict:
    """(Fashion-)MNIST idx files: big-endian header, magic 2051 (images) / 2049 (labels)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {"classes": tuple(str(i) for i in range(10))}
    for prefix, split, n, sd in (("train", "train", n_train, seed), ("t10k", "test", n_test, seed + 1)):
        images, labels = pixels(n, 1, *hw, seed=sd), labels_for(n, 10, sd)
        for kind, data in (("images-idx3", images[:, 0]), ("labels-idx1", labels)):
            raw = _idx_bytes(data)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        out[split] = (images, labels)
    return out


def write_image(path: Path, image: torch.Tensor) -> None:
    """One (C, H, W) uint8 image as png (1-4 channels) or jpg (1 or 3), by the file's extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[image.shape[0]]
    arr = image.permute(1, 2, 0).numpy()
    Image.fromarray(arr[:, :, 0] if mode == "L" else arr, mode).save(path)


def write_image_folder(root: Path, splits: dict[str, dict[str, list[torch.Tensor]]], ext: str = "png") -> None:
    """fastai's layout: `root/<split>/<class>/NNNN.<ext>`, files numbered in list order."""
    for split, by_class in splits.items():
        for c, images in by_class.items():
            (Path(root) / split / c).mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                write_image(Path(root) / split / c / f"{i:04d}.{ext}", image)


def simple_image_folder(root: Path, classes=("cat", "dog", "emu"), n_train: int = 3, n_test: int = 2, c: int = 3,
                        hw=(8, 6), test_name: str = "test", seed: int = 0) -> dict:
    """A small png image folder; returns the expected classes and splits (classes sorted)."""
    classes = tuple(sorted(classes))
    out, splits = {"classes": classes}, {}
    for k, (split, n) in enumerate((("train", n_train), (test_name, n_test))):
        by_class = {cl: list(pixels(n, c, *hw, seed=seed + 10 * k + j)) for j, cl in enumerate(classes)}
        splits[split] = by_class
        out["test" if k else "train"] = (torch.cat([torch.stack(v) for v in by_class.values()]),
                                         torch.arange(len(classes)).repeat_interleave(n))
    write_image_folder(root, splits)
    return out


def make_tar(src: Path, archive: Path, arcname: str | None = None) -> Path:
    """A .tar / .tar.gz / .tgz of `src` (stored under `arcname`, default its name)."""
    mode = "w" if str(archive).endswith(".tar") else "w:gz"
    with tarfile.open(archive, mode) as tar:
        tar.add(src, arcname=arcname or Path(src).name)
    return Path(archive)


class RunsCode:
    """An object whose unpickling runs code, as an attacker's data file would: it writes the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('this ran')",)


def plant_code(file: Path, marker: Path) -> Path:
    """Rewrite the CIFAR pickle `file` with one more entry, last, whose unpickling writes `marker`: a plain
    `pickle.load` runs it and still returns every entry a reader needs."""
    with open(file, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d[b"x"] = RunsCode(marker)
    _pickle(file, d)
    return Path(file)


ZEROS_CHUNK = 64 << 20


def write_zeros_tar_gz(archive: Path, members: list[tuple[str, int]], folder: Path | None = None) -> Path:
    """A .tar.gz of `folder` (under its name), then one member of `size` zero bytes per (name, size), about 1 MiB
    on disk per GiB: the gzip stream is gzip members one after another (as gzip allows), the same compressed
    64 MiB of zeros repeated."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if folder is not None:
            tar.add(folder, arcname=Path(folder).name)
        head = buf.getvalue()[:tar.offset]  # the members, without the end-of-archive blocks close() adds
    chunk = gzip.compress(bytes(ZEROS_CHUNK), mtime=0)
    with open(archive, "wb") as f:
        f.write(gzip.compress(head, mtime=0))
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            f.write(gzip.compress(info.tobuf(tarfile.PAX_FORMAT), mtime=0))
            f.write(chunk * (size // ZEROS_CHUNK))
            f.write(gzip.compress(bytes(size % ZEROS_CHUNK + (-size) % tarfile.BLOCKSIZE), mtime=0))
        f.write(gzip.compress(bytes(2 * tarfile.BLOCKSIZE), mtime=0))  # the end of the archive
    return Path(archive)


def assert_matches(data, expected: dict) -> None:
    """`data` (an ImageData) holds exactly the classes, pixels and labels a writer returned."""
    assert data.classes == tuple(expected["classes"])
    for split in ("train", "test"):
        got, (images, labels) = getattr(data, split), expected[split]
        assert got.images.dtype == torch.uint8 and got.labels.dtype == torch.int64
        assert got.images.is_contiguous() and got.images.device.type == "cpu"
        assert got.images.shape == images.shape and len(got) == len(images)
        assert torch.equal(got.images, images), f"{split} pixels differ"
        assert torch.equal(got.labels, labels), f"{split} labels differ"


def toy_data(seed: int = 0, n_train: int = 128, n_test: int = 64):
    """4 classes of 3x16x16 noise, each class brighter in one channel: learnable in a few steps."""
    from tricks.data import ImageData, Split

    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.arange(n) % 4
        x = torch.randint(0, 100, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
        for c in range(4):
            x[y == c, c % 3] += 60 + 40 * (c // 3)
        return Split(x.contiguous(), y)

    return ImageData("folder", ("a", "b", "c", "d"), split(n_train), split(n_test), "toy", "image-folder")


def write_toy_folder(root: Path, n_train: int, n_test: int) -> Path:
    """`toy_data` written as a PNG image folder (`train/<class>/`, `test/<class>/`), as a user's data would be."""
    data = toy_data(n_train=n_train, n_test=n_test)
    write_image_folder(root, {split: {c: list(s.images[s.labels == i]) for i, c in enumerate(data.classes)}
                              for split, s in (("train", data.train), ("test", data.test))})
    return root


def cifar10_jpeg_folder(root: Path, classes=CIFAR10_CLASSES[:5], per_split=(("train", 40), ("test", 8))) -> Path:
    """`train/<class>/*.jpg`, `test/<class>/*.jpg`: the first JPEGs of each class from the shared archive (by
    default 200 training and 40 test images); PNGs of `toy_data` when the archive is not there."""
    archive = shared_cifar10_archive()
    if not archive.is_file():
        return write_toy_folder(root, n_train=128, n_test=32)
    wanted = {(split, c): n for split, n in per_split for c in classes}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")  # cifar10/<split>/<class>/<file>
            key = tuple(parts[1:3])
            if member.isfile() and wanted.get(key, 0) > 0:
                wanted[key] -= 1
                (root / key[0] / key[1]).mkdir(parents=True, exist_ok=True)
                (root / key[0] / key[1] / parts[3]).write_bytes(tar.extractfile(member).read())
                if not any(wanted.values()):
                    break
    return root


def check_evaluation(learn, dls) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A trained Learner's evaluation, exact: `validate`'s loss and accuracy are the plain cross entropy and
    accuracy of `get_preds`' logits against the true labels of the image folder `dls` reads, and
    `get_preds(with_decoded=True)` gives their softmax and argmax. Returns (logits, targets, probabilities)."""
    import torch.nn.functional as F

    loss, acc = learn.validate()
    logits, targets = learn.get_preds(act=lambda x: x)
    assert targets.tolist() == [dls.vocab.o2i[p.parent.name] for p in dls.valid_ds.items]
    torch.testing.assert_close(torch.tensor(loss), F.cross_entropy(logits, targets), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(acc), (logits.argmax(1) == targets).float().mean())
    probs, targets2, decoded = learn.get_preds(with_decoded=True)
    torch.testing.assert_close(probs, F.softmax(logits, 1))
    assert torch.equal(decoded, probs.argmax(1)) and torch.equal(targets2, targets)
    return logits, targets, probs


def cancel_at_train():
    """A callback that cancels the fit as training starts (after the model surgery of before_fit)."""
    from fastai.callback.core import Callback, CancelFitException

    class CancelAtTrain(Callback):
        def before_train(self):
            raise CancelFitException

    return CancelAtTrain()


def learner(text: str, model: str = "resnet20", cbs=(), **overrides):
    """A Learner for recipe `text` on `toy_data()`: 1 epoch, bs 32, CPU (overrides may change them)."""
    from recipes.build import build_dataloaders, build_learner, build_model
    from recipes.parse import parse_recipe

    recipe = parse_recipe(text, **{"epochs": 1, "bs": 32, "device": "cpu", "model": model, **overrides})
    data = toy_data()
    return build_learner(recipe, build_dataloaders(recipe, data, torch.device("cpu")),
                         build_model(recipe, data.num_classes, data.channels), cbs=list(cbs))


def edited(cb, model):
    """Run a ModelSurgery callback's surgery on `model` outside a Learner (no optimizer to rebuild)."""
    cb.edit(model, cb.check(model))
    return model


def lr_per_batch(cb, epochs: int, n_iter: int) -> list[float]:
    """Fit a Linear model for `epochs` of `n_iter` batches with callback `cb`; the lr SGD held at each batch."""
    from fastai.callback.core import Callback, TrainEvalCallback
    from fastai.learner import Learner
    from fastai.optimizer import OptimWrapper

    from tricks.data.loaders import DeviceLoader, device_dataloaders

    images, labels = torch.zeros(8 * n_iter, 1, 2, 2, dtype=torch.uint8), torch.zeros(8 * n_iter, dtype=torch.long)
    dl = DeviceLoader(images, labels, bs=8, mean=torch.tensor([0.5]), std=torch.tensor([0.5]), drop_last=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    seen: list[float] = []

    class Spy(Callback):
        order = 80

        def before_batch(self):
            if self.training:
                seen.append(self.learn.opt.opt.param_groups[0]["lr"])

    learn = Learner(device_dataloaders(dl, dl.new(shuffle=False)), model, loss_func=torch.nn.CrossEntropyLoss(),
                    opt_func=lambda p, lr: OptimWrapper(opt=torch.optim.SGD(model.parameters(), lr=lr)),
                    cbs=[TrainEvalCallback(), cb, Spy()], default_cbs=False)
    learn.fit(epochs)
    return seen


def toy_learner(text, *cbs, epochs=1):
    """A Learner for recipe `text` on small toy data (bs 16: 4 train and 2 test batches an epoch), extra cbs."""
    from recipes.build import build_dataloaders, build_learner, build_model
    from recipes.parse import parse_recipe

    recipe = parse_recipe(text, epochs=epochs, bs=16, eval_bs=16, device="cpu")
    data = toy_data(n_train=64, n_test=32)
    torch.manual_seed(0)
    dls = build_dataloaders(recipe, data, torch.device("cpu"))
    return build_learner(recipe, dls, build_model(recipe, data.num_classes, data.channels), cbs=list(cbs))


class Spy(Callback):
    """Records, per batch: training?, the loss function in place, the targets and the prediction."""

    order = 99
    run_valid = True

    def __init__(self):
        self.rows = []

    def after_loss(self):
        self.rows.append(dict(training=self.learn.training, epoch=self.learn.epoch, loss_func=self.learn.loss_func,
                              x=self.learn.xb[0].clone(), y=self.learn.yb[0].clone(),
                              pred=self.learn.pred.detach().clone(), loss=self.learn.loss.detach().clone()))


class CancelAfter(Callback):
    """Cancels the fit after `n` training batches."""

    order = 100

    def __init__(self, n):
        self.n, self.seen = n, 0

    def after_batch(self):
        if self.learn.training:
            self.seen += 1
            if self.seen == self.n:
                raise CancelFitException()


def check_loss_restored(text):
    """The recipe's tricks swap the loss during training and put the original back after a full fit and
    after a cancelled one. Returns the loss function seen in training."""
    for cancel in (None, CancelAfter(2)):
        spy = Spy()
        learn = toy_learner(text, spy, *([cancel] if cancel else []))
        original = learn.loss_func
        learn.fit(1)
        assert learn.loss_func is original
        during = {r["loss_func"] for r in spy.rows if r["training"]}
        assert len(during) == 1 and original not in during
        if cancel:
            assert sum(r["training"] for r in spy.rows) == 2
    return during.pop()


def run_recipe(text, tmp_path, epochs=1):
    """`recipe run` of `text` on small toy data into `tmp_path/run`: its result, checked for the epochs."""
    from recipes.parse import parse_recipe
    from recipes.run import train

    result = train(parse_recipe(text, epochs=epochs, bs=32, device="cpu"), tmp_path / "run",
                   data=toy_data(n_train=64, n_test=32))
    assert result["epochs"] == epochs and 0.0 <= result["test_acc"] <= 100.0
    return result


def row(rid: str, recipe: str = "baseline", status: str = "measured", kind: str = "single", **options):
    """An ablation-table row (`bench.table.Row`) with one noted number, options as given."""
    from bench.table import Row

    return Row(id=rid, section=rid.split(".")[0], recipe=recipe, options=options, noted=(90.0,), kind=kind,
               status=status, why="", baseline=None)


def tiny_model(num_classes: int, seed: int = 0, pool: int = 4) -> torch.nn.Module:
    """A conv, BN, ReLU, `pool`x`pool` average pool and a linear layer, seeded: a model a fastai user's test fits in
    seconds."""
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(pool),
                         nn.Flatten(), nn.Linear(8 * pool * pool, num_classes))
