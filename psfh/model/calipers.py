"""Calipers: the AoP and HSD re-measured from points a user places on the construction.

On an ultrasound machine a sonographer measures the angle of progression with calipers: two
points on the pubic symphysis' long axis and a line from its inferior end tangent to the skull.
psfh draws exactly that construction (:mod:`psfh.measure.aop`); here a user moves its points, any
of the three:

- ``ps_inferior``, ``ps_superior``: the ends of the symphysis' long axis (``ps_ends``: both, in
  either order; the end nearer the head centroid is the inferior one, the rule the model's own
  axis follows, :func:`psfh.measure.aop.order_ends`);
- ``tangent_point``: where the tangent from the inferior end touches the skull. The tangent is
  then the line from the (possibly moved) inferior end through it, once it makes sense: on or
  outside the head outline's far side (:func:`psfh.measure.aop.tangent_point_problem`).

The points not given stay the model's: the PS ends those of the label map's PS, the tangent point
the far tangent from the (possibly moved) inferior end to the label map's head. The geometry is
:func:`psfh.measure.aop.aop_from_points` and :func:`psfh.measure.hsd.hsd_from_points`, the ones the
automatic measurement runs, so the AoP has one definition; the HSD follows a moved inferior end
and a turned axis. No model runs: an adjustment costs milliseconds.

The quality check (:mod:`psfh.measure.quality`) is judged again for what the points now decide: a
check keeps its vote while what it looks at still enters the measurement. Its measures are all
reported still (``ps_elevation`` is that of the axis drawn now).

Points are ``(x, y)`` = ``(column, row)`` in image pixels, pixel centres at whole numbers (the
label map's grid, :mod:`psfh.measure.aop`); inside the image means within half a pixel of a centre.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from psfh.core.errors import PSFHInputError
from psfh.core.labels import FH, PS, check_label_map, largest_component
from psfh.measure import quality as checks
from psfh.measure.aop import (AoPMeasurement, Point, aop_from_points, apex_inside_head, convex_hull_points,
                              mask_points, order_ends, ps_axis_ends, tangent_point_problem)
from psfh.measure.hsd import HSDMeasurement, hsd_from_points
from psfh.measure.quality import QualityCheck

POINT_NAMES = ("ps_inferior", "ps_superior", "tangent_point")
POINT_WORDS = {"ps_inferior": "PS inferior end", "ps_superior": "PS superior end", "tangent_point": "skull tangent"}
# Two PS ends closer than this (pixels) give no axis a user could mean.
MIN_AXIS_PX = 1.0

# What each quality check looks at that a user's points can take over (the others look at the
# input or at the head outline, which the HSD and the tangent's check still use: always judged).
# The PS axis: the user's once either end is moved (as for a boxed PS, quality.check_corrected).
PS_AXIS_CHECKS = ("ps_elevation",)
# The PS outline: unused once both ends are the user's.
PS_OUTLINE_CHECKS = ("ps_solidity", "ps_fh_gap", "ps_to_fh_area", "ps_view_dice")
# The model's angle (its steadiness across views and perturbed frames): gone once all three points
# are the user's; while one is the model's, part of the angle still is.
MODEL_ANGLE_CHECKS = ("flip_aop_gap", "stability_gap")


@dataclass(frozen=True)
class Adjustment:
    """The measurements re-made from a user's points.

    Attributes:
        aop: the AoP from the points (always measured: bad points raise instead).
        hsd: the HSD from the (possibly moved) inferior end and axis.
        quality: the quality check judged again (None when there was none).
        moved: every point the user placed that is in effect, {name: (x, y)}: earlier ones and the
            new ones, in :data:`POINT_NAMES` order.
        seconds: the time it took.
    """

    aop: AoPMeasurement
    hsd: HSDMeasurement
    quality: QualityCheck | None
    moved: dict[str, Point] = field(default_factory=dict)
    seconds: float = 0.0


def describe_point(point) -> str:
    """``(x, y)`` in words, "(12.3, 45.0)"."""
    return f"({float(point[0]):.1f}, {float(point[1]):.1f})"


def moved_text(moved: dict) -> str:
    """The points a user placed, in words: "PS inferior end, skull tangent" ("" for none)."""
    return ", ".join(POINT_WORDS[name] for name in POINT_NAMES if name in moved)


def moved_cell(moved: dict) -> str:
    """The points a user placed with their coordinates, for a table cell or a file header:
    "ps_inferior (81.7, 39.7); tangent_point (34.0, 82.0)"; "none" for the model's own construction."""
    return "; ".join(f"{name} {describe_point(moved[name])}" for name in POINT_NAMES if name in moved) or "none"


def check_point(value, name: str, size: tuple[int, int]) -> np.ndarray:
    """A user's point -> length-2 float ``(x, y)``, or PSFHInputError naming it: two finite
    numbers inside the H x W (``size``) image."""
    try:
        point = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        point = np.array([])
    if point.shape != (2,) or not np.all(np.isfinite(point)):
        raise PSFHInputError(f"{name} must be two numbers (x, y) in image pixels; got {value!r}")
    height, width = size
    if not (-0.5 <= point[0] <= width - 0.5 and -0.5 <= point[1] <= height - 0.5):
        raise PSFHInputError(f"{name} {describe_point(point)} is outside the {width} x {height} image "
                             f"(x from -0.5 to {width - 0.5:g}, y from -0.5 to {height - 0.5:g})")
    return point


def given_points(size: tuple[int, int], head_centroid: np.ndarray, ps_ends=None, tangent_point=None,
                 ps_inferior=None, ps_superior=None) -> dict[str, np.ndarray]:
    """The points of one adjustment, checked, by name (:data:`POINT_NAMES`); ``ps_ends`` (two
    points, either order) become the inferior and superior end by :func:`order_ends`."""
    if ps_ends is not None and (ps_inferior is not None or ps_superior is not None):
        raise PSFHInputError("give the PS ends either as ps_ends (both) or as ps_inferior / ps_superior, not both")
    points = {}
    if ps_ends is not None:
        if isinstance(ps_ends, (str, bytes)) or len(np.asarray(ps_ends, dtype=object)) != 2:
            raise PSFHInputError(f"ps_ends must be two points ((x, y), (x, y)) in image pixels; got {ps_ends!r}")
        ends = [check_point(end, f"ps_ends[{i}]", size) for i, end in enumerate(ps_ends)]
        points["ps_superior"], points["ps_inferior"] = order_ends(ends[0], ends[1], head_centroid)
    for name, value in (("ps_inferior", ps_inferior), ("ps_superior", ps_superior),
                        ("tangent_point", tangent_point)):
        if value is not None:
            points[name] = check_point(value, name, size)
    if not points:
        raise PSFHInputError("nothing to adjust: give ps_ends ((x, y), (x, y)), ps_inferior, ps_superior and/or "
                             "tangent_point (x, y), in image pixels")
    return points


def adjust(label_map, quality: QualityCheck | None = None, spacing_mm=None, before: dict | None = None,
           ps_ends=None, tangent_point=None, ps_inferior=None, ps_superior=None) -> Adjustment:
    """Re-measure the AoP and HSD of a label map from a user's points.

    Args:
        label_map: H x W, 0 background, 1 PS, 2 FH: the result being adjusted (its largest
            components are used, as by :func:`psfh.measure.aop.measure_aop`).
        quality: that result's quality check, judged again here; None: none.
        spacing_mm: (row, col) mm per pixel for the HSD in mm, or None.
        before: the points placed earlier, {name: (x, y)}: they stay unless given again.
        ps_ends: the two PS ends ``((x, y), (x, y))``, either order.
        tangent_point: ``(x, y)``, where the tangent from the inferior end touches the skull.
        ps_inferior, ps_superior: ``(x, y)``, one PS end alone (not with ``ps_ends``).

    Returns:
        An :class:`Adjustment`.

    Raises:
        PSFHInputError: naming the point and what is wrong: not two numbers, outside the image,
            the two ends on one spot, the inferior end farther from the head than the superior one
            or inside the head, a tangent point inside the head or not on its far side
            (:func:`psfh.measure.aop.tangent_point_problem`); or nothing given, no head in the
            label map, no model axis to keep when only some points are given.
    """
    start = time.perf_counter()
    labels = check_label_map(label_map)
    head = largest_component(labels == FH)
    if not head.any():
        raise PSFHInputError("no fetal head in this result: the tangent and the HSD need the head outline; correct "
                             "the head with a box first")
    head_points = mask_points(head)
    head_centroid = head_points.mean(axis=0)
    # The hull's vertices stand for the head in every test and in the tangent (the same answers,
    # one hull built instead of one per test: the adjustment stays in milliseconds).
    hull = convex_hull_points(head_points)
    new = given_points(labels.shape, head_centroid, ps_ends, tangent_point, ps_inferior, ps_superior)
    moved = {name: np.asarray(point, dtype=float) for name, point in (before or {}).items()}
    moved.update(new)

    model_superior, model_inferior = _model_ends(labels, head_centroid)
    superior = moved.get("ps_superior", model_superior)
    inferior = moved.get("ps_inferior", model_inferior)
    if superior is None or inferior is None:
        raise PSFHInputError("the model found no pubic symphysis axis in this result: place both ends with ps_ends")
    _check_axis(superior, inferior, moved, new, head_centroid)
    if apex_inside_head(inferior, hull, head):
        if "ps_inferior" in moved:
            raise PSFHInputError(f"ps_inferior {describe_point(inferior)} lies inside the fetal head outline: the "
                                 "symphysis' inferior end is outside the head (or correct the head with a box first)")
        raise PSFHInputError("the model's inferior end of the symphysis lies inside the fetal head: place the PS "
                             "ends too (ps_ends)")
    tangent = moved.get("tangent_point")
    if tangent is not None:
        problem = tangent_point_problem(inferior, superior, tangent, hull, centroid=head_centroid)
        if problem is not None:
            earlier = "" if "tangent_point" in new else " (placed earlier)"
            raise PSFHInputError(f"tangent_point {describe_point(tangent)}{earlier}: {problem}")

    aop = aop_from_points(superior, inferior, hull, head, tangent_point=tangent, centroid=head_centroid)
    if not aop.measured:  # the checks above refuse every case aop_from_points declines; kept as a guard
        raise PSFHInputError(f"these points give no AoP: {aop.reason}")
    hsd = hsd_from_points(superior, inferior, head, spacing_mm)
    kept = {name: (float(moved[name][0]), float(moved[name][1])) for name in POINT_NAMES if name in moved}
    return Adjustment(aop=aop, hsd=hsd, quality=judged_quality(quality, labels, aop, set(kept)), moved=kept,
                      seconds=time.perf_counter() - start)


def _model_ends(labels: np.ndarray, head_centroid: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The model's (superior, inferior) PS ends of the label map; (None, None) without a PS axis."""
    ps = largest_component(labels == PS)
    if not ps.any():
        return None, None
    superior, inferior = ps_axis_ends(mask_points(ps), head_centroid)
    return (None, None) if np.allclose(superior, inferior) else (superior, inferior)


def _check_axis(superior: np.ndarray, inferior: np.ndarray, moved: dict, new: dict,
                head_centroid: np.ndarray) -> None:
    """Refuse PS ends that make no axis, or an inferior end farther from the head than the superior one."""
    length = float(np.linalg.norm(superior - inferior))
    named = [name for name in ("ps_inferior", "ps_superior") if name in new] or [
        name for name in ("ps_inferior", "ps_superior") if name in moved]
    where = ", ".join(f"{name} {describe_point(moved[name])}" for name in named)
    if length < MIN_AXIS_PX:
        raise PSFHInputError(f"{where}: the symphysis' two ends are {length:.1f} px apart; its long axis needs two "
                             "distinct ends")
    if np.linalg.norm(inferior - head_centroid) > np.linalg.norm(superior - head_centroid):
        raise PSFHInputError(f"{where}: the inferior end {describe_point(inferior)} is farther from the fetal head "
                             f"than the superior end {describe_point(superior)}; the inferior end is the one nearer "
                             "the head (give both with ps_ends, in either order)")


def judged_quality(quality: QualityCheck | None, label_map: np.ndarray, aop: AoPMeasurement,
                   moved: set[str]) -> QualityCheck | None:
    """A quality check judged again once the user placed the points ``moved`` (names of
    :data:`POINT_NAMES`): every measure is kept (``ps_elevation`` that of ``aop``'s axis); a check
    votes only while what it looks at still enters the measurement (:data:`PS_AXIS_CHECKS`,
    :data:`PS_OUTLINE_CHECKS`, :data:`MODEL_ANGLE_CHECKS`)."""
    if quality is None:
        return None
    measures = dict(quality.measures)
    elevation = checks.ps_elevation(label_map, aop)
    if elevation is not None:
        measures["ps_elevation"] = elevation
    skipped = set()
    if moved & {"ps_inferior", "ps_superior"}:
        skipped.update(PS_AXIS_CHECKS)
    if {"ps_inferior", "ps_superior"} <= moved:
        skipped.update(PS_OUTLINE_CHECKS)
    if set(POINT_NAMES) <= moved:
        skipped.update(MODEL_ANGLE_CHECKS)
    judged = {key: value for key, value in measures.items() if key not in skipped}
    if "ps_solidity" in skipped:
        # quality.judge reads a solidity of 0 as "no such structure": neither the PS's own check
        # nor the PS-to-head area ratio is judged then.
        judged["ps_solidity"] = 0.0
    return QualityCheck(reasons=checks.judge(judged), measures=measures)

