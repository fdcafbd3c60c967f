"""tricks.models: CIFAR ResNets v1/v2, Wide ResNets, timm models with stem options; all on CPU, pretrained=False."""
import pytest
import torch
from torch import nn

from tricks.errors import ConfigError
from tricks.models import MODELS, create_model, model_names


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bns(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def expected_params(n: int, widths, *, preact: bool, num_classes: int = 10, in_chans: int = 3, k_sc: int = 1) -> int:
    """Parameter count from the architecture description, layer by layer (conv: no bias, BN: 2 per channel)."""
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    stem_w, *stage_ws = widths
    total = conv(in_chans, stem_w, 3) + (0 if preact else bn(stem_w))  # v2 stem: plain conv
    cin = stem_w
    for s, w in enumerate(stage_ws):
        for i in range(n):
            stride = 2 if s > 0 and i == 0 else 1
            total += conv(cin, w, 3) + conv(w, w, 3)
            total += bn(cin) + bn(w) if preact else 2 * bn(w)  # v2: BN before each conv; v1: BN after
            if stride != 1 or cin != w:  # projection: v1 conv + BN, v2 conv only
                total += conv(cin, w, k_sc) + (0 if preact else bn(w))
            cin = w
    if preact:
        total += bn(cin)  # final BN-ReLU
    return total + cin * num_classes + num_classes  # fc


CIFAR = (16, 16, 32, 64)


def wrn_widths(k: int):
    return (16, 16 * k, 32 * k, 64 * k)


# ---------------------------------------------------------------- parameter counts


def test_resnet20_param_count_by_hand():
    # stem 432 + 32; stage 1: 3 x (2*2304 + 2*32) = 14016;
    # stage 2: 4608 + 9216 + 128 + (512 + 64) + 2 x (2*9216 + 128) = 51648;
    # stage 3: 18432 + 36864 + 256 + (2048 + 128) + 2 x (2*36864 + 256) = 205696; fc 650.
    assert n_params(create_model("resnet20", num_classes=10)) == 272474
    assert expected_params(3, CIFAR, preact=False) == 272474


@pytest.mark.parametrize("name,n,widths,preact", [
    ("resnet20", 3, CIFAR, False),
    ("resnet56", 9, CIFAR, False),
    ("preact_resnet20", 3, CIFAR, True),
    ("preact_resnet56", 9, CIFAR, True),
    ("wrn16_4", 2, wrn_widths(4), True),
    ("wrn10_1", 1, wrn_widths(1), True),
])
def test_param_counts_match_formula(name, n, widths, preact):
    assert n_params(create_model(name, num_classes=10)) == expected_params(n, widths, preact=preact)


def test_wrn28_10_param_count():
    model = create_model("wrn28_10", num_classes=10)
    assert n_params(model) == expected_params(4, wrn_widths(10), preact=True) == 36_479_194


def test_conv3x3_shortcut_param_count():
    model = create_model("resnet20", num_classes=10, shortcut="conv3x3")
    assert n_params(model) == expected_params(3, CIFAR, preact=False, k_sc=3)


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet20", "wrn10_2"])
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("size", [28, 32])
def test_output_shape(name, in_chans, size):
    model = create_model(name, num_classes=7, in_chans=in_chans).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_chans, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name,n,projections", [
    ("resnet20", 3, 2), ("resnet32", 5, 2), ("resnet110", 18, 2),
    ("preact_resnet44", 7, 2), ("wrn16_4", 2, 3), ("wrn10_1", 1, 2),
])
def test_blocks_and_convs(name, n, projections):
    model = create_model(name, num_classes=10)
    blocks = list(model.blocks())
    assert len(model.stages) == 3 and all(len(stage) == n for stage in model.stages)
    assert len(blocks) == 3 * n
    assert len(convs(model)) == 1 + 2 * 3 * n + projections
    for b in blocks:
        for attr in ("conv1", "bn1", "conv2", "bn2", "shortcut"):
            assert isinstance(getattr(b, attr), nn.Module)
        assert isinstance(b.shortcut, (nn.Sequential, nn.Identity))
    assert isinstance(model.fc, nn.Linear) and isinstance(model.pool[0], nn.AdaptiveAvgPool2d)


def test_v1_v2_layout():
    v1 = create_model("resnet20", num_classes=10)
    v2 = create_model("preact_resnet20", num_classes=10)
    assert not hasattr(v1, "final_act")
    assert isinstance(v2.final_act[0], nn.BatchNorm2d) and isinstance(v2.final_act[1], nn.ReLU)
    assert [type(m) for m in v1.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in v2.stem] == [nn.Conv2d]
    assert all(isinstance(b.act_out, nn.ReLU) for b in v1.blocks())
    assert not any(hasattr(b, "act_out") for b in v2.blocks())
    # stride 2 at the start of stages 2 and 3 only
    assert [b.conv1.stride for b in v1.blocks()] == [(1, 1)] * 3 + [(2, 2), (1, 1), (1, 1)] * 2


@pytest.mark.parametrize("shortcut,k", [("conv1x1", 1), ("conv3x3", 3)])
def test_shortcut_kind(shortcut, k):
    v1 = create_model("resnet20", num_classes=10, shortcut=shortcut)
    v2 = create_model("preact_resnet20", num_classes=10, shortcut=shortcut)
    for model, has_bn in ((v1, True), (v2, False)):
        proj = [b.shortcut for b in model.blocks() if not isinstance(b.shortcut, nn.Identity)]
        assert len(proj) == 2
        for sc in proj:
            assert sc[0].kernel_size == (k, k) and sc[0].stride == (2, 2)
            assert isinstance(sc[-1], nn.BatchNorm2d) == has_bn
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_init():
    model = create_model("resnet20", num_classes=10)
    for m in bns(model):
        assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    w = model.stem[0].weight  # kaiming fan_out: std sqrt(2 / (16 * 9))
    assert w.std().item() == pytest.approx((2 / (16 * 9)) ** 0.5, rel=0.3)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet20", "wrn10_2"])
def test_zero_init_last(name):
    on = create_model(name, num_classes=10, zero_init_last=True)
    off = create_model(name, num_classes=10)
    assert all(torch.all(b.bn2.weight == 0) for b in on.blocks())
    assert all(torch.all(b.bn2.weight != 0) for b in off.blocks())
    assert all(torch.all(b.bn1.weight == 1) for b in on.blocks())


def test_v1_zero_init_last_blocks_start_as_identity_plus_relu():
    model = create_model("resnet20", num_classes=10, zero_init_last=True).eval()
    block = model.stages[0][0]
    x = torch.randn(2, 16, 8, 8)
    assert torch.allclose(block(x), torch.relu(x))


def test_preact_zero_init_last_kills_the_branches():
    # The notes' definition (gamma of the BN before the last conv): ReLU input is exactly 0, no gradient.
    model = create_model("preact_resnet20", num_classes=10, zero_init_last=True)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    for b in model.blocks():
        assert torch.all(b.conv1.weight.grad == 0) and torch.all(b.bn2.weight.grad == 0)
    assert model.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet20", "wrn10_2", "timm:resnet18"])
def test_bn_momentum(name):
    model = create_model(name, num_classes=10, bn_momentum=0.01)
    assert bns(model) and all(m.momentum == 0.01 for m in bns(model))
    assert all(m.momentum == 0.1 for m in bns(create_model(name, num_classes=10)))


def test_wrn_dropout():
    model = create_model("wrn16_4", num_classes=10, drop_rate=0.3)
    drops = [b.drop for b in model.blocks()]
    assert len(drops) == 6 and all(isinstance(d, nn.Dropout) and d.p == 0.3 for d in drops)
    plain = create_model("wrn16_4", num_classes=10)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())


# ---------------------------------------------------------------- names and errors


def test_model_names_and_meta():
    names = model_names()
    for n in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "preact_resnet20",
              "preact_resnet110", "wrn28_10", "wrn<depth>_<width>", "timm:<name>"):
        assert n in names
    meta = MODELS.meta("preact_resnet56")
    assert "1603.05027" in meta["paper"] and meta["description"]
    assert "1605.07146" in MODELS.meta("wrn28_10")["paper"]


@pytest.mark.parametrize("name,near", [
    ("resnet2", "resnet20"), ("preact_resnet21", "preact_resnet20"), ("wrn28", "wrn28_10"),
    ("timm:resnet1800", "resnet18"),
])
def test_unknown_names(name, near):
    with pytest.raises(ConfigError, match=f"'{near}'"):
        create_model(name, num_classes=10)


@pytest.mark.parametrize("name,match", [
    ("wrn30_10", "6n\\+4"), ("wrn4_1", "6n\\+4"), ("wrn29_2", "6n\\+4"), ("wrn16_0", "width"),
])
def test_invalid_wrn(name, match):
    with pytest.raises(ConfigError, match=match):
        create_model(name, num_classes=10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(shortcut="conv5x5"), "conv1x1, conv3x3"),
    (dict(bn_momentum=1.5), "bn_momentum"),
    (dict(bn_momentum=-0.1), "bn_momentum"),
    (dict(bn_momentum=True), "bn_momentum"),
    (dict(stem="conv7x7"), "conv3x3s2-nomaxpool"),
    (dict(drop_rate=1.0), "drop_rate"),
    (dict(zero_init_last=1), "zero_init_last"),
    (dict(num_classes=0), "num_classes"),
    (dict(in_chans=0), "in_chans"),
])
def test_bad_values(kwargs, match):
    kwargs = {"num_classes": 10, **kwargs}
    with pytest.raises(ConfigError, match=match):
        create_model("resnet20", **kwargs)


@pytest.mark.parametrize("name,kwargs,option", [
    ("resnet20", dict(stem="conv3x3s2"), "stem"),
    ("preact_resnet20", dict(drop_rate=0.1), "drop_rate"),
    ("wrn16_4", dict(stem="conv3x3s1-nomaxpool"), "stem"),
    ("timm:test_vit", dict(shortcut="conv3x3"), "shortcut"),
    ("timm:test_efficientnet", dict(shortcut="conv3x3"), "shortcut"),
    ("timm:test_efficientnet", dict(zero_init_last=True), "zero_init_last"),
    ("timm:test_vit", dict(bn_momentum=0.01), "bn_momentum"),
])
def test_option_not_applying(name, kwargs, option):
    with pytest.raises(ConfigError, match=f"{option}=.*'{name}'") as err:
        create_model(name, num_classes=10, **kwargs)
    assert "\n" not in str(err.value)


def test_defaults_are_accepted_everywhere():
    for name in ("resnet20", "wrn10_1", "timm:test_efficientnet", "timm:test_vit"):
        create_model(name, num_classes=10, shortcut="conv1x1", stem="default", drop_rate=0.0,
                     zero_init_last=False, bn_momentum=None)


# ---------------------------------------------------------------- timm


def test_timm_zero_init_last_passed_explicitly():
    on = create_model("timm:resnet18", num_classes=10, zero_init_last=True)
    off = create_model("timm:resnet18", num_classes=10)  # timm's own default would be True
    assert all(torch.all(b.bn2.weight == 0) for stage in (on.layer1, on.layer4) for b in stage)
    assert all(torch.all(b.bn2.weight == 1) for stage in (off.layer1, off.layer4) for b in stage)


@pytest.mark.parametrize("stem,stride,maxpool,feat32,feat64", [
    ("default", 2, True, 1, 2),
    ("conv3x3s2", 2, True, 1, 2),
    ("conv3x3s2-nomaxpool", 2, False, 2, 4),
    ("conv3x3s1-nomaxpool", 1, False, 4, 8),
])
def test_timm_resnet18_stems(stem, stride, maxpool, feat32, feat64):
    model = create_model("timm:resnet18", num_classes=10, stem=stem).eval()
    k = 7 if stem == "default" else 3
    assert model.conv1.kernel_size == (k, k) and model.conv1.stride == (stride, stride)
    assert model.conv1.in_channels == 3 and model.conv1.out_channels == 64
    assert isinstance(model.maxpool, nn.MaxPool2d if maxpool else nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 512, feat32, feat32)
        assert model.forward_features(torch.randn(1, 3, 64, 64)).shape[-1] == feat64


def test_timm_stem_in_chans():
    model = create_model("timm:resnet18", num_classes=10, in_chans=1, stem="conv3x3s1-nomaxpool")
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_timm_deep_stem_resnet26d():
    model = create_model("timm:resnet26d", num_classes=10, stem="conv3x3s1-nomaxpool").eval()
    first = model.conv1[0]
    assert first.kernel_size == (3, 3) and first.stride == (1, 1) and first.out_channels == 32
    assert isinstance(model.conv1, nn.Sequential) and isinstance(model.maxpool, nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert model.forward_features(torch.randn(2, 3, 32, 32)).shape[-1] == 4


@pytest.mark.parametrize("name", ["timm:mobilenetv3_small_050", "timm:test_efficientnet"])
def test_timm_non_resnet(name):
    model = create_model(name, num_classes=10, stem="conv3x3s2", drop_rate=0.2).eval()
    assert model.conv_stem.kernel_size == (3, 3) and model.conv_stem.stride == (2, 2)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match=f"conv3x3s1-nomaxpool.*max-pool.*'{name}'"):
        create_model(name, num_classes=10, stem="conv3x3s1-nomaxpool")


def test_timm_stem_refused_for_patch_embedding():
    with pytest.raises(ConfigError, match="conv3x3s2.*'timm:test_vit'.*stride-2"):
        create_model("timm:test_vit", num_classes=10, stem="conv3x3s2")


# ---------------------------------------------------------------- timm: S4's 3x3 shortcut, S5's pre-act stem

IMAGENET18 = (64, 64, 128, 256, 512)  # ResNet-18: stem, 4 stages of 2 basic blocks


def shortcut_convs(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if ".downsample." in n and isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("shortcut,k", [("conv1x1", 1), ("conv3x3", 3)])
def test_timm_resnet18_shortcut(shortcut, k):
    model = create_model("timm:resnet18", num_classes=10, stem="conv3x3s1-nomaxpool", shortcut=shortcut)
    sc = shortcut_convs(model)
    assert sorted(sc) == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    for name, conv in sc.items():
        assert type(conv) is nn.Conv2d
        assert conv.kernel_size == (k, k) and conv.stride == (2, 2) and conv.padding == (k // 2, k // 2)
        assert conv.bias is None and conv.out_channels == 2 * conv.in_channels
        block = model.get_submodule(name.rsplit(".downsample.", 1)[0])
        assert [type(m) for m in block.downsample] == [nn.Conv2d, nn.BatchNorm2d]  # norm kept
    assert all(b.downsample is None for b in (model.layer1[0], model.layer1[1], model.layer4[1]))
    # exactly the architecture's count: 3x3 stride-1 stem + BN, 8 basic blocks, projections conv (k) + BN, fc
    assert n_params(model) == expected_params(2, IMAGENET18, preact=False, k_sc=k)
    assert n_params(model) == (12_550_218 if k == 3 else 11_173_962)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0 for conv in sc.values())
    with torch.no_grad():
        assert model.eval().forward_features(x).shape == (2, 512, 4, 4)


def test_timm_shortcut_init_and_avg_down():
    model = create_model("timm:resnet18", num_classes=10, shortcut="conv3x3")
    w = model.layer2[0].downsample[0].weight  # kaiming fan_out: std sqrt(2 / (128 * 9))
    assert w.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.1)
    deep = create_model("timm:resnet26d", num_classes=10, shortcut="conv3x3")  # avg-down: pool, conv, BN
    ds = deep.layer2[0].downsample
    assert [type(m) for m in ds] == [nn.AvgPool2d, nn.Conv2d, nn.BatchNorm2d]
    assert ds[1].kernel_size == (3, 3) and ds[1].stride == (1, 1) and ds[1].padding == (1, 1)
    assert deep(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("stem,pool,feat32", [
    ("default", True, 1), ("conv3x3s2", True, 1), ("conv3x3s2-nomaxpool", False, 2), ("conv3x3s1-nomaxpool", False, 4),
])
def test_timm_resnetv2_18_stems(stem, pool, feat32):
    model = create_model("timm:resnetv2_18", num_classes=10, stem=stem)
    k, stride = (7, 2) if stem == "default" else (3, 1 if "s1" in stem else 2)
    assert list(model.stem._modules) == ["conv", "pool"]
    assert type(model.stem.conv) is nn.Conv2d
    assert model.stem.conv.kernel_size == (k, k) and model.stem.conv.stride == (stride, stride)
    assert model.stem.conv.in_channels == 3 and model.stem.conv.out_channels == 64
    assert type(model.stem.pool) is (nn.MaxPool2d if pool else nn.Identity)
    with torch.no_grad():
        assert model.eval().forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 512, feat32, feat32)


@pytest.mark.parametrize("shortcut,k", [("conv1x1", 1), ("conv3x3", 3)])
def test_timm_resnetv2_18_preact_32x32(shortcut, k):
    """S5's model: timm's pre-activation ResNet-18 with S3's 3x3 stride-1 stem and no max-pool."""
    model = create_model("timm:resnetv2_18", num_classes=10, stem="conv3x3s1-nomaxpool", shortcut=shortcut)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert isinstance(model.stem.pool, nn.Identity)
    sc = shortcut_convs(model)
    assert sorted(sc) == [f"stages.{i}.blocks.0.downsample.conv" for i in (1, 2, 3)]
    for name, conv in sc.items():
        assert type(conv) is nn.Conv2d and conv.kernel_size == (k, k) and conv.stride == (2, 2)
        assert isinstance(model.get_submodule(name[: -len("conv")] + "norm"), nn.Identity)  # pre-act: no norm
    # pre-act: plain-conv stem, BN before each conv, projections conv only, final BN, fc
    assert n_params(model) == expected_params(2, IMAGENET18, preact=True, k_sc=k)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert model.stem.conv.weight.grad.abs().sum() > 0


def test_timm_resnetv2_18_options_with_bn_momentum_and_zero_init_last():
    model = create_model("timm:resnetv2_18", num_classes=10, stem="conv3x3s1-nomaxpool", bn_momentum=0.01,
                         zero_init_last=True)  # timm's pre-act zero_init_last zeros conv2
    assert bns(model) and all(m.momentum == 0.01 for m in bns(model))
    assert all(torch.all(b.conv2.weight == 0) for stage in model.stages for b in stage.blocks)


def test_timm_bit_fixed_stem_pad_goes_with_the_pool_and_std_conv_shortcut_is_refused():
    model = create_model("timm:resnetv2_50x1_bit", num_classes=10, stem="conv3x3s1-nomaxpool").eval()
    assert isinstance(model.stem.pad, nn.Identity) and isinstance(model.stem.pool, nn.Identity)
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 4
    with pytest.raises(ConfigError, match="shortcut='conv3x3' cannot handle model 'timm:resnetv2_50x1_bit'.*StdConv2d"):
        create_model("timm:resnetv2_50x1_bit", num_classes=10, shortcut="conv3x3")
