"""The label vocabulary, in one place: class values and names, the label-map check, largest components.

A label map is an H x W array of class values: 0 background, 1 pubic symphysis (PS), 2 fetal
head (FH), the values of the PSFHS / FH-PS-AOP 2023 label files and of the model's three output
channels (background, PS, FH), in that order. numpy only: no torch, so the AoP, the metrics and
the file readers stay light.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from psfh.core.errors import PSFHInputError

BACKGROUND, PS, FH = 0, 1, 2
LABEL_VALUES = (BACKGROUND, PS, FH)
# Output channel order of the model and the package config's ``classes``.
CLASSES = ("background", "pubic_symphysis", "fetal_head")
# The two structures' label values, and the short names tables and summaries use for them.
STRUCTURE_VALUES = (PS, FH)
SHORT_NAMES = {PS: "PS", FH: "FH"}
VALUES_TEXT = "0 (background), 1 (pubic symphysis), 2 (fetal head)"

# Full (8-) connectivity: diagonal neighbours join a component (MONAI's default too).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
MAX_LISTED_VALUES = 10


def check_label_map(label_map, name: str = "label_map") -> np.ndarray:
    """Check an H x W label map and return it as uint8, or raise PSFHInputError naming ``name``.

    Accepted: integer or boolean arrays, and float arrays of whole numbers (a label map that went
    through torch); every value must be one of :data:`LABEL_VALUES`. Refused: other shapes, empty
    maps, probabilities, NaN, and any other value (silently ignoring e.g. a 255 would score or
    measure a wrong map as if its structure were missing).
    """
    array = np.asarray(label_map)
    if array.ndim != 2:
        raise PSFHInputError(f"{name} has shape {array.shape}; expected H x W (a 2-D label map)")
    if array.size == 0:
        raise PSFHInputError(f"{name} is empty (shape {array.shape})")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind not in "uif":
        raise PSFHInputError(f"{name} must hold integer labels {VALUES_TEXT}; got dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):  # NaN and inf fail too
        raise PSFHInputError(f"{name} must hold integer labels {VALUES_TEXT}; got fractional values "
                             f"(dtype {array.dtype}: probabilities, not labels?)")
    unexpected = np.setdiff1d(np.unique(array), LABEL_VALUES)
    if unexpected.size:
        raise PSFHInputError(f"{name} holds label values {unexpected[:MAX_LISTED_VALUES].tolist()}; expected only "
                             f"{VALUES_TEXT}")
    return array.astype(np.uint8)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """H x W bool -> H x W bool: the largest 8-connected component (all False when ``mask`` is).

    Of equal components, the first in raster order is kept.
    """
    components, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0  # background is not a component
    return components == int(np.argmax(sizes))


def largest_components(label_map: np.ndarray) -> np.ndarray:
    """Keep only the largest connected component of each structure: H x W label map -> H x W uint8.

    The rest of a structure's pixels become background, so stray islands of a predicted mask do
    not move the AoP construction or the distances.
    """
    labels = check_label_map(label_map)
    kept = np.zeros_like(labels)
    for value in STRUCTURE_VALUES:
        kept[largest_component(labels == value)] = value
    return kept


def structure_areas(label_map: np.ndarray) -> dict[str, int]:
    """Pixels per structure: {"pubic_symphysis": n, "fetal_head": n} (the report's names)."""
    labels = np.asarray(label_map)
    return {CLASSES[value]: int((labels == value).sum()) for value in STRUCTURE_VALUES}
