"""channeldrop: k ~ U{0..max} random channels of each training image zeroed; evaluation untouched."""
import pytest
import torch
from fastai.callback.core import Callback

from recipes.parse import parse_recipe
from recipes.run import train
from tricks.channel_drop import channel_drop
from fixtures import toy_data


def zeroed(x: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: which channels of each image are all zero."""
    return (x.flatten(2) == 0).all(2)


@pytest.mark.parametrize("max_channels", [1, 2])
def test_at_most_max_channels_zeroed_and_the_rest_untouched(max_channels):
    x = torch.rand(3000, 3, 4, 4) + 0.5  # no channel is zero before
    y = channel_drop(x, max_channels, torch.Generator().manual_seed(0))
    dropped = zeroed(y)
    counts = dropped.sum(1)
    assert counts.max().item() == max_channels
    assert set(counts.tolist()) == set(range(max_channels + 1))  # every k in 0..max happens
    # k is uniform on {0..max}: each value about 1/(max+1) of the images
    freq = torch.bincount(counts, minlength=max_channels + 1).float() / len(x)
    assert torch.allclose(freq, torch.full_like(freq, 1 / (max_channels + 1)), atol=0.04)
    # the channels are uniform: each is dropped with probability E[k]/C = (max/2)/3
    assert torch.allclose(dropped.float().mean(0), torch.full((3,), max_channels / 6), atol=0.04)
    keep = ~dropped
    assert torch.equal(y.transpose(0, 1)[keep.T], x.transpose(0, 1)[keep.T])  # kept channels exactly as before


def test_max_above_channels_drops_at_most_every_channel():
    x = torch.rand(2000, 2, 3, 3) + 0.5
    counts = zeroed(channel_drop(x, 5, torch.Generator().manual_seed(1))).sum(1)
    assert set(counts.tolist()) == {0, 1, 2}


def test_same_generator_same_result():
    x = torch.randn(16, 3, 8, 8)
    a = channel_drop(x, 2, torch.Generator().manual_seed(3))
    b = channel_drop(x, 2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


class Inputs(Callback):
    """Records which channels are all zero in every batch the model sees (train and test)."""

    order = 15  # after channeldrop (10)

    def before_fit(self):
        self.train_zeros, self.test_zeros = [], []

    def before_batch(self):
        (self.train_zeros if self.training else self.test_zeros).append(zeroed(self.learn.xb[0]))


def test_trains_with_drops_only_in_training(tmp_path):
    spy = Inputs()
    recipe = parse_recipe("baseline+channeldrop:max=2", epochs=1, bs=32, eval_bs=32, device="cpu")
    assert recipe.tricks == (("channeldrop", (("max", 2),)),)
    result = train(recipe, tmp_path / "run", data=toy_data(), callbacks=lambda stats: [spy])
    assert result["epochs"] == 1 and 0.0 <= result["test_acc"] <= 100.0
    train_counts = torch.cat(spy.train_zeros).sum(1)
    assert train_counts.max().item() == 2 and (train_counts == 0).any()
    assert len(spy.test_zeros) == 2 and not torch.cat(spy.test_zeros).any()  # no channel dropped in evaluation
