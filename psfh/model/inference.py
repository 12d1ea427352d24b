"""The inference steps, each a function you can call alone.

image (H x W) -> :func:`preprocess` -> pixel values (1 x 3 x S x S)
    -> :func:`tta_views` (identity, horizontal flip) -> per-fold class probabilities
       (:func:`mask_logits` under each fold adapter, :func:`undo_tta`)
    -> :func:`ensemble` (soft mean of the F x V members, fold disagreement)
    -> :func:`to_label_map` (back to H x W, argmax, largest connected component per class)

Training feeds the network through the same functions (:mod:`psfh.training.sources`,
:mod:`psfh.training.embedding_cache`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from psfh.core.errors import PSFHInputError
from psfh.core.labels import largest_components


def scale_to_unit(pixels: np.ndarray, name: str = "image") -> np.ndarray:
    """Min-max scale an H x W image to [0, 1] (float32); a constant image is an error."""
    low, high = float(pixels.min()), float(pixels.max())
    if high - low <= 1e-12:
        raise PSFHInputError(f"{name}: the image is constant (every pixel is {low:g}); nothing to segment")
    return ((pixels - low) / (high - low)).astype(np.float32)


def unit_grid(pixels: np.ndarray, input_size: int, name: str = "image") -> torch.Tensor:
    """H x W grayscale image (any intensity scale) -> 1 x 1 x S x S float32 in [0, 1] on the model's grid.

    The image is min-max scaled to [0, 1] (as MedSAM / LiteMedSAM do), then resized to S x S
    (bilinear, anti-aliased when shrinking). Training (:class:`psfh.training.sources.ImageSource`)
    and inference (:func:`preprocess`) both start here, so the model never sees a frame prepared
    another way than it was trained on.
    """
    unit = torch.from_numpy(scale_to_unit(np.asarray(pixels), name))[None, None]
    if unit.shape[-2:] != (input_size, input_size):
        unit = F.interpolate(unit, size=(input_size, input_size), mode="bilinear", align_corners=False,
                             antialias=True)
    return unit


def preprocess(pixels: np.ndarray, input_size: int, pixel_mean, pixel_std, name: str = "image") -> torch.Tensor:
    """H x W grayscale image (any intensity scale) -> 1 x 3 x S x S normalised model input:
    :func:`unit_grid`, repeated to three channels, normalised with the base's per-channel mean and std."""
    return normalize(unit_grid(pixels, input_size, name), pixel_mean, pixel_std)


def normalize(unit: torch.Tensor, pixel_mean, pixel_std) -> torch.Tensor:
    """B x 1 x S x S image in [0, 1] -> B x 3 x S x S: repeated to three channels, normalised per channel."""
    mean = torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
    return (unit.expand(-1, 3, -1, -1) - mean) / std


def tta_views(pixel_values: torch.Tensor, tta: bool) -> torch.Tensor:
    """B x 3 x S x S -> (V*B) x 3 x S x S: the identity, then (with TTA) the horizontal flip."""
    if not tta:
        return pixel_values
    return torch.cat([pixel_values, pixel_values.flip(-1)], dim=0)


def undo_tta(probabilities: torch.Tensor, tta: bool) -> torch.Tensor:
    """(V*B) x C x S x S predictions of :func:`tta_views` -> V x B x C x S x S in image orientation."""
    views = 2 if tta else 1
    per_view = probabilities.view(views, -1, *probabilities.shape[1:])
    if tta:
        per_view = torch.stack([per_view[0], per_view[1].flip(-1)])
    return per_view


def mask_logits(sam, input_size: int, pixel_values: torch.Tensor | None = None,
                image_embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """Class logits B x 3 x S x S from a SamModel (or a peft model around one) with no prompt.

    The mask decoder's three multimask outputs are read as background / PS / FH logits; they come
    out at 4x the embedding grid and are resized to the input size when that differs.
    """
    output = sam(pixel_values=pixel_values, image_embeddings=image_embeddings, multimask_output=True)
    logits = output.pred_masks[:, 0]
    if logits.shape[-1] != input_size:
        logits = F.interpolate(logits, size=(input_size, input_size), mode="bilinear", align_corners=False)
    return logits


def ensemble(member_probabilities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft ensemble of M members: M x C x S x S -> (mean C x S x S, disagreement S x S).

    Disagreement is the fraction of members whose own argmax differs from the ensemble's label
    (0: all agree; it can reach (M - 1) / M).
    """
    mean = member_probabilities.mean(dim=0)
    label = mean.argmax(dim=0)
    disagreement = (member_probabilities.argmax(dim=1) != label).float().mean(dim=0)
    return mean, disagreement


def resize_map(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """C x S x S (or S x S) float map -> C x H x W (or H x W), bilinear."""
    squeeze = values.ndim == 2
    batch = values[None, None] if squeeze else values[None]
    if tuple(batch.shape[-2:]) != tuple(size):
        batch = F.interpolate(batch.float(), size=size, mode="bilinear", align_corners=False)
    return batch[0, 0] if squeeze else batch[0]


def to_label_map(probabilities: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """C x S x S probabilities -> (H x W uint8 label map after LCC, C x H x W float32 probabilities).

    The label map keeps only the largest connected component of each structure
    (:func:`psfh.core.labels.largest_components`).
    """
    resized = resize_map(probabilities, size)
    labels = resized.argmax(dim=0).to(torch.uint8).numpy()
    return largest_components(labels), resized.numpy().astype(np.float32)
