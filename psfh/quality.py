"""When not to trust a result: checks on the input frame and on the segmentation, with reasons.

Each check compares one measure with a bound calibrated on data the model was not tested on: the
ground truth of the 978 cross-validation frames and the package's out-of-fold predictions
(``scripts/calibrate_quality.py``; never the 100 test frames). A failed check says why in plain
words; a result with any failed check is flagged "check this result" and its AoP is withheld
(the number is still computed and reported beside the flag, so nothing is hidden from a
reviewer).

Input: an ultrasound frame has many grey levels and a dark background around the ultrasound
sector (PSFHS frames: at least 205 levels and 8.8 % black pixels); a label map, a drawing or
text has few levels, a photograph or noise no dark background.
Result: the fetal head is a smooth, convex (elliptical) skull outline, the pubic symphysis a
compact structure a tenth of the head's size, and neither is cut off by the image border.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from psfh.labels import FH, PS, check_label_map

# Bounds, from scripts/calibrate_quality.py (docs/results/quality/calibration.json): each is
# beyond every ground-truth frame and flags about 1 % of out-of-fold predictions or fewer.
MIN_GREY_LEVELS = 32
MIN_DARK_FRACTION = 0.02
MIN_FH_SOLIDITY = 0.90
MIN_PS_SOLIDITY = 0.78
PS_TO_FH_AREA = (0.03, 0.35)
MAX_BORDER_PIXELS = 0


@dataclass(frozen=True)
class QualityCheck:
    """The verdict on one input and result.

    Attributes:
        reasons: what failed, in plain words (empty when the result can be trusted).
        measures: the numbers the checks looked at.
    """

    reasons: list[str] = field(default_factory=list)
    measures: dict[str, float] = field(default_factory=dict)

    @property
    def trusted(self) -> bool:
        """False when any check failed: show "check this result" and withhold the AoP."""
        return not self.reasons

    def to_dict(self) -> dict:
        return {"trusted": self.trusted, "reasons": list(self.reasons),
                "measures": {k: round(float(v), 4) for k, v in self.measures.items()}}


def solidity(mask: np.ndarray) -> float:
    """Area over convex-hull area of a mask (1.0: convex; a ragged or fragmented outline is lower)."""
    rows, cols = np.nonzero(mask)
    if len(rows) < 3:
        return 0.0
    # Pixel corners, so that a convex block of pixels scores 1 and thin lines are handled.
    corners = np.concatenate([np.column_stack([cols + dx, rows + dy]) for dx in (0, 1) for dy in (0, 1)])
    try:
        hull_area = ConvexHull(corners).volume  # in 2-D, "volume" is the area
    except (QhullError, ValueError):
        return 0.0
    return float(len(rows) / hull_area)


def border_pixels(mask: np.ndarray) -> int:
    """Pixels of the mask on the image's outermost rows and columns."""
    return int(mask[0].sum() + mask[-1].sum() + mask[1:-1, 0].sum() + mask[1:-1, -1].sum())


def measure(image: np.ndarray, label_map: np.ndarray) -> dict[str, float]:
    """The measures the checks use, for an H x W uint8 image and its H x W label map."""
    labels = check_label_map(label_map)
    ps, fh = labels == PS, labels == FH
    image = np.asarray(image)
    return {
        "grey_levels": float(len(np.unique(image))),
        "dark_fraction": float((image == 0).mean()),
        "fh_solidity": solidity(fh) if fh.any() else 0.0,
        "ps_solidity": solidity(ps) if ps.any() else 0.0,
        "ps_to_fh_area": float(ps.sum() / fh.sum()) if fh.any() else 0.0,
        "border_pixels": float(border_pixels(ps) + border_pixels(fh)),
    }


def check(image: np.ndarray, label_map: np.ndarray) -> QualityCheck:
    """Check an input frame (H x W uint8, as shown to the user) and its label map."""
    m = measure(image, label_map)
    reasons = []
    if m["grey_levels"] < MIN_GREY_LEVELS:
        reasons.append(f"the image has only {m['grey_levels']:.0f} grey levels: it looks like a label map, a "
                       "drawing or text, not an ultrasound frame")
    elif m["dark_fraction"] < MIN_DARK_FRACTION:
        reasons.append(f"the image has almost no dark background ({100 * m['dark_fraction']:.1f} % black "
                       "pixels) around an ultrasound sector: it does not look like a transperineal ultrasound "
                       "frame")
    if m["fh_solidity"] < MIN_FH_SOLIDITY and m["fh_solidity"] > 0:
        reasons.append(f"the fetal head outline is not the smooth convex shape of a skull (solidity "
                       f"{m['fh_solidity']:.2f}, expected at least {MIN_FH_SOLIDITY:.2f})")
    if m["ps_solidity"] < MIN_PS_SOLIDITY and m["ps_solidity"] > 0:
        reasons.append(f"the pubic symphysis outline is ragged (solidity {m['ps_solidity']:.2f}, expected at "
                       f"least {MIN_PS_SOLIDITY:.2f})")
    low, high = PS_TO_FH_AREA
    if m["fh_solidity"] > 0 and m["ps_solidity"] > 0 and not low <= m["ps_to_fh_area"] <= high:
        reasons.append(f"the pubic symphysis is {m['ps_to_fh_area']:.3f} times the head's area, outside the usual "
                       f"{low:g}-{high:g}")
    if m["border_pixels"] > MAX_BORDER_PIXELS:
        reasons.append("a structure touches the image border: the anatomy may be cut off (a cropped frame?)")
    return QualityCheck(reasons=reasons, measures=m)
