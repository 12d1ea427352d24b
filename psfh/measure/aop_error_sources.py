"""Where an AoP error comes from: the pubic symphysis's axis, its inferior end, or the head.

The AoP (:mod:`psfh.measure.aop`) is built on three things: the PS long axis, its inferior end
(the apex) and the far tangent to the fetal head. A predicted label map can get the overlap right
(a high Dice) and still tilt the PS axis: the PS is a small, roundish blob (expert outlines have an
axis ratio of 1.5-2), so a slightly different outline turns its principal axis, and the AoP turns
with it. These measures say which part of the construction an error comes from, per image:

* ``ps_axis_error_deg``: the angle between the predicted and the expert PS's long axes (each the
  principal axis of the largest PS component, as :func:`psfh.measure.aop.measure_aop` takes it),
  as lines: in [0, 90] degrees.
* ``ps_apex_distance_px``: the distance between the two inferior ends (the AoP's apex), in pixels.
* ``aop_error_expert_ps``: the AoP error when the expert's PS is measured with the predicted head
  (what is left when the PS is perfect: the head's share).
* ``aop_error_expert_fh``: the AoP error with the predicted PS and the expert's head (the PS's share).

Each is None where it cannot be measured (a structure missing from one map, an AoP that is not
measurable). Label maps are H x W integer arrays with the values of :mod:`psfh.core.labels`.
"""

from __future__ import annotations

import numpy as np

from psfh.core.labels import FH, PS, check_label_map, largest_component
from psfh.measure.aop import mask_points, measure_aop, principal_axis_endpoints

ERROR_SOURCE_COLUMNS = ("ps_axis_error_deg", "ps_apex_distance_px", "aop_error_expert_ps", "aop_error_expert_fh")


def ps_axis_direction(label_map: np.ndarray) -> np.ndarray | None:
    """Unit vector ``(x, y)`` along the long axis of the largest PS component of an H x W label
    map; None when there is no PS or it has no axis (all its pixels on one point)."""
    ps = largest_component(check_label_map(label_map) == PS)
    if not ps.any():
        return None
    low_end, high_end = principal_axis_endpoints(mask_points(ps))
    direction = high_end - low_end
    length = float(np.linalg.norm(direction))
    return direction / length if length > 0 else None


def line_angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    """The angle between two lines with directions ``u`` and ``v`` (length-2), in [0, 90] degrees:
    an axis has no sense, so u and -u are the same line."""
    cosine = abs(float(np.dot(u, v))) / (float(np.linalg.norm(u)) * float(np.linalg.norm(v)))
    return float(np.degrees(np.arccos(min(1.0, cosine))))


def combine_structures(ps_from: np.ndarray, fh_from: np.ndarray) -> np.ndarray:
    """An H x W label map with the PS of ``ps_from`` and the FH of ``fh_from`` (the PS wins where
    both claim a pixel: the AoP is built on the symphysis first)."""
    combined = np.where(fh_from == FH, FH, 0).astype(np.uint8)
    combined[ps_from == PS] = PS
    return combined


def _absolute_difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(abs(a - b))


def error_sources(predicted, target) -> dict[str, float | None]:
    """The :data:`ERROR_SOURCE_COLUMNS` of one predicted H x W label map against its expert
    label map (see the module docstring)."""
    predicted, target = check_label_map(predicted, "prediction"), check_label_map(target, "target")
    predicted_axis, expert_axis = ps_axis_direction(predicted), ps_axis_direction(target)
    predicted_aop, expert_aop = measure_aop(predicted), measure_aop(target)
    apex_distance = None
    if predicted_aop.ps_inferior is not None and expert_aop.ps_inferior is not None:
        apex_distance = float(np.hypot(*np.subtract(predicted_aop.ps_inferior, expert_aop.ps_inferior)))
    return {
        "ps_axis_error_deg": (None if predicted_axis is None or expert_axis is None
                              else line_angle_deg(predicted_axis, expert_axis)),
        "ps_apex_distance_px": apex_distance,
        "aop_error_expert_ps": _absolute_difference(
            measure_aop(combine_structures(target, predicted)).angle_deg, expert_aop.angle_deg),
        "aop_error_expert_fh": _absolute_difference(
            measure_aop(combine_structures(predicted, target)).angle_deg, expert_aop.angle_deg),
    }
