"""Label refinery: train on a teacher's soft predictions (Bagherinezhad et al. 2018,
"Label Refinery: Improving ImageNet Classification through Label Progression", arXiv:1805.02641).

For each training batch x (after augmentation and, when mixup is on, after mixing), the target is

    t = softmax(teacher(x) / T)

with the teacher in eval mode under no_grad; T < 1 sharpens. The loss is KL(t || softmax(s))
or the soft cross entropy -(t * log_softmax(s)).sum(1), which differ by the entropy of t, a constant,
so both give the same gradient. The generations (train, then refine from the model just trained) are the
fits of the recipe's plan (`recipes.generations`), each after the first with this callback and the fit before
it as the teacher; this callback is one generation and works in any fastai Learner.
The teacher is used, not changed: it predicts under `torch.no_grad` (its parameters' requires_grad are left as
they are), in eval mode during the fit, and after the fit it is back on its own device and in its own train /
eval mode, so the Learner it came from trains on as before. Single-label only: the targets are a softmax
over classes; a multi-label Learner (BCE loss) is refused at before_fit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tricks.losses import TrainingLoss, kl_div_loss, soft_target_cross_entropy
from tricks.registry import Param, check_arguments, register_trick

LOSSES = {"kl": kl_div_loss, "ce": soft_target_cross_entropy}


def tempered_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) over the classes, in fp32 (the logits may come from a bf16 autocast)."""
    return F.softmax(logits.float() / temperature, dim=1)


@torch.no_grad()
def teacher_targets(teacher: nn.Module, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(teacher(x) / T): the refined targets of batch x."""
    return tempered_softmax(teacher(x), temperature)


@register_trick(
    "refine",
    params=(
        Param("gens", int, 4, "refinement generations after generation 0", low=0, generations=True),
        Param("mixup", str, "first", "mixup in the first generation only, or in all", choices=("first", "all")),
        Param("temperature", float, 1.0, "softmax temperature of the teacher (<1 sharpens)", low=0, low_open=True),
        Param("loss", str, "kl", "KL divergence or soft cross entropy", choices=tuple(LOSSES)),
        Param("gen_epochs", int, 0, "epochs of each refinement generation (0: the recipe's)", low=0, epochs=True),
        Param("first_epochs", int, 0, "epochs of generation 0's schedule (0: the recipe's)", low=0, epochs=True),
        Param("early_stop", int, 0, "stop generation 0 after this many epochs (0: never)", low=0, epochs=True),
        Param("weak", int, 0, "labelled images per class for generation 0 (0: all)", low=0,
              images_per_class=True),
    ),
    description="label refinery: train generation after generation on the previous model's soft predictions",
    paper="Bagherinezhad et al. 2018, Label Refinery, arXiv:1805.02641",
    touches=("targets", "loss"),
    per_run=True,
)
class LabelRefinery(TrainingLoss):
    """Replace each training batch's targets with a teacher's softmax of that exact batch (weights unchanged).

    The teacher predicts at before_batch, after mixup (30) mixed the inputs; the targets are written
    at after_pred, after one-hot / smoothing (20) and mixup (30) wrote theirs, so they are neither
    smoothed nor mixed again. Dynamic refine (36) may then blend them. The refinery's loss wins over
    an earlier target trick's (`replace_soft`); it is in place for training only (`TrainingLoss`).
    """

    order = 35
    replace_soft = True
    single_label_only = "its targets are the teacher's softmax over classes"

    def __init__(self, teacher: nn.Module, temperature: float = 1.0, loss: str = "kl"):
        check_arguments("refine", temperature=temperature, loss=loss)
        self.teacher, self.temperature, self.loss = teacher, temperature, loss
        self.train_loss, self.targets = LOSSES[loss], None
        self.lent = None  # (device, training mode) the teacher had before this fit borrowed it

    def before_train(self):
        super().before_train()
        if self.lent is None:
            device = next(self.learn.model.parameters()).device
            first = next(self.teacher.parameters(), None)
            self.lent = (first.device if first is not None else device, self.teacher.training)
            self.teacher.to(device).eval()

    def before_batch(self):
        self.teacher.eval()
        self.targets = teacher_targets(self.teacher, self.learn.xb[0], self.temperature)

    def after_pred(self):
        self.learn.yb = (self.targets,)

    def after_train(self):
        super().after_train()
        self.targets = None

    def after_fit(self):
        """Give the teacher back as it was lent: its device and train / eval mode (its weights and requires_grad
        were never touched: it predicts under no_grad)."""
        if self.lent is not None:
            device, training = self.lent
            self.teacher.to(device).train(training)
            self.lent = None

    def after_cancel_fit(self):
        super().after_cancel_fit()
        self.after_fit()
