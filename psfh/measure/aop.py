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

Steps 3-5 are :func:`aop_from_points`: the construction from its two PS ends and the head, which
:func:`measure_aop` calls with the ends of step 2 and which a user's own points (calipers,
:mod:`psfh.model.calipers`) go through as well, so the AoP has one definition. A tangent point the
user gives replaces step 4: the tangent is then the line from the apex through that point, once
:func:`tangent_point_problem` finds it on or outside the head outline's far side.

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
# A tangent point a user places may lie this far inside the head's hull (pixels) and still count as
# on the outline: a click is a pixel or two off, and the outline itself is a pixel boundary.
TANGENT_TOLERANCE_PX = 2.0


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
    return order_ends(*principal_axis_endpoints(ps_points), head_centroid)


def order_ends(end_a: np.ndarray, end_b: np.ndarray, head_centroid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two PS ends (length-2 ``(x, y)``) -> ``(superior, inferior)``: the inferior end is the one
    nearer the head centroid; on a tie, ``end_a``. The rule of step 3, for the model's axis and
    for two ends a user clicked in either order."""
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


def hull_depth(point: np.ndarray, points: np.ndarray) -> float:
    """How far (pixels) ``point`` lies inside the convex hull of ``points`` (N x 2): the distance to
    the nearest hull edge's line, positive inside, negative outside (then the distance to the
    farthest edge line it is beyond, which is the distance to the hull itself or less); -inf
    when the points enclose nothing (fewer than three, or collinear)."""
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):
        return -np.inf
    # Each facet equation is (unit normal, offset): normal . p + offset is the signed distance.
    return float(-np.max(hull.equations[:, :2] @ point + hull.equations[:, 2]))


def apex_inside_head(apex: np.ndarray, head_points: np.ndarray, head_mask: np.ndarray | None = None) -> bool:
    """Whether the AoP's apex lies inside the fetal head: in its convex hull, or (``head_mask``,
    H x W bool) in a head pixel, since a one-pixel-wide head has no hull to be inside of. The apex
    is a point on the axis, not a pixel: the pixel it falls in is the one looked at."""
    if head_mask is not None:
        col, row = np.clip(np.rint(apex), 0, np.array(head_mask.shape[::-1]) - 1).astype(int)
        if head_mask[row, col]:
            return True
    return inside_convex_hull(apex, head_points)


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


def tangent_points(apex: np.ndarray, head_points: np.ndarray,
                   centroid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Where the two tangents from ``apex`` touch the convex hull of ``head_points``.

    Direction angles are measured from the ray apex -> head centroid. The apex is outside the
    hull and the centroid inside it, so every head point is seen within a cone narrower than
    180 deg around that ray: the angles lie in (-180, 180) deg with no wrap-around, and the
    tangent points are the extremes.

    Args:
        apex: length-2 ``(x, y)`` point outside the hull of ``head_points``.
        head_points: N x 2 ``(x, y)`` coordinates of the head (or only its hull's vertices,
            :func:`convex_hull_points`, which give the same tangents at less cost).
        centroid: length-2 ``(x, y)``, the head's centroid; default: the mean of ``head_points``
            (pass it with hull vertices, whose mean is not the head's centroid).

    Returns:
        A 2 x 2 array whose rows are the tangent points ``(x, y)`` at the smallest and at the
        largest angle, and a length-2 array of those angles in degrees.
    """
    candidates = convex_hull_points(head_points)
    centroid = head_points.mean(axis=0) if centroid is None else centroid
    angles = signed_angle_deg(centroid - apex, candidates - apex)
    extremes = [int(np.argmin(angles)), int(np.argmax(angles))]
    return candidates[extremes], angles[extremes]


def far_and_near_tangents(apex: np.ndarray, superior: np.ndarray, head_points: np.ndarray,
                          centroid: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray, float]:
    """The two tangents from ``apex`` to the head, told apart by side (step 4).

    The far one lies on the side of the head away from the PS axis: the sign of the angle from
    the apex -> head centroid ray to the axis says on which side the axis lies, and the far
    tangent is the extreme on the other side. When the axis points straight at or away from the
    head centre, no side is farther, and the one making the larger angle with the axis is far.

    Args:
        apex: length-2 ``(x, y)``, outside the head's hull. superior: length-2 ``(x, y)``.
        head_points, centroid: the head, as for :func:`tangent_points`.

    Returns:
        ``(far point, far angle, near point, near angle)``: the points length-2 ``(x, y)``, the
        angles in degrees, signed, from the apex -> head centroid ray (they have opposite signs).
    """
    axis = superior - apex
    centroid = head_points.mean(axis=0) if centroid is None else centroid
    points, angles = tangent_points(apex, head_points, centroid)
    axis_side = float(signed_angle_deg(centroid - apex, axis))
    if 0.0 < axis_side < 180.0:
        far = 0
    elif -180.0 < axis_side < 0.0:
        far = 1
    else:
        far = max((0, 1), key=lambda i: abs(float(signed_angle_deg(axis, points[i] - apex))))
    near = 1 - far
    return points[far], float(angles[far]), points[near], float(angles[near])


def far_tangent_point(
    apex: np.ndarray, superior: np.ndarray, head_points: np.ndarray, centroid: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """The far tangent point on the head and the AoP it gives.

    Of the two tangents from ``apex`` to the head, the far one lies on the side of the head
    away from the PS axis (:func:`far_and_near_tangents`); in every usual case it is the one
    making the larger angle with the axis. It is chosen by side, not by angle, because the angle
    between two rays never exceeds 180 deg: when the head reaches past the backward extension of
    the PS axis, the far tangent's angle folds back below 180 deg and could come out smaller than
    the near one's. The AoP is that angle between the two rays, in [0, 180] deg (a sweep from the
    axis to the far tangent of more than 180 deg is reported as 360 deg minus the sweep).

    Args:
        apex: length-2 ``(x, y)``, the inferior PS end, outside the head's hull.
        superior: length-2 ``(x, y)``, the superior PS end.
        head_points, centroid: the head, as for :func:`tangent_points`.

    Returns:
        The tangent point (length-2 ``(x, y)``) and the angle in degrees.
    """
    far, *_ = far_and_near_tangents(apex, superior, head_points, centroid)
    return far, angle_at_apex(apex, superior, far)


def angle_at_apex(apex: np.ndarray, superior: np.ndarray, tangent: np.ndarray) -> float:
    """Step 5: the angle at ``apex`` between the rays to ``superior`` and to ``tangent`` (length-2
    ``(x, y)`` each), in degrees, in [0, 180]."""
    return abs(float(signed_angle_deg(superior - apex, tangent - apex)))


def tangent_point_problem(apex: np.ndarray, superior: np.ndarray, tangent: np.ndarray, head_points: np.ndarray,
                          tolerance_px: float = TANGENT_TOLERANCE_PX, centroid: np.ndarray | None = None) -> str | None:
    """What is wrong with ``tangent`` as the point where the AoP's tangent touches the skull, in
    plain words; None when it is fine.

    A given tangent point makes the tangent the line from ``apex`` through it. It makes sense on
    or outside the head outline's far side: not inside the head's hull (up to ``tolerance_px``
    pixels in counts as on the outline), and at least as far round to the far side, seen from the
    apex, as the outline's own far tangent (up to the angle ``tolerance_px`` makes at the point's
    distance), so that the line does not cut through the head; beyond it is fine, since a faint
    skull can reach past the outline. Not on the near side (the symphysis' side) and not behind
    the apex (more than 90 deg from the direction of the head).

    Args:
        apex, superior: length-2 ``(x, y)``, the PS ends; the apex outside the head.
        tangent: length-2 ``(x, y)``, the given tangent point.
        head_points, centroid: the head, as for :func:`tangent_points`.
        tolerance_px: how far inside the outline a point still counts as on it.
    """
    offset = tangent - apex
    distance = float(np.linalg.norm(offset))
    if distance < 1.0:
        return "it is on the symphysis' inferior end: the tangent runs from there to the skull"
    depth = hull_depth(tangent, head_points)
    if depth > tolerance_px:
        return (f"it lies inside the fetal head outline ({depth:.1f} px in; up to {tolerance_px:g} px counts as on "
                "it): the tangent touches the skull's outer edge")
    centroid = head_points.mean(axis=0) if centroid is None else centroid
    far, far_angle, _, near_angle = far_and_near_tangents(apex, superior, head_points, centroid)
    # Angles measured towards the far side: the far tangent at +far_angle, the near one below 0.
    side = 1.0 if far_angle >= 0 else -1.0
    toward_far = side * float(signed_angle_deg(centroid - apex, offset))
    if toward_far >= 90.0:
        return ("it is behind the symphysis' inferior end, not towards the fetal head: the tangent runs from the "
                "inferior end to the skull's far side")
    slack = float(np.degrees(np.arctan2(tolerance_px, distance)))
    if toward_far >= side * far_angle - slack:
        return None
    if toward_far > side * near_angle:
        return (f"the line from the symphysis' inferior end through it crosses the fetal head "
                f"({side * far_angle - toward_far:.1f} deg short of the outline's far tangent): a tangent touches "
                "the skull's far side without crossing the head")
    return ("it is on the near side of the fetal head (the symphysis' side): the AoP's tangent touches the "
            "skull's far side")


def aop_from_points(superior, apex, head_points: np.ndarray, head_mask: np.ndarray | None = None,
                    tangent_point=None, centroid: np.ndarray | None = None) -> AoPMeasurement:
    """The AoP construction from its two PS ends and the head (steps 3-5 of the module doc).

    Args:
        superior, apex: ``(x, y)``, the superior and the inferior PS end (the apex).
        head_points: N x 2 ``(x, y)`` coordinates of the head's pixels (its largest component), or
            only their hull's vertices with ``centroid`` (as for :func:`tangent_points`).
        head_mask: H x W bool of those pixels, for the apex's own pixel (see :func:`apex_inside_head`).
        centroid: length-2 ``(x, y)``, the head's centroid; default: the mean of ``head_points``.
        tangent_point: ``(x, y)`` where the tangent touches the skull, when given (a user's point):
            the tangent is then the line from the apex through it. None: the outline's far tangent.

    Returns:
        An :class:`AoPMeasurement`. No angle, with the reason and the points, when the two ends
        coincide, the apex lies inside the head, or ``tangent_point`` is no tangent point
        (:func:`tangent_point_problem`).
    """
    superior, apex = np.asarray(superior, dtype=float), np.asarray(apex, dtype=float)
    if np.allclose(superior, apex):
        return AoPMeasurement(None, "the symphysis' two ends coincide: there is no long axis")
    ends = {"ps_superior": _point(superior), "ps_inferior": _point(apex)}
    # Every test below looks at the hull only: build it once from all the pixels (the costly part).
    centroid = head_points.mean(axis=0) if centroid is None else centroid
    hull = convex_hull_points(head_points)
    if apex_inside_head(apex, hull, head_mask):
        return AoPMeasurement(None, "the symphysis' inferior end lies inside the fetal head", **ends)
    if tangent_point is None:
        tangent, angle = far_tangent_point(apex, superior, hull, centroid)
    else:
        tangent = np.asarray(tangent_point, dtype=float)
        problem = tangent_point_problem(apex, superior, tangent, hull, centroid=centroid)
        if problem is not None:
            return AoPMeasurement(None, f"the tangent point given is no tangent point: {problem}", **ends,
                                  tangent_point=_point(tangent))
        angle = angle_at_apex(apex, superior, tangent)
    return AoPMeasurement(angle_deg=angle, reason=None, **ends, tangent_point=_point(tangent))


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
    return aop_from_points(superior, apex, fh_points, head_mask=fh)
