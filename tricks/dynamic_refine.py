"""Dynamic refine, order 36: a label refinery whose teacher is the model itself as it was at the end of
the previous epoch.

Label Refinery (Bagherinezhad et al. 2018, "Label Refinery: Improving ImageNet Classification through
Label Progression", arXiv:1805.02641) trains a model on a frozen, trained teacher's soft predictions of
the very batch the student sees (`tricks.label_refinery`). The notes' S1-S3 'dynamic-refine' / 'dyna'
(S2: 83.06; S3: 88.73 -> 89.06, 91.86 -> 92.22) make that teacher follow the training:

    at the end of every training epoch e >= start_epoch - 1: snapshot <- frozen copy of the model
    during epoch e + 1, for each training batch x:  t = (1 - w) * y_soft + w * softmax(snapshot(x) / T)

x is the exact batch the student sees (after augmentation, channel drop and mixup: the snapshot's
forward runs at before_batch, order 36, after mixup (30) mixed the images and after the label
refinery (35)); y_soft is the target the earlier tricks made (the one-hot of the labels if they are
still class indices, the smoothed / mixed soft targets if lsmooth or mixup ran); the blend is made at
after_pred, where those tricks made their targets. The loss is the soft-target cross entropy. The
snapshot is a `copy.deepcopy` of the model, in eval mode (BN uses its running statistics, nothing in
it is updated), with requires_grad off; it never changes during an epoch and is freed after the fit.
The first `start_epoch` epochs (default 1) train on the plain targets: there is no snapshot yet.

Why this reading. S1 writes 'dynamic-refine: refine using model_final_2.pth', i.e. the teacher is a
trained model, not the prediction of the current forward pass; 'dynamic' (and S2's separate
'online-refine') then says the teacher follows the training instead of being fixed for a whole
generation. The earlier reading here, y <- (1 - w) * y + w * softmax(pred.detach() / T) of the same
forward pass, is not a teacher at all: at T = 1 its gradient w.r.t. the logits is exactly
(1 - w) * (softmax(pred) - y), i.e. plain cross entropy scaled by (1 - w), a change of learning rate.
Evaluation is untouched (run_valid False): the test split is scored against its true labels.
Single-label only: a multi-label Learner (BCE loss) is refused at before_fit.
The maths is `refine_targets`: the refinery's `tempered_softmax` of the snapshot's logits (what its
`teacher_targets` gives) blended with y_soft; the snapshot is written by hand: no library keeps one.
"""
from __future__ import annotations

import copy

import torch

from tricks.errors import ConfigError
from tricks.label_refinery import tempered_softmax
from tricks.losses import TrainingLoss, one_hot
from tricks.mixup import MixUp
from tricks.registry import Param, check_arguments, register_trick


def blend_targets(y_soft: torch.Tensor, teacher_probs: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - weight) * y_soft + weight * teacher_probs."""
    return (1 - weight) * y_soft + weight * teacher_probs


def refine_targets(y_soft: torch.Tensor, teacher_logits: torch.Tensor, weight: float,
                   temperature: float) -> torch.Tensor:
    """(1 - weight) * y_soft + weight * softmax(teacher_logits / temperature): the refined targets, with
    `teacher_logits` the snapshot's logits of the batch (the refinery's `tempered_softmax`)."""
    return blend_targets(y_soft, tempered_softmax(teacher_logits.detach(), temperature), weight)


@register_trick(
    "dynarefine",
    params=(
        Param("weight", float, 0.5, "weight w of the snapshot's prediction in the target", low=0.0, high=1.0),
        Param("temperature", float, 1.0, "softmax temperature T of the snapshot", low=0.0, low_open=True),
        Param("start_epoch", int, 1, "first epoch (0-based) trained on refined targets; >= 1", low=1,
              epochs=True),
    ),
    description="dynamic refine: label refinery whose teacher is the model at the end of the previous "
                "epoch, targets (1-w)*y + w*softmax(snapshot(x)/T) (the notes' 'dyna', S1-S3)",
    paper="Bagherinezhad et al. 2018, Label Refinery, arXiv:1805.02641; notes S1-S3 'dynamic-refine' "
          "('refine using model_final_2.pth'), 'dyna', 'online-refine'",
    touches=("targets", "loss"),
)
class DynamicRefine(TrainingLoss):
    """Refines the training targets with a frozen snapshot of the model from the previous epoch."""

    order = 36  # before_batch: after mixup (30) mixed x and the label refinery (35); after_pred: after
    #             one-hot / label smoothing (20) and mixup (30) made the soft targets
    single_label_only = "its targets blend in the snapshot's softmax over classes"

    def __init__(self, weight: float = 0.5, temperature: float = 1.0, start_epoch: int = 1):
        check_arguments("dynarefine", weight=weight, temperature=temperature, start_epoch=start_epoch)
        self.weight, self.temperature, self.start_epoch = weight, temperature, start_epoch
        self.snapshot = None  # the frozen model of the previous epoch
        self.teacher_logits = None  # snapshot(x) of the current training batch

    def before_fit(self):
        super().before_fit()
        self.snapshot, self.teacher_logits = None, None

    def check_tricks(self):
        if any(isinstance(cb, MixUp) and cb.mix == "losses" for cb in self.learn.cbs):
            raise ConfigError("dynarefine refines mixed labels, and mixup:mix=losses has none; use mix=labels")

    def before_batch(self):
        self.teacher_logits = None
        if self.snapshot is None or self.learn.epoch < self.start_epoch:
            return
        with torch.no_grad():
            self.teacher_logits = self.snapshot(self.learn.xb[0])

    def after_pred(self):
        if self.teacher_logits is None:
            return
        y = self.learn.yb[0]
        y_soft = y if y.is_floating_point() else one_hot(y, self.teacher_logits.shape[1])
        self.learn.yb = (refine_targets(y_soft, self.teacher_logits, self.weight, self.temperature),)
        self.teacher_logits = None

    def after_epoch(self):
        # the snapshot of epoch e teaches epoch e + 1; none is needed after the last epoch
        e = self.learn.epoch
        if e >= self.start_epoch - 1 and e + 1 < self.learn.n_epoch:
            self.take_snapshot()

    def take_snapshot(self):
        self.snapshot = None  # free the old copy before making the new one
        snapshot = copy.deepcopy(self.learn.model)
        snapshot.eval()
        for p in snapshot.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.snapshot = snapshot

    def checkpoint_state(self) -> dict:
        """What `recipes.checkpoint` saves to resume a run: the snapshot of the previous epoch, if any."""
        return {"snapshot": None if self.snapshot is None else self.snapshot.state_dict()}

    def load_checkpoint_state(self, state: dict) -> None:
        if state["snapshot"] is not None:
            self.take_snapshot()  # a frozen copy of the model, then the saved snapshot's values
            self.snapshot.load_state_dict(state["snapshot"])

    def after_fit(self):
        self.snapshot, self.teacher_logits = None, None

    def after_cancel_fit(self):
        super().after_cancel_fit()
        self.after_fit()
