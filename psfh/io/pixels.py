"""What makes an array a usable image, checked the same way for every reader (images, DICOM, video).

An H x W or H x W x C array of integer or float pixels, within :data:`MIN_SIDE` and
:data:`MAX_PIXELS`, becomes H x W float32 grayscale: exactly the channel when the colour channels
are equal, else ITU-R BT.601 luma. Each problem raises :class:`~psfh.core.errors.PSFHInputError`
naming ``where`` (the file).
"""

from __future__ import annotations

import numpy as np

from psfh.core.errors import PSFHInputError

MAX_PIXELS = 40_000_000  # far above any ultrasound frame; stops a huge file from exhausting memory
# The stored pixels' bytes a reader may decode for one image (checked from the header where a format
# says it): 16-bit RGBA or float64 gray at MAX_PIXELS. More is no frame (thousands of channels).
MAX_DECODED_BYTES = 8 * MAX_PIXELS
MIN_SIDE = 8  # smaller images cannot hold the anatomy and break the network's down-sampling
MAX_CHANNELS = 4
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_grayscale(array: np.ndarray, where: str) -> np.ndarray:
    """H x W or H x W x C array -> H x W float32 grayscale, after checking it is a usable image."""
    check_dtype(array, where)
    if array.ndim < 2 or array.ndim > 3:
        raise PSFHInputError(
            f"{where}: {array.ndim}-D array of shape {array.shape}; "
            "expected H x W or H x W x C (channels last)"
        )
    if array.size == 0:
        raise PSFHInputError(f"{where}: image is empty (shape {array.shape})")
    if array.ndim == 3 and array.shape[2] > MAX_CHANNELS:
        raise PSFHInputError(
            f"{where}: {array.shape[2]} channels (shape {array.shape}); at most {MAX_CHANNELS} "
            "are supported, channels last (H x W x C)"
        )
    check_size(array.shape[0], array.shape[1], where)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise PSFHInputError(f"{where}: image contains NaN or inf values")
    # astype copies: pixels never alias the caller's array.
    return _grayscale(array).astype(np.float32)


def _grayscale(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return array
    channels = array.shape[2]
    if channels <= 2:  # gray, or gray + alpha
        return array[..., 0]
    red, green, blue = array[..., 0], array[..., 1], array[..., 2]  # RGBA: alpha dropped
    if np.array_equal(red, green) and np.array_equal(green, blue):
        return red  # grayscale stored as colour: exactly the channel, no rounding error
    weights = np.asarray(LUMA_WEIGHTS, np.float64)
    return red * weights[0] + green * weights[1] + blue * weights[2]


def check_dtype(array: np.ndarray, where: str) -> None:
    if array.dtype.kind not in "uif":  # unsigned, signed, float
        raise PSFHInputError(
            f"{where}: pixel type {array.dtype} is not supported; use integer or float pixels"
        )


def check_size(height: int, width: int, where: str) -> None:
    if height < MIN_SIDE or width < MIN_SIDE:
        raise PSFHInputError(
            f"{where}: image is {width} x {height} pixels; the minimum is {MIN_SIDE} x {MIN_SIDE}"
        )
    if height * width > MAX_PIXELS:
        raise PSFHInputError(
            f"{where}: image is {width} x {height} = {height * width:,} pixels; "
            f"the limit is {MAX_PIXELS:,} pixels"
        )
