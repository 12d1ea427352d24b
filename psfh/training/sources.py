"""Where training batches come from: cached embeddings (CPU recipe) or augmented images (paper).

Both give ``(inputs, labels)`` for a list of sample indices: ``inputs`` are keyword arguments of
:func:`psfh.inference.mask_logits` (``image_embeddings`` or ``pixel_values``), ``labels`` is
B x S x S (long). All randomness comes from the ``generator`` passed in, so an epoch is a pure
function of its seed (which makes resumed runs identical to uninterrupted ones).
"""

from __future__ import annotations

import numpy as np
import torch


class CachedEmbeddingSource:
    """Cached encoder embeddings of two views (identity, horizontal flip) and the labels.

    Args:
        embeddings: {"identity": N x C x g x g, "hflip": N x C x g x g} (any float dtype).
        labels: N x S x S uint8 label maps in image orientation.
    """

    def __init__(self, embeddings: dict[str, torch.Tensor], labels: torch.Tensor):
        self.embeddings = embeddings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: torch.Tensor, generator: torch.Generator | None, augment: bool):
        flip = (torch.rand(len(indices), generator=generator) < 0.5) if augment else torch.zeros(len(indices), dtype=torch.bool)
        embeddings = torch.stack([self.embeddings["hflip" if f else "identity"][i] for i, f in zip(indices.tolist(), flip)])
        labels = torch.stack([self.labels[i].flip(-1) if f else self.labels[i] for i, f in zip(indices.tolist(), flip)])
        return {"image_embeddings": embeddings.float()}, labels.long()


class ImageSource:
    """Images and labels at the model's input size, augmented on the fly with MONAI.

    Args:
        images: N x S x S uint8 (already at the model input size).
        labels: N x S x S uint8.
        pixel_mean, pixel_std: the base's normalisation of [0, 1] images.
        augmentation: a MONAI Compose over {"image", "label"} (or None).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pixel_mean, pixel_std, augmentation=None):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.labels)

    def _item(self, index: int, augment: bool):
        image = self.images[index].float()[None]
        low, high = image.min(), image.max()
        image = (image - low) / (high - low).clamp(min=1e-6)  # the same min-max scaling as inference
        label = self.labels[index][None].float()
        if augment and self.augmentation is not None:
            out = self.augmentation({"image": image, "label": label})
            image, label = torch.as_tensor(np.asarray(out["image"])), torch.as_tensor(np.asarray(out["label"]))
        return (image.expand(3, -1, -1) - self.mean) / self.std, label[0].round().long()

    def batch(self, indices: torch.Tensor, generator: torch.Generator | None, augment: bool):
        if augment and self.augmentation is not None and generator is not None:
            self.augmentation.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        items = [self._item(i, augment) for i in indices.tolist()]
        return {"pixel_values": torch.stack([x for x, _ in items])}, torch.stack([y for _, y in items])
