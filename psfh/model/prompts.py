"""Box prompts: re-segment one structure from a user's box, SAM's way, over embeddings already made.

A box is ``(x0, y0, x1, y1)`` in the image's pixel coordinates (columns, rows; the corners of the
structure's bounding box). SAM's prompt encoder takes it in model-input coordinates, so it is
scaled by S / W and S / H. The box-prompted mask comes from the base's own mask decoder (fold
adapters off), which LiteMedSAM trained on box prompts: zero-shot with ground-truth boxes it
reaches Dice PS 0.893 / FH 0.949 on PSFHS (FACTS.md), below the fine-tuned ensemble's own PS
where that is right. So a box can be used two ways (:func:`box_outline`): "ensemble_first" keeps
the ensemble's structure, trimmed to the box, where it lies in the box, and lets the
box-prompted decoder draw it only where the ensemble put it elsewhere; "sam" always takes the
box-prompted decoder's mask. Chosen per structure (:data:`DEFAULT_POLICY`) on the out-of-fold
frames with jittered ground-truth boxes, by the AoP error: the PS by "ensemble_first", the head
by "sam" (``python -m experiments.measure_correction``; the table is in the model card's
"Correcting a structure with a box"). The corrected structure replaces the ensemble's; the other
structure is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from psfh.core.errors import PSFHInputError
from psfh.core.labels import BACKGROUND, CLASSES, FH, PS, largest_component

# What a caller may call a structure: "ps" / "fh" or the class names.
STRUCTURE_NAMES = {"ps": PS, "fh": FH, CLASSES[PS]: PS, CLASSES[FH]: FH}
Box = tuple[float, float, float, float]


def check_boxes(boxes: Mapping[str, Sequence[float]] | None, size: tuple[int, int]) -> dict[int, Box]:
    """{"ps" or "fh": (x0, y0, x1, y1)} in image pixels -> {label value: box}, checked.

    Boxes are clipped to the H x W image; one that is not four finite numbers, has x1 <= x0 or
    y1 <= y0, or lies wholly outside the image is an error that says which structure it was for.
    """
    if not boxes:
        return {}
    if not isinstance(boxes, Mapping):
        raise PSFHInputError(f"boxes must map a structure to its box, e.g. {{'ps': (x0, y0, x1, y1)}}, not {boxes!r}")
    height, width = size
    checked = {}
    for key, box in boxes.items():
        value = STRUCTURE_NAMES.get(str(key).lower())
        if value is None:
            raise PSFHInputError(f"box for {key!r}: the structures are 'ps' (pubic symphysis) and 'fh' (fetal head)")
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise PSFHInputError(f"box for {key!r} must be four numbers (x0, y0, x1, y1), not {box!r}") from None
        if not all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
            raise PSFHInputError(f"box for {key!r} must have x0 < x1 and y0 < y1 (image pixels), not {box!r}")
        clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, width - 1.0), min(y1, height - 1.0))
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            raise PSFHInputError(f"box for {key!r} {box!r} lies outside the {width} x {height} image")
        checked[value] = clipped
    return checked


def box_to_input(box: Box, size: tuple[int, int], input_size: int) -> torch.Tensor:
    """An image-pixel box -> 1 x 1 x 4 in model-input coordinates (what SamModel's ``input_boxes`` takes)."""
    height, width = size
    x0, y0, x1, y1 = box
    scale_x, scale_y = input_size / width, input_size / height
    return torch.tensor([[[x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y]]], dtype=torch.float32)


def box_mask_logits(sam, image_embedding: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """One structure's mask logits from a SamModel's decoder prompted with one box: s x s, the
    decoder's own output grid (4x the embedding grid; :func:`mask_from_logits` brings it to the image).

    Args:
        sam: the SamModel (adapters off: the base's decoder).
        image_embedding: 1 x C x g x g, the base encoder's embedding of the image.
        box: 1 x 1 x 4 in model-input coordinates (:func:`box_to_input`).
    """
    output = sam(image_embeddings=image_embedding, input_boxes=box.to(image_embedding.device), multimask_output=False)
    return output.pred_masks[0, 0, 0].float()


def mask_from_logits(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """s x s logits -> H x W bool mask (bilinear to the image in one step, > 0, largest component)."""
    resized = F.interpolate(logits[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return largest_component((resized > 0).cpu().numpy())


POLICIES = ("ensemble_first", "sam")
DEFAULT_POLICY = {PS: "ensemble_first", FH: "sam"}
# "ensemble_first": the ensemble's outline is kept when at least this share of it lies in the
# box, widened by the margin (two clicks are a few pixels off; a tight box must not trim the outline).
MIN_SHARE_IN_BOX = 0.5
BOX_MARGIN_PX = 5


def box_outline(ensemble_mask: np.ndarray, prompted_mask: np.ndarray, box: Box, policy: str = "ensemble_first",
                ) -> np.ndarray:
    """The corrected structure's H x W mask from the ensemble's mask, the box-prompted mask and the box."""
    if policy not in POLICIES:
        raise PSFHInputError(f"box policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    if policy == "sam" or not ensemble_mask.any():
        return prompted_mask
    x0, y0, x1, y1 = box
    rows, cols = np.indices(ensemble_mask.shape)
    m = BOX_MARGIN_PX
    inside = (cols >= x0 - m) & (cols <= x1 + m) & (rows >= y0 - m) & (rows <= y1 + m)
    kept = ensemble_mask & inside
    if kept.sum() < MIN_SHARE_IN_BOX * ensemble_mask.sum():
        return prompted_mask  # the ensemble's structure is elsewhere: the box-prompted decoder draws it
    return largest_component(kept)


def fuse(label_map: np.ndarray, corrected: Mapping[int, np.ndarray]) -> np.ndarray:
    """The label map with each corrected structure replaced by its new H x W mask.

    The structure's old pixels become background; its new mask is written over anything (the
    user's box is the latest word there); the other structure keeps its remaining pixels.
    """
    fused = label_map.copy()
    for value in corrected:
        fused[fused == value] = BACKGROUND
    for value, mask in corrected.items():
        fused[mask] = value
    return fused
