"""When not to trust a result: checks on the input frame and on the segmentation, with reasons.

Each check compares one measure with a bound calibrated on data the model was not tested on: the
ground truth of the cross-validation frames and the package's out-of-fold predictions
(``python -m experiments.calibrate_quality``; never the held-out test frames). A failed check says why in plain
words; a result with any failed check is flagged "check this result" and its AoP is withheld
(the number is still computed and reported beside the flag, so nothing is hidden from a
reviewer).

Input: an ultrasound frame has many grey levels and a dark background around the ultrasound
sector (the PSFHS frames' ranges: model card, "Trust"); a label map, a drawing or text has few
levels, a photograph or noise no dark background.
Result: the fetal head is a smooth, convex (elliptical) skull outline, the pubic symphysis a
compact structure a tenth of the head's size, apart from the head (in the expert label maps
they never touch), and neither is cut off by the image border. A PS that
touches the head is the model's typical gross error: a bright band on top of the skull taken for
the symphysis; such a band, or a PS tilted along the skull's curve, also shows as a PS long axis
steeper than experts draw it (``ps_elevation``, the axis's angle from the image rows; the
experts' distribution is in the model card, "Trust").
Model: each fold segments the frame and its mirror image; where the two disagree on the pubic
symphysis (``ps_view_dice``, the mean over folds of the Dice between the two views' PS) or on
the angle (``flip_aop_gap``, the mean over folds of |AoP(identity view) - AoP(flipped view)|),
the model is unsure of the anatomy. Both are defined per fold so that they mean the same for
the one held-out fold that out-of-fold calibration has and for the full ensemble (where the
mean over five folds is steadier, so fewer frames pass a bound by chance). The spread of the
fold AoPs is reported beside them (it cannot be calibrated out of fold: one fold per frame).
When asked, :mod:`psfh.measure.stability` adds ``stability_gap``: how far one fold's AoP moves when the
frame is made brighter, darker or zoomed out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from psfh.core.labels import FH, PS, check_label_map, largest_component
from psfh.measure.aop import AoPMeasurement, measure_aop

# Bounds, from `python -m experiments.calibrate_quality` (docs/results/quality/calibration.json): each
# but the PS elevation lies beyond every ground-truth frame and flags few out-of-fold predictions
# (how many: model card, "Trust").
MIN_GREY_LEVELS = 32
MIN_DARK_FRACTION = 0.02
MIN_FH_SOLIDITY = 0.90
MIN_PS_SOLIDITY = 0.78
PS_TO_FH_AREA = (0.03, 0.35)
MAX_BORDER_PIXELS = 0
# Pixel centres closer than this are neighbours (side by side: 1, diagonal: 1.41): the structures touch.
MIN_PS_FH_GAP = 1.5
MAX_FLIP_AOP_GAP = 25.0
MIN_PS_VIEW_DICE = 0.82
# The one bound inside the experts' range (some expert outlines are steeper): the smallest that
# catches the most out-of-fold AoPs off by over 15 deg (`python -m experiments.ps_elevation_check`;
# the table of bounds and catches is docs/results/quality/ps_elevation.txt, the choice the model card's "Trust").
MAX_PS_ELEVATION = 34.0
# psfh.measure.stability: the mean AoP change when the frame is made brighter, darker or zoomed out (one
# fold; only when that check ran). Out of fold, among the bounds at which it flags at most 5 % of
# frames alone, the one that catches the most AoPs off by over 15 deg, with the fewest flags on a
# tie (`python -m experiments.measure_stability`; docs/results/quality/stability/bounds.txt, the model card's "Trust").
MAX_STABILITY_GAP = 20.0

# Every measure a check can hold (the model's only when views / folds were given; the stability gap
# only when psfh.measure.stability's check ran).
MEASURES = ("grey_levels", "dark_fraction", "fh_solidity", "ps_solidity", "ps_to_fh_area", "border_pixels",
            "ps_fh_gap", "ps_elevation", "flip_aop_gap", "ps_view_dice", "stability_gap", "fold_aop_spread")


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


def ps_fh_gap(ps: np.ndarray, fh: np.ndarray) -> float:
    """Shortest distance in pixels between a pixel centre of the PS and one of the FH (their largest
    components, the ones the AoP is measured on; H x W bool masks, both non-empty): 1 when they
    touch side by side, 1.41 diagonally, 0 when they overlap."""
    # Distance of every pixel to the nearest head pixel; the smallest over the PS is the gap.
    to_head = ndimage.distance_transform_edt(~largest_component(fh))
    return float(to_head[largest_component(ps)].min())


def ps_elevation(label_map: np.ndarray, aop: AoPMeasurement | None = None) -> float | None:
    """Angle in degrees (0-90) between the PS long axis, as the AoP measures it (superior end to
    apex), and the image rows, folded so that mirrored frames and the axis's direction do not
    matter; None when the label map (H x W) has no PS axis (no PS or no FH). ``aop``: the label
    map's :func:`psfh.measure.aop.measure_aop`, when the caller has it, so that a large map's AoP
    is not measured twice (its cost: docs/PERFORMANCE.md, "One-off measurements")."""
    measurement = measure_aop(label_map) if aop is None else aop
    if measurement.ps_superior is None or measurement.ps_inferior is None:
        return None
    dx, dy = np.subtract(measurement.ps_inferior, measurement.ps_superior)
    return float(np.degrees(np.arctan2(abs(dy), abs(dx))))


def flip_aop_gap(view_aop_deg: dict[str, list[float | None]]) -> float | None:
    """Mean over folds of |AoP(identity view) - AoP(flipped view)| in degrees; a fold that measures
    an AoP in one view and none in the other counts 90 degrees (it does not know where the
    anatomy is); None without flip views or without any measured AoP."""
    gaps = []
    for angles in view_aop_deg.values():
        if len(angles) != 2 or (angles[0] is None and angles[1] is None):
            continue
        gaps.append(90.0 if None in angles else abs(angles[0] - angles[1]))
    return float(np.mean(gaps)) if gaps else None


def ps_view_dice(view_maps: dict[str, list[np.ndarray]]) -> float | None:
    """Mean over folds of the Dice between the PS of the identity view's and the flipped view's
    label maps (H x W, in image orientation); a fold where neither view has a PS is left out;
    None without flip views."""
    scores = []
    for maps in view_maps.values():
        if len(maps) != 2:
            continue
        first, second = (np.asarray(m) == PS for m in maps)
        total = first.sum() + second.sum()
        if total:
            scores.append(2.0 * (first & second).sum() / total)
    return float(np.mean(scores)) if scores else None


def fold_aop_spread(fold_aop_deg: dict[str, float | None]) -> float | None:
    """Largest minus smallest fold AoP (degrees), with two or more measured folds; else None."""
    angles = [a for a in fold_aop_deg.values() if a is not None]
    return float(max(angles) - min(angles)) if len(angles) > 1 else None


def measure(image: np.ndarray, label_map: np.ndarray, view_aop_deg: dict[str, list[float | None]] | None = None,
            fold_aop_deg: dict[str, float | None] | None = None,
            view_maps: dict[str, list[np.ndarray]] | None = None,
            aop: AoPMeasurement | None = None) -> dict[str, float]:
    """The measures the checks use, for an H x W uint8 image and its H x W label map, and, when
    given, the AoP of each fold's views ({fold: [identity, flip]}), of each fold, and each
    fold's views' label maps ({fold: [identity, flip]}, H x W); ``aop``: the label map's own AoP
    measurement, when the caller has it (else it is measured again for the PS axis)."""
    labels = check_label_map(label_map)
    ps, fh = labels == PS, labels == FH
    image = np.asarray(image)
    model = {"flip_aop_gap": flip_aop_gap(view_aop_deg or {}), "ps_view_dice": ps_view_dice(view_maps or {}),
             "fold_aop_spread": fold_aop_spread(fold_aop_deg or {})}
    return {**{k: v for k, v in model.items() if v is not None},
        "grey_levels": float(len(np.unique(image))),
        "dark_fraction": float((image == 0).mean()),
        "fh_solidity": solidity(fh) if fh.any() else 0.0,
        "ps_solidity": solidity(ps) if ps.any() else 0.0,
        "ps_to_fh_area": float(ps.sum() / fh.sum()) if fh.any() else 0.0,
        "border_pixels": float(border_pixels(ps) + border_pixels(fh)),
        **({"ps_fh_gap": ps_fh_gap(ps, fh)} if ps.any() and fh.any() else {}),
        **({"ps_elevation": elevation} if (elevation := ps_elevation(labels, aop)) is not None else {}),
    }


def check(image: np.ndarray, label_map: np.ndarray, view_aop_deg: dict[str, list[float | None]] | None = None,
          fold_aop_deg: dict[str, float | None] | None = None,
          view_maps: dict[str, list[np.ndarray]] | None = None, aop: AoPMeasurement | None = None) -> QualityCheck:
    """Check an input frame (H x W uint8, as shown to the user) and its label map, and the model's
    agreement with itself when the views' and folds' AoPs and label maps are given (see
    :func:`measure`)."""
    m = measure(image, label_map, view_aop_deg, fold_aop_deg, view_maps, aop)
    return QualityCheck(reasons=judge(m), measures=m)


def check_corrected(image: np.ndarray, label_map: np.ndarray, corrected: set[int],
                    aop: AoPMeasurement | None = None) -> QualityCheck:
    """The image and anatomy checks of a label map in which a user re-segmented the structures
    ``corrected`` (label values) with box prompts. The PS elevation is not judged on a PS the user
    boxed: that check looks for the model's misplaced PS, and a steep PS a user placed is the
    patient's anatomy (some expert outlines are as steep). Its measure is still reported.
    ``aop``: as in :func:`measure`."""
    m = measure(image, label_map, aop=aop)
    judged = {k: v for k, v in m.items() if not (k == "ps_elevation" and PS in corrected)}
    return QualityCheck(reasons=judge(judged), measures=m)


def judge(m: dict[str, float]) -> list[str]:
    """The reasons not to trust a result with the measures ``m`` of :func:`measure` (a measure
    that is absent is not checked); empty when every check passes."""
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
    if m.get("ps_fh_gap", MIN_PS_FH_GAP) < MIN_PS_FH_GAP:
        reasons.append("the pubic symphysis touches the fetal head, which it never does in expert outlines: "
                       "the model may have taken a bright band on the skull for the symphysis")
    if m.get("ps_elevation", 0.0) > MAX_PS_ELEVATION:
        reasons.append(f"the pubic symphysis' long axis is steeper than in 96 % of expert outlines ("
                       f"{m['ps_elevation']:.0f} degrees from horizontal, at most {MAX_PS_ELEVATION:g} expected): "
                       "check that the model outlined the symphysis and not a band on the skull")
    if m["border_pixels"] > MAX_BORDER_PIXELS:
        reasons.append("a structure touches the image border: the anatomy may be cut off (a cropped frame?)")
    if m.get("ps_view_dice", 1.0) < MIN_PS_VIEW_DICE:
        reasons.append(f"the model is unsure where the pubic symphysis is: its outlines on the frame and on the "
                       f"mirror image overlap by Dice {m['ps_view_dice']:.2f} (at least {MIN_PS_VIEW_DICE:g} "
                       "expected)")
    if m.get("stability_gap", 0.0) > MAX_STABILITY_GAP:
        reasons.append(f"the AoP is fragile: made brighter, darker or zoomed out, the frame gives AoPs "
                       f"{m['stability_gap']:.1f} degrees away on average (at most {MAX_STABILITY_GAP:g} expected)")
    if m.get("flip_aop_gap", 0.0) > MAX_FLIP_AOP_GAP:
        reasons.append(f"the model is unsure: the frame and its mirror image give AoPs {m['flip_aop_gap']:.1f} "
                       f"degrees apart (at most {MAX_FLIP_AOP_GAP:g} expected)")
    return reasons
