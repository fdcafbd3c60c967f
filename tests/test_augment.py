import pytest
import torch
import torch.nn.functional as F

from tricks.data.augment import BatchAugment, normalize, random_crop, random_flip, random_resized_crop


def images(b=64, c=3, h=8, w=8, seed=0):
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_random_crop_is_a_window_of_the_padded_image(mode):
    x, pad = images(), 4
    out = random_crop(x, pad, torch.Generator().manual_seed(1), mode)
    padded = F.pad(x.float(), (pad,) * 4, mode="constant" if mode == "zeros" else "reflect").to(torch.uint8)
    assert out.shape == x.shape and out.dtype == torch.uint8
    offsets = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                 if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert len(found) == 1  # random images: exactly one window matches
        offsets.add(found[0])
    assert len(offsets) > 30  # offsets differ per image, not one crop for the batch


def test_random_crop_without_pad_is_identity():
    x = images()
    assert random_crop(x, 0, torch.Generator()) is x


def test_random_flip_flips_some_images_and_keeps_the_rest():
    x = images()
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54


def test_normalize_exact():
    x = images(4, 3, 2, 2)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    expected = (x.double() / 255 - mean.double()[:, None, None]) / std.double()[:, None, None]
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_resized_crop_of_the_whole_image_is_identity():
    x = images()
    out = random_resized_crop(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(out, x.float(), atol=1e-3, rtol=0)


def test_resized_crop_zooms_in():
    x = images(16, 3, 32, 32)
    out = random_resized_crop(x, torch.Generator().manual_seed(0), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert out.shape == (16, 3, 32, 32)
    # a 16x16 box blown up to 32x32: neighbouring output pixels repeat input values, so it is smoother
    assert (out[..., 1:] - out[..., :-1]).abs().mean() < (x[..., 1:].float() - x[..., :-1].float()).abs().mean() / 1.5


def test_batch_augment_is_seeded():
    aug = BatchAugment(crop_pad=4, flip=True, resize_crop=True)
    x = images()
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
