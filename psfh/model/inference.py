"""The inference steps, each a function you can call alone.

image (H x W) -> :func:`framing` (where it lies on the model's grid) -> :func:`preprocess`
    -> pixel values (1 x 3 x S x S)
    -> :func:`tta_views` (identity, horizontal flip) -> per-fold class probabilities
       (:func:`mask_logits` under each fold adapter, :func:`undo_tta`)
    -> :func:`ensemble` (soft mean of the F x V members, fold disagreement)
    -> :func:`to_label_map` (back to H x W with the framing, argmax, largest connected component per class)

**Framing** (issue 31): ultrasound machines export frames at many sizes, the sector anywhere on a
black canvas. A frame of the model's own size S x S (a PSFHS frame, what the model was trained on)
is its model input as it is, min-max scaled. Any other frame is brought to that form: its
*content* (the bounding box of its pixels above the frame's minimum: the canvas around the sector
carries nothing) is min-max scaled with the frame's minimum and maximum, resized with its aspect
ratio kept (each grid cell the mean of its frame pixels when shrinking, bilinear when growing) so
that its long side spans the grid, and placed at the top of the grid (the probe's side), centred across; the rest of the grid is the
background (0, the frame's minimum). So a frame is never stretched, and gives the same model
input on any canvas (other than S x S), wherever it lies on it. A PSFHS frame's content starts at
its top row; where it also spans the full width (80 of the 100 test frames) the frame on any
canvas is exactly the frame itself; where it leaves a black band at the side (15 pixels on the
left: the other 20), on a canvas it is centred, a few pixels from where the frame has it
(docs/results/size_invariance measures what that moves). S x S frames are kept as they are
because the model is that sensitive to a shift: centring the 20 frames' content changed their
AoP by 1.97 deg on average (up to 9.4).

**Which grid the answer is on.** The class probabilities are mapped back from the grid to the
frame's own H x W pixels (bilinear on the probabilities, the exact inverse of the framing; frame
pixels off the grid are background), and the label map, the AoP and the HSD are measured there,
on the frame's grid. The same model output measured on a frame of 256 to 2048 pixels gives AoPs
within 0.25 deg (docs/results/size_invariance): what moves the AoP between sizes is the model's
input (resampling), not where it is measured.

Training feeds the network through the same functions (:mod:`psfh.training.sources`,
:mod:`psfh.training.embedding_cache`): :func:`frame_labels` puts a label map where
:func:`unit_grid` puts its image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from psfh.core.errors import PSFHInputError
from psfh.core.labels import largest_components
from psfh.io.pixels import MIN_SIDE

# A frame's content longer than this many times its width (or the reverse) leaves too few model
# pixels across it (at S = 256: 64) to hold the anatomy; ultrasound exports are at most about 2:1.
MAX_ASPECT_RATIO = 4.0


@dataclass(frozen=True)
class Framing:
    """Where an H x W frame lies on the model's S x S grid (see the module's "Framing").

    Attributes:
        size: (H, W) of the frame.
        content: (top, left, height, width) of the frame's content box, in frame pixels.
        grid: (top, left, height, width) of the content on the model's grid; the long side is S.
        input_size: S.
    """

    size: tuple[int, int]
    content: tuple[int, int, int, int]
    grid: tuple[int, int, int, int]
    input_size: int

    @property
    def identity(self) -> bool:
        """True when the frame is its own model input: an S x S frame (:func:`framing` keeps every
        one as it is), or one whose content already lies where the framing puts it. Nothing is
        resized or moved."""
        side = self.input_size
        return self.size == (side, side) and self.content == self.grid

    def to_grid(self, x: float, y: float) -> tuple[float, float]:
        """A point (x, y) in frame pixel coordinates (SAM's box convention: a coordinate scales by
        the size ratio) -> the same point on the model's grid."""
        top, left, height, width = self.content
        grid_top, grid_left, grid_height, grid_width = self.grid
        return (x - left) * grid_width / width + grid_left, (y - top) * grid_height / height + grid_top


def box_to_grid(box, framed: Framing) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) in frame pixels -> the same box on the model's grid."""
    x0, y0 = framed.to_grid(box[0], box[1])
    x1, y1 = framed.to_grid(box[2], box[3])
    return x0, y0, x1, y1


def content_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the pixels above the image's minimum; the whole image when
    every pixel is at the minimum (a constant image, refused by :func:`scale_to_unit`)."""
    above = np.asarray(pixels) > np.min(pixels)
    rows, cols = np.flatnonzero(above.any(axis=1)), np.flatnonzero(above.any(axis=0))
    if rows.size == 0:
        return 0, 0, above.shape[0], above.shape[1]
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def place(height: int, width: int, input_size: int, name: str = "image") -> tuple[int, int, int, int]:
    """Content of height x width -> (top, left, height, width) on the S x S grid: aspect kept, long
    side S, at the top, centred across. Refuses content too thin for the model to see."""
    long, short = max(height, width), min(height, width)
    if short < MIN_SIDE or long > MAX_ASPECT_RATIO * short:
        raise PSFHInputError(
            f"{name}: its content (the pixels above the image's minimum) spans {width} x {height} pixels; "
            f"psfh needs at least {MIN_SIDE} pixels each way and at most {MAX_ASPECT_RATIO:g} times longer "
            "than wide (crop the frame to its ultrasound sector)")
    scale = input_size / long
    grid_height, grid_width = max(1, round(height * scale)), max(1, round(width * scale))
    return 0, (input_size - grid_width) // 2, grid_height, grid_width


def framing(pixels: np.ndarray, input_size: int, name: str = "image") -> Framing:
    """How :func:`unit_grid` puts the H x W image ``pixels`` on the S x S grid: an S x S frame as it
    is (the identity), any other frame by its content box."""
    pixels = np.asarray(pixels)
    if pixels.shape[:2] == (input_size, input_size):
        return whole_frame(pixels.shape[:2], input_size, name)
    content = content_box(pixels)
    return Framing(tuple(pixels.shape[:2]), content, place(content[2], content[3], input_size, name), input_size)


def whole_frame(size: tuple[int, int], input_size: int, name: str = "image") -> Framing:
    """The framing of an H x W frame taken whole (its content box is the frame): for maps of a frame
    whose pixels are not at hand. An S x S frame's is the identity."""
    height, width = (int(v) for v in size)
    return Framing((height, width), (0, 0, height, width), place(height, width, input_size, name), input_size)


def scale_to_unit(pixels: np.ndarray, name: str = "image") -> np.ndarray:
    """Min-max scale an H x W image to [0, 1] (float32); a constant image is an error."""
    low, high = float(pixels.min()), float(pixels.max())
    if high - low <= 1e-12:
        raise PSFHInputError(f"{name}: the image is constant (every pixel is {low:g}); nothing to segment")
    return ((pixels - low) / (high - low)).astype(np.float32)


def unit_grid(pixels: np.ndarray, input_size: int, name: str = "image", framed: Framing | None = None) -> torch.Tensor:
    """H x W grayscale image (any intensity scale) -> 1 x 1 x S x S float32 in [0, 1] on the model's grid.

    The image is min-max scaled to [0, 1] (as MedSAM / LiteMedSAM do), its content cropped, resized
    with its aspect ratio kept (averaged over each grid cell when shrinking, bilinear when growing)
    and placed on the grid as
    ``framed`` (default :func:`framing` of the image) says; the rest of the grid is 0. Training
    (:class:`psfh.training.sources.ImageSource`) and inference (:func:`preprocess`) both start here,
    so the model never sees a frame prepared another way than it was trained on.
    """
    pixels = np.asarray(pixels)
    unit = scale_to_unit(pixels, name)  # with the whole frame's minimum and maximum
    framed = framed or framing(pixels, input_size, name)
    if framed.identity:
        return torch.from_numpy(unit)[None, None]
    top, left, height, width = framed.content
    content = torch.from_numpy(np.ascontiguousarray(unit[top:top + height, left:left + width]))[None, None]
    grid_top, grid_left, grid_height, grid_width = framed.grid
    if grid_height < height and grid_width < width:
        # Shrinking: the mean of each grid cell's frame pixels (a box filter). Of the anti-aliased
        # resizers it brings an upscaled export back closest to the frame it was made from (exactly,
        # for a whole-number nearest-neighbour upscale; docs/results/size_invariance/resamplers.txt).
        content = F.interpolate(content, size=(grid_height, grid_width), mode="area")
    elif (height, width) != (grid_height, grid_width):
        content = F.interpolate(content, size=(grid_height, grid_width), mode="bilinear", align_corners=False,
                                antialias=True)
    grid = torch.zeros(1, 1, input_size, input_size, dtype=torch.float32)
    grid[..., grid_top:grid_top + grid_height, grid_left:grid_left + grid_width] = content
    return grid


def preprocess(pixels: np.ndarray, input_size: int, pixel_mean, pixel_std, name: str = "image",
               framed: Framing | None = None) -> torch.Tensor:
    """H x W grayscale image (any intensity scale) -> 1 x 3 x S x S normalised model input:
    :func:`unit_grid`, repeated to three channels, normalised with the base's per-channel mean and std."""
    return normalize(unit_grid(pixels, input_size, name, framed), pixel_mean, pixel_std)


def frame_labels(labels: np.ndarray, framed: Framing) -> np.ndarray:
    """An H x W label map of the frame -> S x S uint8 where :func:`unit_grid` puts its image: the
    content box resized by nearest neighbour (torch's "nearest-exact"), the rest background."""
    labels = np.asarray(labels)
    if tuple(labels.shape) != framed.size:
        raise PSFHInputError(f"label map of shape {labels.shape} for a frame of {framed.size}")
    if framed.identity:
        return labels.astype(np.uint8)
    top, left, height, width = framed.content
    grid_top, grid_left, grid_height, grid_width = framed.grid
    box = torch.from_numpy(np.ascontiguousarray(labels[top:top + height, left:left + width])).float()[None, None]
    box = F.interpolate(box, size=(grid_height, grid_width), mode="nearest-exact")[0, 0].to(torch.uint8)
    out = torch.zeros(framed.input_size, framed.input_size, dtype=torch.uint8)
    out[grid_top:grid_top + grid_height, grid_left:grid_left + grid_width] = box
    return out.numpy()


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


def _axis(count: int, start: int, length: int, grid_start: int, grid_length: int, side: int, cells: int):
    """Bilinear sampling along one axis: frame pixels 0..count-1 -> indices (lower, upper) into a
    map of ``cells`` over the grid's ``side`` pixels, the upper's weight, and which frame pixels lie
    on the grid (torch's ``align_corners=False`` convention: pixel centres, clamped within half a
    pixel of the edge)."""
    position = (torch.arange(count, dtype=torch.float64) - start + 0.5) * (grid_length / length) + grid_start
    inside = (position >= 0) & (position <= side)
    position = (position * (cells / side) - 0.5).clamp(0, cells - 1)
    lower = position.floor().long()
    upper = (lower + 1).clamp(max=cells - 1)
    return lower, upper, (position - lower).float(), inside


def to_frame(values: torch.Tensor, framed: Framing, fill) -> torch.Tensor:
    """C x G x G map over the model's grid (G = S, or the box decoder's coarser grid) -> C x H x W
    on the frame (bilinear, the inverse of the framing); frame pixels off the grid get ``fill``
    (one value, or one per channel)."""
    values = values.float()
    cells = values.shape[-1]
    if framed.identity and cells == framed.input_size:
        return values
    side = framed.input_size
    if framed.content == (0, 0) + tuple(framed.size) and framed.grid == (0, 0, side, side):
        # A square frame filling the grid: a plain resize, torch's own (the same numbers, faster).
        return F.interpolate(values[None], size=framed.size, mode="bilinear", align_corners=False)[0]
    (height, width), (top, left, content_h, content_w) = framed.size, framed.content
    grid_top, grid_left, grid_h, grid_w = framed.grid
    rows = _axis(height, top, content_h, grid_top, grid_h, side, cells)
    cols = _axis(width, left, content_w, grid_left, grid_w, side, cells)
    by_row = values[:, rows[0]] * (1 - rows[2])[None, :, None] + values[:, rows[1]] * rows[2][None, :, None]
    out = by_row[:, :, cols[0]] * (1 - cols[2]) + by_row[:, :, cols[1]] * cols[2]
    off = ~(rows[3][:, None] & cols[3][None, :])
    if off.any():
        fill = torch.as_tensor(fill, dtype=out.dtype).reshape(-1, 1).expand(out.shape[0], 1)
        out = torch.where(off[None], fill[:, :, None], out)
    return out


def _framed(framed: Framing | tuple[int, int], input_size: int) -> Framing:
    return framed if isinstance(framed, Framing) else whole_frame(framed, input_size)


def resize_map(values: torch.Tensor, framed: Framing | tuple[int, int]) -> torch.Tensor:
    """C x S x S (or S x S) float map on the grid -> C x H x W (or H x W) on the frame, bilinear
    (:func:`to_frame`, 0 off the grid). ``framed``: the frame's :class:`Framing`, or its (H, W)
    size for a frame taken whole (:func:`whole_frame`)."""
    squeeze = values.ndim == 2
    batch = values[None] if squeeze else values
    out = to_frame(batch, _framed(framed, batch.shape[-1]), 0.0)
    return out[0] if squeeze else out


def to_label_map(probabilities: torch.Tensor, framed: Framing | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """C x S x S probabilities -> (H x W uint8 label map after LCC, C x H x W float32 probabilities).

    ``framed``: as in :func:`resize_map`; frame pixels off the grid are background (probability 1).
    The label map keeps only the largest connected component of each structure
    (:func:`psfh.core.labels.largest_components`).
    """
    background = [1.0] + [0.0] * (probabilities.shape[0] - 1)
    resized = to_frame(probabilities, _framed(framed, probabilities.shape[-1]), background)
    labels = resized.argmax(dim=0).to(torch.uint8).numpy()
    return largest_components(labels), resized.numpy().astype(np.float32)
