"""MONAI augmentations of the paper's recipe (horizontal flip, Gaussian noise, blur, zoom, affine).

They act on a dictionary {"image": 1 x S x S float in [0, 1], "label": 1 x S x S} so that
spatial transforms move image and label together (labels with nearest-neighbour sampling).
"""

from __future__ import annotations

from monai.transforms import Compose, RandAffined, RandFlipd, RandGaussianNoised, RandGaussianSmoothd, RandZoomd


def paper_augmentations() -> Compose:
    """The paper's augmentation families with moderate strengths (their exact values are unpublished)."""
    keys = ("image", "label")
    return Compose([
        RandFlipd(keys, prob=0.5, spatial_axis=1),  # axis 1 of H x W: left-right
        RandAffined(keys, prob=0.3, rotate_range=0.26, translate_range=(16, 16), scale_range=(0.1, 0.1),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandZoomd(keys, prob=0.3, min_zoom=0.9, max_zoom=1.1, mode=("bilinear", "nearest"), keep_size=True),
        RandGaussianNoised("image", prob=0.3, std=0.03),
        RandGaussianSmoothd("image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0)),
    ])
