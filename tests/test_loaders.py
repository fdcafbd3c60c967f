import torch

from tricks.data.augment import BatchAugment
from tricks.data.loaders import DeviceLoader, device_dataloaders


def loader(n=100, bs=32, **kw):
    images = torch.arange(n, dtype=torch.uint8).repeat_interleave(4).reshape(n, 1, 2, 2)
    labels = torch.arange(n)
    return DeviceLoader(images, labels, bs=bs, mean=torch.tensor([0.0]), std=torch.tensor([1 / 255]), **kw)


def test_test_loader_yields_every_image_once_in_order():
    dl = loader()
    batches = list(dl)
    assert len(dl) == len(batches) == 4
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels, torch.arange(100))
    # normalisation with mean 0, std 1/255 gives back the pixel values as floats
    x0, y0 = batches[0]
    assert x0.dtype == torch.float32 and torch.equal(x0[:, 0, 0, 0], y0.float())


def test_train_loader_shuffles_per_epoch_and_drops_the_last_partial_batch():
    dl = loader(shuffle=True, drop_last=True, seed=5)
    assert len(dl) == 3
    e1 = torch.cat([y for _, y in dl])
    e2 = torch.cat([y for _, y in dl])
    assert len(e1) == 96 and len(set(e1.tolist())) == 96
    assert not torch.equal(e1, e2)
    same_seed = torch.cat([y for _, y in loader(shuffle=True, drop_last=True, seed=5)])
    assert torch.equal(e1, same_seed)


def test_drop_last_keeps_data_smaller_than_a_batch():
    dl = loader(n=10, bs=32, shuffle=True, drop_last=True)
    assert len(dl) == 1 and len(next(iter(dl))[1]) == 10


def test_augmentation_applies_to_images_not_labels():
    dl = loader(augment=BatchAugment(crop_pad=1, flip=True))
    x, y = next(iter(dl))
    assert torch.equal(y, torch.arange(32))
    # each 2x2 image is constant, so a padded crop holds only its value and zeros
    for img, label in zip(x, y):
        assert set(img.unique().tolist()) <= {0.0, float(label)}


def test_new_and_fastai_dataloaders():
    train = loader(shuffle=True, drop_last=True)
    valid = train.new(shuffle=False, drop_last=False)
    assert not valid.shuffle and len(valid) == 4
    dls = device_dataloaders(train, valid)
    assert dls.train is train and dls.valid is valid and dls.device == torch.device("cpu")
