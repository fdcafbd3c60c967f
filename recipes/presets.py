"""Named recipes: the notes' milestones, each a set of `Recipe` field values with its section.

`baseline` is the `Recipe` defaults, the notes' S9 baseline as the notes accumulated it:

| setting | value | why (section of `shared/notes/experiment-log.md`) |
|---|---|---|
| model | ResNet-20 v1 | S6 switches to the CIFAR resnet20-v1; S9 goes back to non-pre-act |
| shortcut | 1x1 conv + BN | S4 tries a 3x3 shortcut (worse), S5 goes back to 1x1 |
| last gamma | zero-init | S4 (92.17 vs 92.06), S9 confirms (93.23 vs 92.98) |
| BN momentum | torch default | S6: "not specified" was the best setting |
| augmentation | pad 4 + random crop, flip | S6: pad=4 then crop, 92.31, "the earlier preprocessing was wrong" |
| normalisation | CIFAR mean/std | S6: 92.17, about the same, kept |
| batch, peak lr | 256, 0.2 | S2, S3 |
| weight decay | 5e-4 | S3 (91.86), S6 (5e-4 beats 1e-4) |
| warmup | 10 epochs, linear, from 1e-5 | S4/S5 warmup 10; S6 linear over exp; S7 warmup-start-lr=1e-5 |
| schedule | cosine to 1e-4, per iteration | S7: cosine beats step decay; eta=1e-4 best |
| epochs | 200 | S1, S6: 200 epochs are enough |
| loss | one-hot cross entropy, no label smoothing | S8 own cross entropy; S7/S8 label smoothing does not help |
| dropout | none | S7, S9 |

Not from the notes: SGD momentum 0.9 and no weight decay on BatchNorm and bias (fastai's default).
"""
from __future__ import annotations

from typing import Any

from tricks.registry import Registry

PRESETS = Registry("recipe")


def preset(name: str, section: str, description: str, chain: str = "", **values: Any) -> None:
    """Register a named recipe: `chain` is a recipe string of trick terms it adds, `values` override
    the `Recipe` defaults."""
    PRESETS.add(name, {**({"chain": chain} if chain else {}), **values}, section=section,
                description=description)


preset("baseline", "S9", "ResNet-20 v1, pad-4 crop+flip, SGD lr 0.2 bs 256 wd 5e-4, 10 warmup epochs, "
       "cosine to 1e-4 over 200 epochs, zero-init last gamma")
preset("preact_baseline", "S7", "the S7 baseline: pre-activation ResNet-20, no last gamma (S5: 54.29 with it), "
       "cosine to 1e-5, warmup from 1e-5, no label smoothing", model="preact_resnet20", zero_init_last=False,
       eta=1e-5)
preset("best", "S9", "the notes' best stack: baseline + final BN + last gamma, mixup 0.3 in generation 0, "
       "then 4 label-refinery generations without mixup (the notes' 93.06/93.24/93.20/93.45/93.37 is this stack "
       "without the final BN)",
       chain="finalbn+mixup:alpha=0.3+refine:gens=4,mixup=first")

# The notes' earlier section settings, for the bench's replay of every row (bench/ablations.toml).
# Label smoothing is not part of them: the rows name it as the notes wrote it (`lsmooth:on=..,off=..`).
preset("naive", "S2", "the notes' 'naive' model: an ImageNet-style ResNet-18 (timm:resnet18, 7x7 stride-2 stem "
       "and max-pool) on 32x32 CIFAR; random resized crop + flip, no pad-crop; 0.5/0.5 normalisation (assumed); "
       "SGD bs 256 lr 0.2 wd 1e-4, 20 linear warmup epochs, cosine to 1e-5 over 200 epochs; no last gamma",
       model="timm:resnet18", resize_crop=True, crop_pad=0, normalize="half", wd=1e-4, warmup_epochs=20.0,
       eta=1e-5, zero_init_last=False)
preset("naive32", "S3", "the S3 end point: 'naive' adapted to 32x32 (first conv 3x3 stride 1, no max-pool), "
       "wd 5e-4; add label smoothing as a term", model="timm:resnet18", stem="conv3x3s1-nomaxpool",
       resize_crop=True, crop_pad=0, normalize="half", wd=5e-4, warmup_epochs=20.0, eta=1e-5,
       zero_init_last=False)
preset("s6_baseline", "S6", "the S6 start: CIFAR resnet20-v1 with the S5 settings (warmup 10, 1x1 shortcut, "
       "cosine to 1e-5, no last gamma, wd 5e-4), still random resized crop without pad-crop and 0.5/0.5 "
       "normalisation (assumed); add label smoothing as a term", model="resnet20", resize_crop=True, crop_pad=0,
       normalize="half", wd=5e-4, warmup_epochs=10.0, eta=1e-5, zero_init_last=False)
