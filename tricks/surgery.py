"""Model surgery shared by the tricks that change the network: find the blocks, the last BN of each
residual branch, the classifier and the pooled features of the models those tricks support, record
every change so it can be undone, and a Callback base that edits the model once at `before_fit`.

Supported: the CIFAR ResNets of `tricks.models.cifar_resnet` (v1 'resnet<d>', pre-activation
'preact_resnet<d>', 'wrn<d>_<k>') and timm ResNets (`timm.models.resnet.ResNet` with BasicBlock or
Bottleneck blocks: 'timm:resnet18', 'timm:resnet50', ...). Any other model is a ConfigError, except for
the tricks that only need the classifier or the activations (finalbn, fcdrop, rotation, leakyrelu,
swish): they take any model whose classifier `classifier_path` finds (timm's get_classifier, torchvision's
`fc`, a final nn.Linear as fastai's XResNet has), the pooled features then being the classifier's input.

Where things are (the last BN of a branch is what Goyal et al. 2017 and timm's `zero_init_last` zero):

| family | blocks | last BN of a branch | activation before the last conv | classifier |
|---|---|---|---|---|
| v1 | `model.blocks()` | `bn2` | `act1` | `model.fc` |
| pre-activation (v2, WRN) | `model.blocks()` | `bn2` (before the last conv, see `cifar_resnet`) | `act2` (then `drop`) | `model.fc` |
| timm BasicBlock | `layer1..4` | `bn2` | `act1` | `pretrained_cfg['classifier']` ('fc') |
| timm Bottleneck | `layer1..4` | `bn3` | `act2` | idem |

Pooled features (the classifier's input) are `model.pool(model.forward_features(x))` for the CIFAR nets
and `model.global_pool(model.forward_features(x))` for timm (timm's own drop_rate dropout left out).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from fastai.callback.core import Callback
from timm.models.resnet import BasicBlock as TimmBasicBlock
from timm.models.resnet import Bottleneck as TimmBottleneck
from timm.models.resnet import ResNet as TimmResNet
from torch import nn

from tricks.errors import ConfigError
from tricks.models.cifar_resnet import CifarResNet

SUPPORTED = ("the CIFAR ResNets (resnet<d>, preact_resnet<d>, wrn<d>_<k>) and timm ResNets "
             "(timm:resnet18, timm:resnet50, ...)")
FAMILIES = ("v1", "preact", "timm")
_MISSING = object()


def family(model: nn.Module, trick: str) -> str:
    """'v1', 'preact' or 'timm'; a one-line ConfigError naming the model class for anything else."""
    if isinstance(model, CifarResNet):
        return "preact" if model.preact else "v1"
    if isinstance(model, TimmResNet):
        return "timm"
    raise ConfigError(f"trick '{trick}' cannot change model {type(model).__name__}; it supports {SUPPORTED}")


def blocks(model: nn.Module) -> Iterator[nn.Module]:
    """Every residual block, in forward order."""
    if isinstance(model, CifarResNet):
        yield from model.blocks()
    else:
        yield from (m for m in model.modules() if isinstance(m, (TimmBasicBlock, TimmBottleneck)))


def last_bn(block: nn.Module) -> nn.BatchNorm2d:
    """The last BN of the residual branch (the one zero-init-last-gamma zeros)."""
    return block.bn3 if isinstance(block, TimmBottleneck) else block.bn2


def act_before_last_conv(block: nn.Module) -> str:
    """Name of the activation module whose output feeds the branch's last conv (v1, timm)."""
    return "act2" if isinstance(block, TimmBottleneck) else "act1"


class ClassifierWrap(nn.Sequential):
    """The nn.Sequential a trick wraps a classifier in (fcdrop, finalbn): the next trick finds the whole."""


CLASSIFIER_LOOKED_FOR = ("timm's get_classifier() (pretrained_cfg['classifier']), torchvision's `fc` nn.Linear, "
                         "or an nn.Linear as the model's last module")


def _classifier_path(model: nn.Module) -> str | None:
    if isinstance(model, CifarResNet):
        return "fc"
    path = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") if hasattr(model, "get_classifier") else None
    if path is None and isinstance(getattr(model, "fc", None), (nn.Linear, ClassifierWrap)):
        path = "fc"  # torchvision's ResNets, Wide ResNets, ...
    if path is not None:
        head = model.get_submodule(path)
        return path if isinstance(head, (nn.Linear, ClassifierWrap)) else None
    leaves = [n for n, m in model.named_modules() if n and next(m.children(), None) is None
              and not n.startswith("rotation_head")]
    if not leaves:
        return None
    path = leaves[-1]  # the last module: an nn.Linear, or the last module of a trick's ClassifierWrap
    while "." in path and isinstance(model.get_submodule(path.rpartition(".")[0]), ClassifierWrap):
        path = path.rpartition(".")[0]
    return path if isinstance(model.get_submodule(path), (nn.Linear, ClassifierWrap)) else None


def classifier_path(model: nn.Module, trick: str = "?") -> str:
    """Dotted path of the final classifier: 'fc' (CIFAR nets, torchvision), timm's `pretrained_cfg['classifier']`
    ('fc', 'head.fc'), else the model's last module if it is an nn.Linear (fastai's XResNet: '11'); once a
    trick wrapped it, the path of the wrap. A one-line ConfigError naming the model class otherwise."""
    path = _classifier_path(model)
    if path is None:
        raise ConfigError(f"trick '{trick}' cannot find the classifier of model {type(model).__name__}; "
                          f"looked for {CLASSIFIER_LOOKED_FOR}")
    return path


def classifier_family(model: nn.Module, trick: str) -> str:
    """For the tricks that only need the classifier: the model's family if it has one, else 'any' once the
    classifier is found (a ConfigError if not)."""
    classifier_path(model, trick)
    if isinstance(model, (CifarResNet, TimmResNet)):
        return family(model, trick)
    return "any"


def wrap_classifier(edits: "Edits", model: nn.Module, wrap: Callable[[nn.Module], nn.Module]) -> None:
    """Replace the classifier by `wrap(classifier)`, recorded in `edits`."""
    path = classifier_path(model)
    parent, _, name = path.rpartition(".")
    edits.set(model.get_submodule(parent) if parent else model, name, wrap(model.get_submodule(path)))


def classifier_linear(model: nn.Module) -> nn.Linear:
    """The classifier's nn.Linear, also when a trick has wrapped it."""
    head = model.get_submodule(classifier_path(model))
    return [m for m in head.modules() if isinstance(m, nn.Linear)][-1]


def num_features(model: nn.Module) -> int:
    """Width of the pooled features (the classifier's in_features)."""
    if isinstance(model, (CifarResNet, TimmResNet)):
        return model.num_features
    return classifier_linear(model).in_features


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, num_features): the globally pooled features of input x (any other model: the classifier's input,
    caught by a forward pre-hook on a forward pass of x)."""
    if isinstance(model, (CifarResNet, TimmResNet)):
        pool = model.global_pool if isinstance(model, TimmResNet) else model.pool
        return pool(model.forward_features(x))
    seen = []
    hook = model.get_submodule(classifier_path(model)).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        model(x)
    finally:
        hook.remove()
    return seen[0]


def like(model: nn.Module, module: nn.Module) -> nn.Module:
    """`module` on the model's device, in its floating dtype and in its train/eval mode."""
    p = next(model.parameters())
    return module.to(device=p.device, dtype=p.dtype).train(model.training)


class Edits:
    """What a trick changed, so it can be put back: attributes set (modules, momenta) and tensors overwritten."""

    def __init__(self):
        self.steps: list[Callable[[], None]] = []

    def set(self, obj: Any, name: str, value: Any) -> Any:
        """setattr(obj, name, value); returns the old value (None if there was none)."""
        old = getattr(obj, name, _MISSING)
        setattr(obj, name, value)
        self.steps.append(lambda: delattr(obj, name) if old is _MISSING else setattr(obj, name, old))
        return None if old is _MISSING else old

    def keep(self, tensor: torch.Tensor) -> torch.Tensor:
        """Remember the values of `tensor` before it is overwritten in place."""
        saved = tensor.detach().clone()
        self.steps.append(lambda: tensor.data.copy_(saved))
        return tensor

    def commit(self) -> None:
        """Forget the changes: they are now part of the model."""
        self.steps.clear()

    def undo(self) -> None:
        """Put everything back, last change first."""
        while self.steps:
            self.steps.pop()()


def rebuild_optimizer(learn) -> None:
    """`learn.create_opt()` for the edited model, keeping the lr that `fit` set (create_opt starts from `learn.lr`)."""
    lr = learn.opt.hypers[-1]["lr"] if learn.opt is not None else None
    learn.create_opt()
    if lr is not None:
        learn.opt.set_hyper("lr", lr)


class ModelSurgery(Callback):
    """Base of the model-changing tricks: `edit` the model once at before_fit, undo on cancel.

    Subclasses set `trick` (their registered name, for messages), `order`, and `rebuild_opt` when they
    add or remove parameters (the optimizer fastai made before `before_fit` is then rebuilt), and
    write `check(model)` (raise ConfigError; returns the family) and `edit(model, family)` using
    `self.edits` for every change. A second fit on the same, already edited model changes nothing.
    A fit cancelled before its first training batch has completed (say another callback refuses at
    before_fit) puts the model back; once a batch has trained, or the fit has ended, the changes are
    part of the trained model and stay (early stopping, which cancels the fit, keeps a working model).
    `check` may be called before fit (e.g. by the trainer) to fail early with a one-line message.
    """

    trick = "?"
    rebuild_opt = False

    def __init__(self):
        super().__init__()
        self.edits = Edits()
        self.edited: nn.Module | None = None

    def check(self, model: nn.Module) -> str:
        return family(model, self.trick)

    def edit(self, model: nn.Module, kind: str) -> None:
        raise NotImplementedError

    def before_fit(self):
        model = self.learn.model
        if self.edited is model:
            return
        kind = self.check(model)
        self.edit(model, kind)
        self.edited = model
        if self.rebuild_opt:
            rebuild_optimizer(self.learn)

    def after_cancel_fit(self):
        if not self.edits.steps or self.learn.train_iter > 0:
            return
        self.edits.undo()
        self.edited = None
        if self.rebuild_opt:
            rebuild_optimizer(self.learn)

    def after_fit(self):
        self.edits.commit()  # a later cancel must not undo what training has built on


def check_surgery(model: nn.Module, callbacks: list[Callback], *, edit: bool = False) -> None:
    """Check `model` against every model-surgery trick in `callbacks`, in their order: the first that cannot
    change it raises its one-line ConfigError before anything trains. With `edit`, each also makes its change
    (as its before_fit would): the model a fit of these tricks trains."""
    for trick in callbacks:
        if isinstance(trick, ModelSurgery):
            kind = trick.check(model)
            if edit:
                trick.edit(model, kind)
