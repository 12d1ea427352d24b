"""The paper's loss: 0.2 x cross-entropy + 0.8 x Dice (MONAI's DiceCELoss), optionally class-weighted."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss

from psfh.core.labels import STRUCTURE_VALUES


def segmentation_loss(ce_weight: float = 0.2, dice_weight: float = 0.8,
                      class_weights: Sequence[float] | None = None) -> DiceCELoss:
    """Loss on logits B x 3 x H x W against integer labels B x 1 x H x W (softmax inside).

    ``class_weights`` (background, PS, FH) weigh both the cross-entropy and the per-class Dice
    terms, e.g. to make the small PS count more; None weighs the classes equally.
    """
    weight = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=ce_weight, lambda_dice=dice_weight, weight=weight)


def dice_per_class(logits: torch.Tensor, labels: torch.Tensor, classes=STRUCTURE_VALUES) -> torch.Tensor:
    """Hard Dice of argmax(logits) per image and class: B x C x H x W, B x H x W -> B x len(classes).

    Used for per-epoch validation (no connected-component filtering; a class absent from both
    the prediction and the label scores 1).
    """
    predicted = logits.argmax(dim=1)
    scores = []
    for value in classes:
        p, t = (predicted == value).flatten(1), (labels == value).flatten(1)
        overlap, total = (p & t).sum(1).float(), (p.sum(1) + t.sum(1)).float()
        scores.append(torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total)))
    return torch.stack(scores, dim=1)
