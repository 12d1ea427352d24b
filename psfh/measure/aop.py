"""Angle of progression (AoP) from a pubic symphysis / fetal head label map.

The AoP is the angle between the long axis of the pubic symphysis (PS) and a line from the
symphysis' inferior end tangential to the fetal head (FH). Measured here on a label map
(the values of :mod:`psfh.core.labels`) as follows:

1. Keep the largest connected component of each structure (8-connectivity,
   :func:`psfh.core.labels.largest_component`), so that stray pixels of a predicted mask do not
   move the construction.
2. PS long axis: the principal axis (largest-eigenvalue eigenvector of the covariance of the
   PS pixel coordinates) through the PS centroid. Its endpoints are the points of that axis
   at the smallest and largest projection of the PS pixels.
3. Inferior apex: the endpoint nearer the FH centroid; the other one is the superior end.
4. From the apex there are two tangents to the head. A tangent from an outside point touches
   the convex hull of the head, so the tangent points are the hull vertices of smallest and
   largest direction angle seen from the apex. The far tangent is used: the one on the side
   of the head away from the PS axis (chosen by side, not by angle; see
   :func:`far_tangent_point`). In every usual case it is also the one giving the larger
   angle; on the PSFHS ground truth it gives the clinical 102-175 deg range.
5. AoP: the angle at the apex between the ray to the superior end and the ray to the
   tangent point, in degrees, in [0, 180].

Coordinates: every point is ``(x, y)`` = ``(column, row)`` of the label map, in pixels,
measured at pixel centres (pixel ``label_map[r, c]`` has its centre at ``(c, r)``). The y axis
points down; angles are unsigned, so this does not change them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from psfh.core.labels import FH, PS, check_label_map, largest_component

Point = tuple[float, float]


@dataclass(frozen=True)
class Measurement:
    """What the AoP and HSD measurements share: the first field is the value, None when it cannot
    be measured, with the ``reason`` then; the other fields are the points of its construction."""

    @property
    def measured(self) -> bool:
        """True when the value (the first field) was measured."""
        return getattr(self, fields(self)[0].name) is not None

    def to_dict(self) -> dict:
        """JSON-able copy, in field order: Python floats, None, text, and points as ``[x, y]`` lists."""
        return {item.name: _json_value(getattr(self, item.name)) for item in fields(self)}


def _json_value(value):
    if value is None or isinstance(value, str):
        return value
    return [float(v) for v in value] if np.ndim(value) else float(value)

# A point closer than this (in pixels) to the inside of the head's hull counts as inside: on
# the hull boundary the tangent is undefined.
_INSIDE_TOLERANCE_PX = 1e-6


@dataclass(frozen=True)
class AoPMeasurement(Measurement):
    """An AoP and its construction, or the reason there is none.

    Points are ``(x, y)`` = ``(column, row)`` pixel coordinates (floats, pixel centres).

    Attributes:
        angle_deg: the angle of progression in degrees, or None when it cannot be measured.
        reason: why there is no angle, in plain words; None when the angle was measured.
        ps_superior: the superior end of the PS long axis.
        ps_inferior: the inferior end of the PS long axis, the apex of the angle.
        tangent_point: where the far tangent from the apex touches the fetal head.
    """

    angle_deg: float | None
    reason: str | None = None
    ps_superior: Point | None = None
    ps_inferior: Point | None = None
    tangent_point: Point | None = None


def mask_points(mask: np.ndarray) -> np.ndarray:
    """The ``(x, y)`` pixel-centre coordinates of a mask's pixels, N x 2 float array."""
    rows, cols = np.nonzero(mask)
    return np.column_stack([cols, rows]).astype(float)


def principal_axis_endpoints(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ends of the principal (long) axis of a point set.

    The axis passes through the centroid along the eigenvector of the largest eigenvalue of
    the coordinates' covariance; its ends are the axis points at the smallest and largest
    projection of ``points`` onto it.

    Args:
        points: N x 2 array of ``(x, y)`` coordinates, N >= 1.

    Returns:
        Two length-2 arrays ``(x, y)``: the end at the smallest projection, then the largest.
        They coincide when all points do.
    """
    centroid = points.mean(axis=0)
    centred = points - centroid
    covariance = centred.T @ centred / len(points)
    _, eigenvectors = np.linalg.eigh(covariance)  # eigenvalues ascending
    axis = eigenvectors[:, -1]
    projections = centred @ axis
    return centroid + projections.min() * axis, centroid + projections.max() * axis


def ps_axis_ends(ps_points: np.ndarray, head_centroid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The superior and inferior ends of the PS long axis (steps 2 and 3 above).

    The inferior end (the apex of the AoP, the start of the HSD) is the axis end nearer the
    head centroid; on a tie, the end at the smaller projection. One function so that every
    measurement built on the symphysis starts from the same two points.

    Args:
        ps_points: N x 2 ``(x, y)`` coordinates of the PS pixels, N >= 1.
        head_centroid: length-2 ``(x, y)``, the centroid of the FH pixels.

    Returns:
        Two length-2 arrays ``(x, y)``: the superior end, then the inferior end. They coincide
        when all PS points do (a one-pixel PS has no axis).
    """
    end_a, end_b = principal_axis_endpoints(ps_points)
    if np.linalg.norm(end_a - head_centroid) <= np.linalg.norm(end_b - head_centroid):
        return end_b, end_a
    return end_a, end_b


def convex_hull_points(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of a point set, M x 2; the points themselves if degenerate.

    A tangent from an outside point touches the hull, so the hull vertices are the only
    candidates and far fewer than all the pixels. A hull of fewer than three points, or of
    collinear points, cannot be built; the extreme directions are then found among all
    points, which gives the same answer.
    """
    try:
        return points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        return points


def inside_convex_hull(point: np.ndarray, points: np.ndarray) -> bool:
    """Whether ``point`` lies inside or on the convex hull of ``points`` (N x 2)."""
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):
        # A point or a segment encloses nothing; the caller checks the pixel itself.
        return False
    # Each facet equation is (normal, offset) with normal . p + offset <= 0 inside.
    signed_distances = hull.equations[:, :2] @ point + hull.equations[:, 2]
    return bool(np.all(signed_distances <= _INSIDE_TOLERANCE_PX))


def signed_angle_deg(u: np.ndarray, v: np.ndarray) -> float | np.ndarray:
    """Signed angle from 2-D vector ``u`` to vector(s) ``v``, in degrees, in (-180, 180].

    Args:
        u: length-2 vector.
        v: length-2 vector, or N x 2 array of vectors (then N angles are returned).
    """
    v = np.asarray(v, dtype=float)
    cross = u[0] * v[..., 1] - u[1] * v[..., 0]
    # atan2 of (cross, dot) stays accurate near 0 and 180 deg, unlike arccos.
    return np.degrees(np.arctan2(cross, v @ u))


def tangent_points(apex: np.ndarray, head_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the two tangents from ``apex`` touch the convex hull of ``head_points``.

    Direction angles are measured from the ray apex -> head centroid. The apex is outside the
    hull and the centroid inside it, so every head point is seen within a cone narrower than
    180 deg around that ray: the angles lie in (-180, 180) deg with no wrap-around, and the
    tangent points are the extremes.

    Args:
        apex: length-2 ``(x, y)`` point outside the hull of ``head_points``.
        head_points: N x 2 ``(x, y)`` coordinates of the head.

    Returns:
        A 2 x 2 array whose rows are the tangent points ``(x, y)`` at the smallest and at the
        largest angle, and a length-2 array of those angles in degrees.
    """
    candidates = convex_hull_points(head_points)
    angles = signed_angle_deg(head_points.mean(axis=0) - apex, candidates - apex)
    extremes = [int(np.argmin(angles)), int(np.argmax(angles))]
    return candidates[extremes], angles[extremes]


def far_tangent_point(
    apex: np.ndarray, superior: np.ndarray, head_points: np.ndarray
) -> tuple[np.ndarray, float]:
    """The far tangent point on the head and the AoP it gives.

    Of the two tangents from ``apex`` to the head, the far one lies on the side of the head
    away from the PS axis; in every usual case it is the one making the larger angle with
    the axis. It is chosen by side, not by angle, because the angle between two rays never
    exceeds 180 deg: when the head reaches past the backward extension of the PS axis, the
    far tangent's angle folds back below 180 deg and could come out smaller than the near
    one's. The AoP is that angle between the two rays, in [0, 180] deg (a sweep from the
    axis to the far tangent of more than 180 deg is reported as 360 deg minus the sweep).

    Args:
        apex: length-2 ``(x, y)``, the inferior PS end, outside the head's hull.
        superior: length-2 ``(x, y)``, the superior PS end.
        head_points: N x 2 ``(x, y)`` coordinates of the head.

    Returns:
        The tangent point (length-2 ``(x, y)``) and the angle in degrees.
    """
    axis = superior - apex
    points, _ = tangent_points(apex, head_points)
    # The sign of the angle from the apex -> centroid ray to the axis says on which side of
    # the head the axis lies; the far tangent is the extreme on the other side.
    axis_side = float(signed_angle_deg(head_points.mean(axis=0) - apex, axis))
    if 0.0 < axis_side < 180.0:
        far = points[0]
    elif -180.0 < axis_side < 0.0:
        far = points[1]
    else:
        # The axis points straight at or away from the head centre: no side is farther, so
        # take the larger angle.
        far = max(points, key=lambda p: abs(float(signed_angle_deg(axis, p - apex))))
    return far, abs(float(signed_angle_deg(axis, far - apex)))


def _point(p: np.ndarray) -> Point:
    return (float(p[0]), float(p[1]))


def measure_aop(label_map) -> AoPMeasurement:
    """Measure the angle of progression on a label map.

    Args:
        label_map: H x W integer array (or array-like), 0 background, 1 pubic symphysis,
            2 fetal head.

    Returns:
        An :class:`AoPMeasurement`. When the angle cannot be measured (no PS, no FH, a PS
        without a long axis, the inferior PS end inside the head) ``angle_deg`` is None,
        ``reason`` says why, and the points found so far are filled in.

    Raises:
        PSFHInputError: ``label_map`` is not 2-D, is empty, or holds other values than 0/1/2.
    """
    labels = check_label_map(label_map)
    ps = largest_component(labels == PS)
    fh = largest_component(labels == FH)
    if not ps.any():
        return AoPMeasurement(None, "no pubic symphysis found")
    if not fh.any():
        return AoPMeasurement(None, "no fetal head found")

    ps_points, fh_points = mask_points(ps), mask_points(fh)
    superior, apex = ps_axis_ends(ps_points, fh_points.mean(axis=0))
    if np.allclose(superior, apex):
        return AoPMeasurement(None, "the pubic symphysis is a single pixel and has no long axis")

    # The apex is a point on the axis, not a pixel: look at the pixel it falls in, too, since
    # a degenerate (one-pixel-wide) head has no hull to be inside of.
    col, row = np.clip(np.rint(apex), 0, np.array(labels.shape[::-1]) - 1).astype(int)
    if fh[row, col] or inside_convex_hull(apex, fh_points):
        return AoPMeasurement(
            None,
            "the symphysis' inferior end lies inside the fetal head",
            ps_superior=_point(superior),
            ps_inferior=_point(apex),
        )

    tangent, angle = far_tangent_point(apex, superior, fh_points)
    return AoPMeasurement(
        angle_deg=angle,
        reason=None,
        ps_superior=_point(superior),
        ps_inferior=_point(apex),
        tangent_point=_point(tangent),
    )
