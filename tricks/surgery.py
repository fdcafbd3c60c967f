"""Model surgery shared by the tricks that change the network: one description per model family of where its
residual blocks, the last BN and last conv of each residual branch, the final BN of a pre-activation net, the
classifier and the pooled features are; every change recorded so it can be undone; and a Callback base that
edits the model once at `before_fit`.

The families (`MODEL_FAMILIES`, one `tricks.models.family.Family` each; `family(model)` finds a model's) are each
described, beside the model's factory, in one file of tricks/models, whose docstring says where each thing is:
`cifar_resnet` (v1 `resnet<d>`; pre-activation `preact_resnet<d>`, `wrn<d>_<k>`), `timm_resnet` (timm's ResNet),
`timm_resnetv2` (timm's pre-activation ResNetV2 with BatchNorm), `fastai_xresnet` (fastai's XResNet),
`torchvision_resnet` (torchvision's ResNet). Described here, from the body's family: a model fastai's
`vision_learner(dls, arch)` built, nn.Sequential(body, head), the body `model[0]` (fastai's XResNet and torchvision's
ResNets cut into an nn.Sequential; a timm name: `TimmBody`, its timm model `model[0].model`): the blocks, last BNs
and convs of the body's family, found inside it; the final BN `0.model.norm` for timm's ResNetV2, else none; the
classifier the head's last nn.Linear (`1.8`); the pooled features its input (a forward pre-hook).

The last BN of a branch is what Goyal et al. 2017 and timm's `zero_init_last` zero in post-activation blocks,
and in the pre-activation blocks the BN before the last conv, as `cifar_resnet` defines it for the notes'
'pre-act with last-gamma' (for timm's ResNetV2 too: its own zero_init_last zeros the last conv instead).

What the structural tricks change, the same way in every family:

| trick | change | `model.pth` keys |
|---|---|---|
| resdrop | an `nn.Dropout` child `resdrop` on the branch's last conv, applied to that conv's input by a forward pre-hook (`tricks.dropout.drop_conv_input`) | unchanged (a dropout has no parameters; the hook is no key) |
| lastgamma | the last BN's `weight` filled with 0 or 1 | unchanged |
| lastbn (pre-activation families) | the final BN replaced, its activation kept | the final BN's keys gone |
| finalbn, fcdrop | the classifier wrapped as `ClassifierWrap(BN, fc)`, `(fc, BN)`, `(Dropout, fc)` or `(fc, Dropout)` | the classifier's become `<fc>.0.*` / `<fc>.1.*` |
| rotation | `model.rotation_head`, a `SideLinear` | `rotation_head.weight`, `rotation_head.bias` added |
| leakyrelu, swish | every `nn.ReLU` module replaced | unchanged |

The dropout goes on the conv rather than on the activation before it because not every family has an
activation module of its own there: torchvision's blocks call one `relu` module before the last conv and
again after the addition. A forward pre-hook is kept by `copy.deepcopy` and by pickling (fastai's
`export` / `load_learner`: the hook is a module-level function), torch.compile traces it, and it follows the
model's train/eval mode and device through its `resdrop` child. A fit cancelled before training undoes the
surgeries of all the tricks together, the last made first (`ModelSurgery.after_cancel_fit`).

The tricks that only need the classifier or the activations (finalbn, fcdrop, rotation, leakyrelu, swish) also
take a model of no family whose classifier `classifier_path` finds (timm's get_classifier, torchvision's `fc`,
an nn.Linear as the model's last module); its pooled features are then the classifier's input, caught by a
forward pre-hook (an nn.Sequential whose classifier is a child: its children before the classifier, run in turn).
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import replace
from typing import Any, Callable, Iterator

import torch
from fastai.callback.core import Callback
from fastai.vision.learner import TimmBody
from torch import nn

from tricks.errors import ConfigError, TricksError
from tricks.models import FAMILIES
# ClassifierWrap, Family and SideLinear are defined there (no family imports them from here) and used here.
from tricks.models.family import ClassifierWrap, Family, SideLinear, children_before, timm_classifier

_MISSING = object()
_EDIT_STAMPS = itertools.count(1)
MODEL_FAMILIES = tuple(FAMILIES)  # each described in its file in tricks/models
VISION_LEARNER_LABEL = "a fastai vision_learner model with any of these as its body"
SUPPORTED = ", ".join([*(f.label for f in MODEL_FAMILIES), VISION_LEARNER_LABEL])


def vision_learner_body(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(path, body) of a model fastai's `vision_learner` built, nn.Sequential(body, head): the body is `model[0]`
    ('0': an nn.Sequential of the children of fastai's XResNet or a torchvision ResNet up to the pooling), or for a
    timm name its `TimmBody`'s timm model ('0.model'); None for any other model."""
    if type(model) is not nn.Sequential or len(model) != 2:
        return None
    body = model[0]
    return ("0.model", body.model) if isinstance(body, TimmBody) else ("0", body)


def _vision_learner_family(model: nn.Module) -> Family | None:
    """The family of the blocks inside a vision_learner body, its paths seen from the whole model: the blocks and
    branch ends as the family has them; the final BN where the body is the family's whole model (timm's ResNetV2
    under TimmBody: '0.model.norm'); the classifier and pooled features those of any model of no family (the
    head's last nn.Linear, its input)."""
    found = vision_learner_body(model)
    if found is None:
        return None
    path, body = found
    inner = next((f for f in MODEL_FAMILIES if any(isinstance(m, f.block_types) for m in body.modules())), None)
    if inner is None:
        return None

    def body_final_norm(m: nn.Module) -> tuple[str, nn.Module]:
        norm_path, replacement = inner.final_norm(m.get_submodule(path))
        return f"{path}.{norm_path}", replacement

    whole_model = inner.final_norm is not None and inner.matches(body)
    return replace(inner, name=f"vision_learner/{inner.name}",
                   label=f"fastai vision_learner model, body: {inner.label}",
                   matches=lambda m: _vision_learner_family(m) is not None,
                   final_norm=body_final_norm if whole_model else None, classifier=None, pooled=None)


def find_family(model: nn.Module) -> Family | None:
    """The model's family (a vision_learner model: the family of its body's blocks), or None."""
    return next((f for f in MODEL_FAMILIES if f.matches(model)), None) or _vision_learner_family(model)


def family(model: nn.Module, trick: str) -> Family:
    """The model's family; a one-line ConfigError naming the model class and the supported families otherwise."""
    fam = find_family(model)
    if fam is None:
        raise ConfigError(f"trick '{trick}' cannot change model {type(model).__name__}; it supports {SUPPORTED}")
    return fam


def _block_family(block: nn.Module) -> Family:
    fam = next((f for f in MODEL_FAMILIES if isinstance(block, f.block_types)), None)
    if fam is None:
        raise ConfigError(f"{type(block).__name__} is not a residual block of a supported model ({SUPPORTED})")
    return fam


def blocks(model: nn.Module) -> Iterator[nn.Module]:
    """Every residual block of a model of a supported family, in forward order."""
    fam = find_family(model)
    return fam.blocks(model) if fam is not None else iter(())


def last_bn(block: nn.Module) -> nn.BatchNorm2d:
    """The last BN of the block's residual branch (see the module's table)."""
    return block.get_submodule(_block_family(block).branch_end(block)[0])


def last_conv(block: nn.Module) -> nn.Conv2d:
    """The last conv of the block's residual branch."""
    return block.get_submodule(_block_family(block).branch_end(block)[1])


CLASSIFIER_LOOKED_FOR = ("timm's get_classifier() (pretrained_cfg['classifier']: an nn.Linear or a 1x1 nn.Conv2d), "
                         "torchvision's `fc` nn.Linear, or an nn.Linear as the model's last module")


def _is_classifier(module: nn.Module, conv_ok: bool) -> bool:
    if isinstance(module, (nn.Linear, ClassifierWrap)) and not isinstance(module, SideLinear):
        return True
    return conv_ok and isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)


def _classifier_path(model: nn.Module) -> str | None:
    fam = find_family(model)
    path = fam.classifier(model) if fam is not None and fam.classifier is not None else timm_classifier(model)
    if path is None and _is_classifier(getattr(model, "fc", None), conv_ok=False):
        path = "fc"  # torchvision's models, ...
    if path is not None:
        return path if _is_classifier(model.get_submodule(path), conv_ok=True) else None
    leaves = [n for n, m in model.named_modules() if n and next(m.children(), None) is None
              and not n.startswith("rotation_head")]
    if not leaves:
        return None
    path = leaves[-1]  # the last module: an nn.Linear, or the last module of a trick's ClassifierWrap
    while "." in path and isinstance(model.get_submodule(path.rpartition(".")[0]), ClassifierWrap):
        path = path.rpartition(".")[0]
    return path if _is_classifier(model.get_submodule(path), conv_ok=False) else None


def classifier_path(model: nn.Module, trick: str = "?") -> str:
    """Dotted path of the final classifier (see the module's table; a model of no family: timm's
    `pretrained_cfg['classifier']`, torchvision's 'fc', else the model's last module if it is an nn.Linear);
    once a trick wrapped it, the path of the wrap. A one-line ConfigError naming the model class otherwise."""
    path = _classifier_path(model)
    if path is None:
        raise ConfigError(f"trick '{trick}' cannot find the classifier of model {type(model).__name__}; "
                          f"looked for {CLASSIFIER_LOOKED_FOR}")
    return path


def classifier_family(model: nn.Module, trick: str) -> Family | None:
    """For the tricks that only need the classifier: the model's family (None for a model of no family) once
    its classifier is found; a one-line ConfigError if it is not."""
    classifier_path(model, trick)
    return find_family(model)


def wrap_classifier(edits: "Edits", model: nn.Module, wrap: Callable[[nn.Module], nn.Module]) -> None:
    """Replace the classifier by `wrap(classifier)`, recorded in `edits`."""
    path = classifier_path(model)
    parent, _, name = path.rpartition(".")
    edits.set(model.get_submodule(parent) if parent else model, name, wrap(model.get_submodule(path)))


def classifier_layer(model: nn.Module) -> nn.Linear | nn.Conv2d:
    """The classifier's nn.Linear (or timm's 1x1 nn.Conv2d head), also when a trick has wrapped it."""
    head = model.get_submodule(classifier_path(model))
    return [m for m in head.modules() if _is_classifier(m, conv_ok=True) and not isinstance(m, ClassifierWrap)][-1]


def classifier_widths(model: nn.Module) -> tuple[int, int]:
    """(inputs, outputs) of the classifier: (num_features, num_classes)."""
    layer = classifier_layer(model)
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels, layer.out_channels
    return layer.in_features, layer.out_features


def num_features(model: nn.Module) -> int:
    """Width of the pooled features (the classifier's input width)."""
    return classifier_widths(model)[0]


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, num_features): the globally pooled features of input x, as the model's family computes them; for a
    model of no family the classifier's input (an nn.Sequential's children before it, else caught by a forward
    pre-hook on a forward pass of x)."""
    fam = find_family(model)
    if fam is not None and fam.pooled is not None:
        return fam.pooled(model, x)
    path = classifier_path(model)
    if isinstance(model, nn.Sequential) and "." not in path:
        return children_before(model, path, x)
    seen = []
    hook = model.get_submodule(path).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
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
    """What a trick changed, so it can be put back: attributes set (modules, momenta), tensors overwritten and
    forward hooks added."""

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

    def pre_hook(self, module: nn.Module, hook: Callable) -> None:
        """module.register_forward_pre_hook(hook), removed on undo."""
        self.steps.append(module.register_forward_pre_hook(hook).remove)

    def commit(self) -> None:
        """Forget the changes: they are now part of the model."""
        self.steps.clear()

    def undo(self) -> None:
        """Put everything back, last change first."""
        while self.steps:
            self.steps.pop()()


def check_surgery(model: nn.Module, tricks, edit: bool = False) -> None:
    """`check` the model against every ModelSurgery callback in `tricks` (a one-line ConfigError for the first
    that cannot change it); with `edit`, each one's surgery follows its check, in the order given (the tricks'
    `order`, as their before_fit would run it)."""
    for trick in tricks:
        if isinstance(trick, ModelSurgery):
            if edit:
                trick.apply(model)
            elif not trick.already_made(model):
                trick.check(model)


def rebuild_optimizer(learn) -> None:
    """`learn.create_opt()` for the edited model, keeping what the old optimizer held per param group: every
    hyper-parameter (the lr `fit` set, the discriminative lrs of `fit(n, slice(1e-5, 1e-2))` and `fine_tune`,
    wd, momentum) and the groups `freeze` froze. New parameters go to the group the Learner's splitter puts
    them in (fastai's `vision_learner`: the head's, which holds the classifier they wrap or sit beside). Where
    the splitter now gives another number of groups, every group gets the last group's lr. Written here: fastai
    has no rebuild that keeps the groups' hyper-parameters."""
    old = learn.opt
    learn.create_opt()
    if old is None:
        return
    hypers, new = old.hypers, learn.opt
    if len(new.hypers) != len(hypers):
        new.set_hyper("lr", hypers[-1]["lr"])
        return
    for key in hypers[0]:
        if any(h.get(key) != g.get(key) for h, g in zip(hypers, new.hypers)):
            new.set_hyper(key, [h[key] for h in hypers])
    if getattr(old, "frozen_idx", 0):
        new.freeze_to(old.frozen_idx)


MARK = "tricks_surgeries"  # the model's attribute: {trick name: its settings} of the surgeries made on it


def surgeries_made(model: nn.Module) -> dict[str, str]:
    """{trick name: settings} of every ModelSurgery that has changed `model` (and was not undone)."""
    return dict(getattr(model, MARK, {}))


def undo_surgeries(learn) -> None:
    """Undo every ModelSurgery's changes not yet part of the trained model (those of the fit now starting),
    the last made first (fcdrop's wrap of the classifier inside finalbn's, ...), and rebuild the optimizer
    once if any of them had rebuilt it."""
    made = sorted((cb for cb in learn.cbs if isinstance(cb, ModelSurgery) and cb.edits.steps),
                  key=lambda cb: cb.stamp, reverse=True)
    for cb in made:
        cb.edits.undo()
    if any(cb.rebuild_opt for cb in made):
        rebuild_optimizer(learn)


def in_validation_context(learn) -> bool:
    """True while fastai's `validate` / `get_preds` / `predict` run before_fit: they hold the Learner's `lock`
    (`Learner.validation_context`) and nothing trains. An error raised there would leave that lock held (fastcore's
    `ContextManagers` does not exit what it had entered), so the Learner's next `validate` would wait forever."""
    return learn.lock.locked()


@contextlib.contextmanager
def undone_on_refusal(learn) -> Iterator[None]:
    """Around a trick's before_fit checks: a refusal (a TricksError) first undoes the model surgery the fit's
    other tricks have already made (`undo_surgeries`), then goes on up. fastai calls no after_cancel_fit for an
    exception that is not its CancelFitException, so nothing else would put the model back."""
    try:
        yield
    except TricksError:
        undo_surgeries(learn)
        raise


class ModelSurgery(Callback):
    """Base of the model-changing tricks: `edit` the model once at before_fit, undo on cancel or refusal.

    Subclasses set `trick` (their registered name, for messages), `order`, and `rebuild_opt` when they
    add or remove parameters (the optimizer fastai made before `before_fit` is then rebuilt, keeping each
    param group's hyper-parameters, `rebuild_optimizer`), and write `check(model)` (raise ConfigError; returns
    the model's `Family`, or None where a trick takes models of no family), `edit(model, fam)` using
    `self.edits` for every change, and `settings()`, the parameters that decide the change.

    Idempotent across fits: the model records the surgeries made on it (`surgeries_made`, the attribute
    `tricks_surgeries`, set through `self.edits` so an undo removes it too), so a second fit with the same trick
    -- the same callback, or a new one passed to `fit(..., cbs=[FinalBN()])` again -- changes nothing (no second
    BN, the trained rotation head kept, the trained gammas not zeroed again); the same trick with other settings
    is refused (ConfigError naming both).
    A fit cancelled before its first training batch has completed puts the model back; so does a fit that any
    trick refuses at before_fit (a ConfigError: `undone_on_refusal`). Once a batch has trained, or the fit has
    ended, the changes are part of the trained model and stay (early stopping, which cancels the fit, keeps a
    working model). `check` may be called before fit (e.g. by the trainer) to fail early with a one-line message.
    """

    trick = "?"
    rebuild_opt = False

    def __init__(self):
        super().__init__()
        self.edits = Edits()
        self.stamp = 0  # when the edit was made: cancels undo the surgeries in reverse

    def settings(self) -> str:
        """The parameters that decide what the surgery changes, as a recipe writes them ('position=logits';
        compared across fits)."""
        return ""

    def named(self, settings: str) -> str:
        return f"{self.trick}:{settings}" if settings else self.trick

    def check(self, model: nn.Module) -> Family | None:
        return family(model, self.trick)

    def edit(self, model: nn.Module, fam: Family | None) -> None:
        raise NotImplementedError

    def already_made(self, model: nn.Module) -> bool:
        """True if this trick has changed `model` already, with these settings; ConfigError with others."""
        made = surgeries_made(model)
        if self.trick not in made:
            return False
        if made[self.trick] != self.settings():
            raise ConfigError(f"{self.named(self.settings())} on a model that {self.named(made[self.trick])} has "
                              "already changed; give the same settings, or build a new model")
        return True

    def apply(self, model: nn.Module) -> bool:
        """Check and edit `model` unless this trick has changed it already; True if it was changed now."""
        if self.already_made(model):
            return False
        fam = self.check(model)
        self.stamp = next(_EDIT_STAMPS)
        self.edit(model, fam)
        self.edits.set(model, MARK, {**surgeries_made(model), self.trick: self.settings()})
        return True

    def before_fit(self):
        with undone_on_refusal(self.learn):
            changed = self.apply(self.learn.model)
        if changed and self.rebuild_opt:
            rebuild_optimizer(self.learn)

    def after_cancel_fit(self):
        """The first ModelSurgery to hear of the cancel undoes every ModelSurgery's changes (`undo_surgeries`)."""
        if self.learn.train_iter == 0:
            undo_surgeries(self.learn)

    def after_fit(self):
        self.edits.commit()  # a later cancel must not undo what training has built on
