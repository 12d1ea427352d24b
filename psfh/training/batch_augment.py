"""The paper recipe's augmentations on a whole batch, in torch, on the training device.

The same kinds, probabilities and ranges as the MONAI transforms of
:func:`psfh.training.augment.paper_augmentations` (:data:`PAPER_RANGES` holds them, and a test
reads them off the MONAI Compose), applied in this order, each sample drawing its own:

1. horizontal flip (p 0.5);
2. affine (p 0.3): rotation U(-0.26, 0.26) rad about the centre, scale 1 + U(-0.1, 0.1) per axis,
   translation U(-16, 16) px per axis; outside the frame: zeros (MONAI RandAffined);
3. zoom (p 0.3): one factor U(0.9, 1.1) about the centre; outside: the edge pixels repeated (MONAI
   RandZoomd, keep_size, padding "edge");
4. Gaussian noise (p 0.3): N(0, s^2) with s ~ U(0, 0.03) per image (MONAI RandGaussianNoised);
5. Gaussian blur (p 0.2): sigma ~ U(0.5, 1.0) per axis, erf-sampled kernel truncated at 4 sigma,
   zero padding (MONAI RandGaussianSmoothd).

The flip is exact; the affine and the zoom are one ``affine_grid``/``grid_sample`` each for the
batch (image bilinear, label nearest: the labels stay integer classes). Image and label move
together. Every random number comes from the generator passed in (on the CPU), so a batch is a
pure function of its seed on any device; the pixels are then warped where they are (a GPU). No
MONAI here: the GPU machine does not have it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentRanges:
    """Probabilities and ranges of the paper recipe's augmentations (see the module docstring)."""

    flip_prob: float = 0.5
    affine_prob: float = 0.3
    rotate_range: float = 0.26              # radians, symmetric
    translate_range: float = 16.0           # pixels, symmetric, per axis
    scale_range: float = 0.1                # scale factor 1 +- this, per axis
    zoom_prob: float = 0.3
    min_zoom: float = 0.9
    max_zoom: float = 1.1
    noise_prob: float = 0.3
    noise_std: float = 0.03                 # the noise's std is drawn from U(0, noise_std)
    smooth_prob: float = 0.2
    sigma_range: tuple[float, float] = (0.5, 1.0)
    truncated: float = 4.0                  # blur kernel radius: int(truncated * sigma + 0.5)


PAPER_RANGES = AugmentRanges()


def _uniform(generator, count: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64).float()


def sampling_matrices(angle: torch.Tensor, scale: torch.Tensor, shift_px: torch.Tensor, size: int) -> torch.Tensor:
    """B x 2 x 3 ``affine_grid`` matrices (output -> input, normalised coordinates, align_corners False)
    of a square S x S frame: content rotated by ``angle`` (radians; positive turns +x towards +y, i.e.
    clockwise on screen, rows pointing down), scaled by ``scale`` (B x 2: x, y; > 1 enlarges) about
    the centre, then moved by ``shift_px`` (B x 2: x right, y down, in pixels)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    # forward map (input -> output) in centred normalised coordinates: out = R S in + t
    forward = torch.zeros(len(angle), 3, 3)
    forward[:, 0, 0], forward[:, 0, 1] = cos * scale[:, 0], -sin * scale[:, 1]
    forward[:, 1, 0], forward[:, 1, 1] = sin * scale[:, 0], cos * scale[:, 1]
    forward[:, :2, 2] = shift_px * (2.0 / size)
    forward[:, 2, 2] = 1.0
    return torch.linalg.inv(forward)[:, :2]  # grid_sample asks, for each output pixel, where to read


def warp(images: torch.Tensor, labels: torch.Tensor, theta: torch.Tensor, padding: str,
         soft: torch.Tensor | None = None):
    """Resample B x 1 x S x S images (bilinear) and B x S x S integer labels (nearest) by ``theta``;
    with ``soft`` (B x 3 x S x S class probabilities, background first) -> (images, labels, soft):
    PS and FH bilinear, background the rest (so what comes in from outside is background)."""
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    moved = F.grid_sample(labels[:, None].to(images.dtype), grid, mode="nearest", padding_mode=padding,
                          align_corners=False)
    moved = moved[:, 0].round().to(labels.dtype)
    if soft is None:
        return warped, moved
    foreground = F.grid_sample(soft[:, 1:].to(images.dtype), grid, mode="bilinear", padding_mode=padding,
                               align_corners=False)
    background = (1 - foreground.sum(1, keepdim=True)).clamp(min=0)
    return warped, moved, torch.cat([background, foreground], 1).to(soft.dtype)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """B sigmas -> B x (2 radius + 1) erf-sampled 1-D Gaussian kernels (MONAI's ``approx="erf"``),
    zero beyond each sigma's own truncation radius."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)[None]
    s = sigma.double()[:, None] * math.sqrt(2.0)
    kernel = 0.5 * (torch.erf((x + 0.5) / s) - torch.erf((x - 0.5) / s))
    own_radius = (PAPER_RANGES.truncated * sigma.double() + 0.5).floor()[:, None]
    return torch.where(x.abs() <= own_radius, kernel, torch.zeros_like(kernel)).float()


def blur(images: torch.Tensor, sigma_x: torch.Tensor, sigma_y: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of B x 1 x S x S images, each its own sigmas (zero padding)."""
    batch = len(images)
    radius = int(PAPER_RANGES.truncated * float(max(sigma_x.max(), sigma_y.max())) + 0.5)
    kx = gaussian_kernels(sigma_x, radius).to(images.device, images.dtype)
    ky = gaussian_kernels(sigma_y, radius).to(images.device, images.dtype)
    grouped = images.reshape(1, batch, *images.shape[-2:])  # one conv group per image
    grouped = F.conv2d(grouped, kx.view(batch, 1, 1, -1), padding=(0, radius), groups=batch)
    grouped = F.conv2d(grouped, ky.view(batch, 1, -1, 1), padding=(radius, 0), groups=batch)
    return grouped.view_as(images)


class BatchAugmentation:
    """The paper recipe's augmentations for a batch on any device: ``(images, labels) -> same``.

    images: B x 1 x S x S float in [0, 1] (before normalisation); labels: B x S x S integer classes;
    optionally soft labels B x 3 x S x S (a teacher's class probabilities: distillation), moved with them.
    """

    def __init__(self, ranges: AugmentRanges = PAPER_RANGES):
        self.ranges = ranges

    def draw(self, count: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Every random choice of a batch of ``count`` (on the CPU, from ``generator``)."""
        r = self.ranges

        def chosen(prob):
            return torch.rand(count, generator=generator) < prob

        return {
            "flip": chosen(r.flip_prob),
            "affine": chosen(r.affine_prob),
            "angle": _uniform(generator, count, -r.rotate_range, r.rotate_range),
            "scale": torch.stack([1 + _uniform(generator, count, -r.scale_range, r.scale_range) for _ in "xy"], 1),
            "shift": torch.stack([_uniform(generator, count, -r.translate_range, r.translate_range) for _ in "xy"], 1),
            "zoom": chosen(r.zoom_prob),
            "zoom_factor": _uniform(generator, count, r.min_zoom, r.max_zoom),
            "noise": chosen(r.noise_prob),
            "noise_std": _uniform(generator, count, 0.0, r.noise_std),
            "smooth": chosen(r.smooth_prob),
            "sigma_x": _uniform(generator, count, *r.sigma_range),
            "sigma_y": _uniform(generator, count, *r.sigma_range),
        }

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
                 soft: torch.Tensor | None = None):
        count, size = len(images), images.shape[-1]
        p = self.draw(count, generator)
        noise = torch.randn(images.shape, generator=generator)  # drawn here too: one stream, any device
        device = images.device
        flip = p["flip"].to(device).view(-1, 1, 1, 1)
        images = torch.where(flip, images.flip(-1), images)
        labels = torch.where(flip[:, 0], labels.flip(-1), labels)
        if soft is not None:
            soft = torch.where(flip, soft.flip(-1), soft)
        for step, theta, padding in (("affine", None, "zeros"), ("zoom", None, "border")):
            if not p[step].any():
                continue
            if step == "affine":
                theta = sampling_matrices(p["angle"], p["scale"], p["shift"], size)
            else:
                zoom = p["zoom_factor"]
                theta = sampling_matrices(torch.zeros(count), torch.stack([zoom, zoom], 1), torch.zeros(count, 2), size)
            moved = warp(images, labels, theta, padding, soft)
            chosen = p[step].to(device).view(-1, 1, 1, 1)
            images = torch.where(chosen, moved[0], images)
            labels = torch.where(chosen[:, 0], moved[1], labels)
            if soft is not None:
                soft = torch.where(chosen, moved[2], soft)
        if p["noise"].any():
            std = (p["noise_std"] * p["noise"]).to(device, images.dtype).view(-1, 1, 1, 1)
            images = images + std * noise.to(device, images.dtype)
        if p["smooth"].any():
            blurred = blur(images, p["sigma_x"], p["sigma_y"])
            images = torch.where(p["smooth"].to(device).view(-1, 1, 1, 1), blurred, images)
        return (images, labels) if soft is None else (images, labels, soft)
