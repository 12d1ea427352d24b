"""Where training batches come from: cached embeddings (CPU recipe) or augmented images (paper).

Both give ``(inputs, labels)`` for a list of sample indices: ``inputs`` are keyword arguments of
:func:`psfh.model.inference.mask_logits` (``image_embeddings`` or ``pixel_values``), ``labels`` is
B x S x S (long). All randomness comes from the ``generator`` passed in, so an epoch is a pure
function of its seed (which makes resumed runs identical to uninterrupted ones). Images go
through the inference preprocessing (:mod:`psfh.model.inference`), so training and serving feed the
network alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from psfh.model import inference
from psfh.training.batch_augment import BatchAugmentation


def shift_2d(tensor: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """... x H x W -> the same, moved down ``dy`` and right ``dx`` (negative: up / left), zero-filled."""
    out = torch.zeros_like(tensor)
    height, width = tensor.shape[-2:]
    if abs(dy) >= height or abs(dx) >= width:
        return out
    out[..., max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        tensor[..., max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def _at_image_size(label, shape: tuple[int, ...]) -> np.ndarray:
    """A label map at its image's H x W: as given, or (an S x S map of a frame of another size,
    resized whole) resized back by nearest neighbour."""
    label = np.asarray(label)
    if label.shape == tuple(shape[:2]):
        return label
    resized = torch.nn.functional.interpolate(torch.from_numpy(label.astype(np.uint8)).float()[None, None],
                                              size=tuple(shape[:2]), mode="nearest-exact")
    return resized[0, 0].to(torch.uint8).numpy()


class CachedEmbeddingSource:
    """Cached encoder embeddings of two views (identity, horizontal flip) and the labels.

    Args:
        embeddings: {"identity": N x C x g x g, "hflip": N x C x g x g} (any float dtype).
        labels: N x S x S uint8 label maps in image orientation (S a multiple of g).
        shift_cells: augmentation: move embedding and label together by up to this many
            embedding cells in each direction (S / g pixels each; the uncovered border becomes
            zero embedding and background). 0: flips only.
    """

    def __init__(self, embeddings: dict[str, torch.Tensor], labels: torch.Tensor, shift_cells: int = 0):
        self.embeddings = embeddings
        self.labels = labels
        self.shift_cells = shift_cells
        self.pixels_per_cell = labels.shape[-1] // embeddings["identity"].shape[-1]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: torch.Tensor, generator: torch.Generator | None, augment: bool):
        count = len(indices)
        flip = (torch.rand(count, generator=generator) < 0.5) if augment else torch.zeros(count, dtype=torch.bool)
        shifts = torch.zeros(count, 2, dtype=torch.long)
        if augment and self.shift_cells:
            shifts = torch.randint(-self.shift_cells, self.shift_cells + 1, (count, 2), generator=generator)
        embeddings, labels = [], []
        for index, flipped, (dy, dx) in zip(indices.tolist(), flip.tolist(), shifts.tolist()):
            embedding = self.embeddings["hflip" if flipped else "identity"][index]
            label = self.labels[index].flip(-1) if flipped else self.labels[index]
            embeddings.append(shift_2d(embedding, dy, dx))
            labels.append(shift_2d(label, dy * self.pixels_per_cell, dx * self.pixels_per_cell))
        return {"image_embeddings": torch.stack(embeddings).float()}, torch.stack(labels).long()


class ImageSource:
    """Images and labels on the model's input grid, augmented on the fly with MONAI.

    Args:
        images: N x H x W grayscale images of any size and intensity scale; each is put on the
            model's S x S grid once, here, by :func:`psfh.model.inference.unit_grid`: the same
            function inference starts with (its framing: content crop, aspect kept, top-centre).
        labels: N label maps (uint8): each at its image's H x W, put on the grid by
            :func:`psfh.model.inference.frame_labels` where its image goes; or N x S x S already
            on the model's grid for images of another size, taken as the whole frame resized
            (what ``psfh.io.dataset.resize_label`` makes): they are brought back to the image's size
            (nearest neighbour) and framed with it.
        input_size: S.
        pixel_mean, pixel_std: the base's normalisation of [0, 1] images.
        augmentation: a MONAI Compose over {"image", "label"}, applied per image on the CPU; or a
            :class:`psfh.training.batch_augment.BatchAugmentation`, applied to the whole batch on
            ``device`` (where the batch is then returned); or None.
        ids: the samples' ids, named in the error for an image the model cannot take.
        device: where batched augmentation runs (the training device); the images are kept there.
    """

    def __init__(self, images, labels, input_size: int, pixel_mean, pixel_std, augmentation=None,
                 ids: Sequence[str] | None = None, device: str | torch.device = "cpu"):
        self.ids = list(ids) if ids is not None else [f"image {n}" for n in range(len(images))]
        grids, framed_labels = [], []
        for sample_id, image, label in zip(self.ids, images, labels):
            image = np.asarray(image)
            framed = inference.framing(image, input_size, sample_id)  # a constant image fails now, not mid-epoch
            grids.append(inference.unit_grid(image, input_size, sample_id, framed)[0])
            framed_labels.append(torch.from_numpy(inference.frame_labels(_at_image_size(label, image.shape), framed)))
        # N x 1 x S x S in [0, 1]; N x S x S uint8
        self.images = torch.cat(grids)[:, None]
        self.labels = torch.stack(framed_labels)
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        self.augmentation = augmentation
        self.batched = isinstance(augmentation, BatchAugmentation)
        self.device = torch.device(device)
        if self.batched:  # kept where the batches are augmented: one copy, no transfer per step
            self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        self.soft_labels = None  # N x 3 x S x S teacher probabilities (set_soft_labels): distillation

    def set_soft_labels(self, probabilities: torch.Tensor) -> None:
        """A teacher's class probabilities of every image on the model grid (N x 3 x S x S, float16
        is enough): training batches then carry them beside the expert's classes (B x 4 x S x S
        targets, :func:`psfh.training.loss.distillation_loss`); validation batches do not."""
        if probabilities.shape != (len(self.labels), 3, *self.labels.shape[-2:]):
            raise ValueError(f"soft labels {tuple(probabilities.shape)} do not match {len(self.labels)} images")
        self.soft_labels = probabilities.to(self.images.device)

    def _with_soft(self, labels: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        return torch.cat([labels[:, None].to(soft.dtype), soft], dim=1).float()

    def __len__(self) -> int:
        return len(self.labels)

    def _item(self, index: int, augment: bool):
        image = self.images[index].cpu()
        label = self.labels[index][None].float().cpu()
        if augment and self.augmentation is not None:
            out = self.augmentation({"image": image, "label": label})
            image, label = torch.as_tensor(np.asarray(out["image"])), torch.as_tensor(np.asarray(out["label"]))
        return inference.normalize(image[None], self.pixel_mean, self.pixel_std)[0], label[0].round().long()

    def batch(self, indices: torch.Tensor, generator: torch.Generator | None, augment: bool):
        if augment and self.batched:
            index = indices.to(self.device)
            soft = None if self.soft_labels is None else self.soft_labels[index]
            images, labels, *soft = self.augmentation(self.images[index], self.labels[index].long(), generator, soft=soft)
            if soft:
                labels = self._with_soft(labels, soft[0])
            mean = torch.tensor(self.pixel_mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(self.pixel_std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
            return {"pixel_values": (images.expand(-1, 3, -1, -1) - mean) / std}, labels
        if augment and self.augmentation is not None and generator is not None:
            self.augmentation.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        if augment and self.soft_labels is not None:
            raise ValueError("soft labels are moved with the images by the batched (device) augmentation only")
        items = [self._item(i, augment) for i in indices.tolist()]
        return {"pixel_values": torch.stack([x for x, _ in items])}, torch.stack([y for _, y in items])
