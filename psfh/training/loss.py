"""The paper's loss: 0.2 x cross-entropy + 0.8 x Dice (MONAI's DiceCELoss, written out in torch), optionally class-weighted,
and optionally a term on the pubic symphysis's second moments (its orientation and elongation).

Why the moment term: the AoP is built on the PS's long axis, the principal axis of its outline. The
PS is a small, roundish blob, so an outline with a high Dice can still tilt that axis (issue 25);
Dice and cross-entropy count pixels, not orientation. The shape tensor of a mask (its coordinate
covariance divided by its trace: 2 x 2, symmetric, trace 1) holds exactly what the axis depends on,
and it is differentiable in the soft probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from psfh.core.errors import PSFHInputError
from psfh.core.labels import PS, STRUCTURE_VALUES

# Images whose expert PS has fewer pixels than this have no meaningful axis: the moment term skips them.
MIN_MOMENT_PIXELS = 8.0


def segmentation_loss(ce_weight: float = 0.2, dice_weight: float = 0.8,
                      class_weights: Sequence[float] | None = None, ps_moment_weight: float = 0.0):
    """Loss on logits B x 3 x H x W against integer labels B x 1 x H x W (softmax inside).

    ``class_weights`` (background, PS, FH) weigh both the cross-entropy and the per-class Dice
    terms, e.g. to make the small PS count more; None weighs the classes equally.
    ``ps_moment_weight`` > 0 adds that weight times :func:`ps_moment_loss`.
    """
    weight = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
    dice_ce = DiceCE(ce_weight, dice_weight, weight)
    if not ps_moment_weight:
        return dice_ce

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return dice_ce(logits, labels) + ps_moment_weight * ps_moment_loss(logits, labels[:, 0])

    return loss


class DiceCE(torch.nn.Module):
    """MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce, lambda_dice, weight)``, in torch.

    Written out so that training needs no MONAI (the GPU machine has none; the test compares it
    with MONAI's, value and gradient): Dice per image and class on the softmax, background
    included, smoothed by 1e-5 above and below, each class's term times its weight, averaged;
    plus torch's cross-entropy with the same class weights. Logits B x C x H x W, labels
    B x 1 x H x W (integer classes).
    """

    SMOOTH = 1e-5

    def __init__(self, ce_weight: float = 0.2, dice_weight: float = 0.8, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.class_weights = class_weights

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        classes = labels[:, 0].long()
        probabilities = torch.softmax(logits, dim=1)
        one_hot = F.one_hot(classes, logits.shape[1]).movedim(-1, 1).to(probabilities.dtype)
        spatial = tuple(range(2, logits.dim()))
        overlap = (probabilities * one_hot).sum(spatial)
        total = probabilities.sum(spatial) + one_hot.sum(spatial)
        dice = 1 - (2 * overlap + self.SMOOTH) / (total + self.SMOOTH)  # B x C
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, logits.dtype)
        if weight is not None:
            dice = dice * weight
        cross_entropy = F.cross_entropy(logits, classes, weight=weight)
        return self.dice_weight * dice.mean() + self.ce_weight * cross_entropy


def distillation_loss(ground_truth_loss, soft_weight: float = 0.5):
    """Knowledge distillation (Hinton et al. 2015, temperature 1) beside the ground truth.

    The returned loss takes logits B x 3 x H x W and targets B x 4 x H x W: channel 0 the expert's
    class (0, 1, 2), channels 1-3 the teacher's class probabilities (the fold ensemble's mean over
    folds and flips). It is ``(1 - soft_weight) * ground_truth_loss(logits, classes) + soft_weight *
    soft cross-entropy`` (the cross-entropy against the teacher's probabilities, per pixel, averaged;
    it differs from the KL divergence by the teacher's entropy, a constant)."""
    if not 0 <= soft_weight <= 1:
        raise PSFHInputError(f"the distillation weight must be between 0 and 1, not {soft_weight}")

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        classes, teacher = targets[:, :1].round().long(), targets[:, 1:].float()
        soft = -(teacher * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
        return (1 - soft_weight) * ground_truth_loss(logits, classes) + soft_weight * soft

    return loss


def shape_tensor(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Second moments of B non-negative H x W weight maps (a mask or a soft probability).

    Returns (mass B, shape tensor B x 2 x 2): the covariance of the pixel coordinates (x, y) weighted
    by ``weights``, divided by its trace, so that it holds orientation and elongation, not size. Its
    largest eigenvector is the mask's principal axis, as psfh.measure.aop takes it.
    """
    height, width = weights.shape[-2:]
    ys = torch.arange(height, dtype=weights.dtype, device=weights.device).view(1, height, 1)
    xs = torch.arange(width, dtype=weights.dtype, device=weights.device).view(1, 1, width)
    mass = weights.sum(dim=(1, 2))
    safe = mass.clamp(min=1e-6)
    mean_x, mean_y = (weights * xs).sum(dim=(1, 2)) / safe, (weights * ys).sum(dim=(1, 2)) / safe
    dx, dy = xs - mean_x.view(-1, 1, 1), ys - mean_y.view(-1, 1, 1)
    xx, yy, xy = ((weights * d).sum(dim=(1, 2)) / safe for d in (dx * dx, dy * dy, dx * dy))
    covariance = torch.stack([torch.stack([xx, xy], -1), torch.stack([xy, yy], -1)], -2)
    return mass, covariance / (xx + yy).clamp(min=1e-6).view(-1, 1, 1)


def ps_moment_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How far the PS's soft shape is from the expert's: B x 3 x H x W logits, B x H x W labels -> scalar.

    The Frobenius distance between the shape tensors (:func:`shape_tensor`) of the softmax PS
    probability and of the expert PS mask, averaged over the images whose expert PS has at least
    :data:`MIN_MOMENT_PIXELS` pixels (0 when none has). For shapes of axis ratio 2, a 10 degree tilt
    of the axis costs about 0.15.
    """
    probability = torch.softmax(logits.float(), dim=1)[:, PS]
    expert = (labels == PS).float()
    expert_mass, expert_shape = shape_tensor(expert)
    _, predicted_shape = shape_tensor(probability)
    distance = torch.sqrt(((predicted_shape - expert_shape) ** 2).sum(dim=(1, 2)) + 1e-8)
    counted = (expert_mass >= MIN_MOMENT_PIXELS).float()
    return (distance * counted).sum() / counted.sum().clamp(min=1.0)


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
