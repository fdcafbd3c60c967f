"""fastai-tricks: training tricks for image classification as fastai Callbacks.

Every trick is a fastai `Callback` you can add to your own `Learner`, e.g.
`Learner(dls, model, cbs=[MixUp(alpha=0.3), LabelRefinery(teacher)])`. Importing this package also
registers every trick under its recipe name (`recipe list` shows them).

When several tricks touch the same thing they combine in a fixed order (fastai's `order`, lower
first), whatever order a recipe names them in:

| order | event | tricks |
|---|---|---|
| 1-7 | before_fit: model surgery | activation swap 1, residual/FC dropout 2, final BN 3, last-bn switch 4, last gamma 5, BN momentum 6, rotation head 7 |
| 10 | before_batch: input | channel-drop |
| 20 | after_pred: targets | one-hot / label smoothing make soft targets |
| 30 | before_batch / after_pred | mixup / kl-mixup mix the inputs, then the soft targets of 20 |
| 35 | before_batch: targets | label refinery replaces the targets with the teacher's softmax of the mixed batch |
| 36 | after_pred: targets | dynamic refine blends the targets with the predictions of the model's snapshot from the previous epoch |
| 60 | before_batch: lr | the schedule (warmup + cosine, SGDR or step decay; at most one) |
| 65 | before_fit: optimizer | lookahead wraps the optimizer |
| 70 | after_step: weights | EMA of the weights |

The target tricks beside fastai's own callbacks and tasks (`tricks.losses.TrainingLoss`; tested in
`tests/test_beside_fastai_targets.py`). They install their loss for training only and, after any fit (completed,
cancelled or refused), the Learner holds the very loss object it held before the fit, whichever callback swapped
first. "refused": a one-line `ConfigError` at the fit's before_fit naming both, the Learner (loss, weights, model
surgery) left as it was (`validate` / `get_preds` / `predict` refuse nothing: the tricks act in training only).
Multi-label means a `MultiCategoryBlock` Learner with a BCE loss (`BCEWithLogitsLossFlat`); a loss that is
neither plain cross entropy nor BCE (say `LabelSmoothingCrossEntropyFlat`) is refused by every target trick but
mixup:mix=losses, which wraps any loss.

| trick | fastai `MixUp` / `CutMix` | `MixedPrecision` | `GradientAccumulation` | multi-label (BCE) |
|---|---|---|---|---|
| OneHot | refused | composes | composes | refused (targets already multi-hot) |
| LabelSmoothing | refused (tricks' MixUp composes with it) | composes | composes | trains: y * (1 - eps) + eps / 2 (or on/off) per class, BCE kept |
| MixUp | refused (both mix the batch) | composes | composes | trains: multi-hot targets mixed, BCE kept (mix=losses: BCE values mixed) |
| KLMixUp | refused (both mix the batch) | composes | composes | refused (KL of softmax distributions) |
| LabelRefinery | refused (tricks' MixUp composes with it) | composes | composes | refused (teacher's softmax targets); the teacher model is not changed |
| DynamicRefine | refused (tricks' MixUp composes with it) | composes | composes | refused (snapshot's softmax targets) |
| ChannelDrop | composes (drops channels of the mixed images) | composes | composes | composes (input only) |

The weight, lr-schedule and model tricks beside fastai's own callbacks, schedules and learners (tested in
`tests/test_beside_fastai_model.py`). Averaged weights are the model's weights wherever fastai evaluates, saves or
stops: EMA's average is in the model from before_validate to EMA's own after_epoch (order 70), so
`SaveModelCallback` and `EarlyStoppingCallback` (61) save and stop on the weights whose score they read, and the
model ends on the average after the last epoch, an early stop or a cancel (Lookahead: the fast weights, evaluated,
saved and kept alike). Optimizer rebuilds (finalbn, lastbn, rotation) keep every param group's hyper-parameters
(the discriminative lrs of `fit(n, slice(...))` and `fine_tune`, wd, momentum) and `freeze`; new parameters join
the group the Learner's splitter gives them (vision_learner: the head's). The lr schedules set the last group's
lr and scale every other group by its ratio to it at before_fit, as fastai's do. Model surgery is recorded on the
model (`tricks.surgery.surgeries_made`): a second fit with the same trick, a new callback or the same, changes
nothing; with other settings it is refused. Any trick's refusal at before_fit (one line naming both, under
fastai's "Exception occured in `X` when calling event `before_fit`" line) first undoes the surgery of that fit
(`tricks.surgery.undone_on_refusal`). The structural tricks find the blocks inside `vision_learner` bodies
(fastai XResNet, timm and torchvision ResNets).

| trick | `MixedPrecision` | `GradientAccumulation` | `SaveModelCallback` / `EarlyStoppingCallback` | `ParamScheduler` (`fit_one_cycle`, `fit_flat_cos`, `fine_tune`) |
|---|---|---|---|---|
| EMA | composes | composes (averages once per real step) | saves / stops on the averaged weights | composes; mode=noschedule refused (also beside `ReduceLROnPlateau`) |
| Lookahead | composes | composes (k counts real steps) | fast weights evaluated, saved, kept | composes (hyper-parameters reach the SGD); `opt_func=ranger` refused |
| FinalBN, LastBN, RotationHead | composes | composes (rotation loss scaled as the main loss) | composes | composes: groups, lrs and freeze kept |
| ResidualDropout, FCDropout, LastGamma, BNMomentum, LeakyReLUSwap, SwishSwap | composes | composes | composes | composes |
| SGDR, StepDecay | composes | composes | composes | refused (two lr schedules: use `fit`); `ReduceLROnPlateau` refused |
"""
from tricks.activation import LeakyReLUSwap, SwishSwap
from tricks.bn_momentum import BNMomentum
from tricks.channel_drop import ChannelDrop
from tricks.dropout import FCDropout, ResidualDropout
from tricks.dynamic_refine import DynamicRefine
from tricks.ema import EMA
from tricks.errors import ConfigError, DataError, RunFolderError, TricksError
from tricks.final_bn import FinalBN, LastBN
from tricks.label_refinery import LabelRefinery
from tricks.label_smoothing import LabelSmoothing, OneHot
from tricks.last_gamma import LastGamma
from tricks.lookahead import Lookahead
from tricks.mixup import KLMixUp, MixUp
from tricks.rotation_head import RotationHead
from tricks.schedules import LRSchedule
from tricks.sgdr import SGDR
from tricks.step_decay import StepDecay

__version__ = "0.1.0"

__all__ = [
    "BNMomentum", "ChannelDrop", "ConfigError", "DataError", "DynamicRefine", "EMA", "FCDropout", "FinalBN",
    "KLMixUp", "LRSchedule", "LabelRefinery", "LabelSmoothing", "LastBN", "LastGamma", "LeakyReLUSwap",
    "Lookahead", "MixUp", "OneHot", "ResidualDropout", "RotationHead", "RunFolderError", "SGDR", "StepDecay",
    "SwishSwap", "TricksError", "__version__",
]
