"""Angle of progression by the PS-FH-AOP 2023 challenge's definition (ellipse fits).

The challenge, and the papers reporting on it, computed AoP this way; psfh uses it as a yardstick
for comparing with published AoP errors. It is not a clinical measurement: its fixed root below
is often the near tangent of the head (that measurement is :func:`psfh.measure.aop.measure_aop`).

On an H x W label map (0 background, 1 pubic symphysis (PS), 2 fetal head (FH)):

1. For each class, the outer boundary with the most points (what ``cv2.findContours`` with
   ``RETR_EXTERNAL, CHAIN_APPROX_NONE`` lists: the 8-connected boundary pixels) is simplified to
   a polygon with 1 px tolerance (``cv2.approxPolyDP(..., 1, closed=True)``) and, when the
   polygon has at least 6 vertices, gets a least-squares ellipse (``cv2.fitEllipse``).
2. An ellipse is kept in OpenCV's convention, :class:`RotatedEllipse`: centre, (w, h), angle;
   h >= w is the major axis and points along angle - 90 deg.
3. The PS ellipse's major axis is the symphysis. Its end ``centre + h/2 (cos, sin)(angle - 90)``,
   the end with the larger x, is the apex.
4. In the FH ellipse's own frame (x along its major axis; semi-axes a = h/2, b = w/2), with the
   apex at (x0, y0), the tangent from the apex has the slope
   ``k = (x0 y0 - sqrt(b^2 x0^2 + a^2 y0^2 - a^2 b^2)) / (x0^2 - a^2)``: one fixed root of the
   two, whichever tangent that is. With ``c = y0 - k x0`` it touches the ellipse at
   ``x = -a^2 k c / (b^2 + a^2 k^2)`` (which is ``-a^2 k / c`` on a tangent), ``y = k x + c``.
5. The AoP is the angle at the apex between the other PS end and that touching point (back in
   image coordinates), in degrees, in [0, 180].

Fidelity: on the 1078 PSFHS ground-truth maps this reproduces the OpenCV 4 reference
(``shared/reference/aop_on_ground_truth.csv``) within 0.001 deg. That takes OpenCV's own
algorithms for steps 1 and 2, written out below in numpy because OpenCV is not a dependency: the
polygons have only 9-28 vertices, so a different simplification or fit moves the angle.
scikit-image's ``approximate_polygon`` breaks distance ties differently and lacks OpenCV's final
clean-up pass; its ``EllipseModel`` (Halir-Flusser) minimises another criterion, so with
OpenCV's polygons it agrees with the reference only as another fitter does (how closely: model
card, "Model"; ``tests/test_aop_challenge.py`` checks a sample). It stays available as
``fitter="skimage"``.

Where the challenge has no answer this returns None: a class is missing, its polygon has fewer
than 6 vertices, the fit degenerates, or the apex lies inside the head ellipse (the square root's
argument is negative; the challenge code then goes on with slope 0 and reports a meaningless
angle). The PS ends use exact radians where the challenge code uses 0.01745 rad/deg (the
reference does too; the difference on the ground truth is in the model card, "Model").

Coordinates: every point is ``(x, y)`` = ``(column, row)`` of the label map, in pixels, measured
at pixel centres, as in :mod:`psfh.measure.aop`. The y axis points down.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import measure

from psfh.core.errors import PSFHInputError

# The same input checks as the clinical AoP, so both refuse exactly the same maps.
from psfh.core.labels import FH, PS, check_label_map

SIMPLIFY_TOLERANCE_PX = 1.0
# The challenge fits only polygons of more than 5 vertices (cv2.fitEllipse needs 5, and takes
# another algorithm at exactly 5).
MIN_FIT_VERTICES = 6

# From a region's first pixel in raster order, OpenCV's trace ends at the first foreground pixel
# found going clockwise from the west; of those, only east, south-east, south and south-west can
# be foreground there. (dx, dy) steps.
_CLOCKWISE_FROM_WEST = ((1, 0), (1, 1), (0, 1), (-1, 1))

# OpenCV's thresholds in fitEllipse: float epsilon for a singular design matrix, and the size
# below which a conic coefficient counts as zero.
_FLT_EPSILON = float(np.finfo(np.float32).eps)
_MIN_EPS = 1e-8


@dataclass(frozen=True)
class RotatedEllipse:
    """An ellipse in OpenCV's RotatedRect convention, as ``cv2.fitEllipse`` returns it.

    Attributes:
        centre: ``(x, y)`` in pixels.
        width: the minor axis' full length (w).
        height: the major axis' full length (h >= w).
        angle_deg: in [0, 180]; the major axis points along ``angle_deg - 90``.
    """

    centre: tuple[float, float]
    width: float
    height: float
    angle_deg: float

    def major_direction(self) -> np.ndarray:
        """Unit length-2 ``(x, y)`` vector along the major axis, at ``angle_deg - 90`` deg.

        Its x is never negative: ``centre + height / 2 * major_direction()`` is the major axis'
        end with the larger x (the upper end for a vertical axis at angle 0).
        """
        turn = math.radians(self.angle_deg - 90.0)
        return np.array([math.cos(turn), math.sin(turn)])


# ---------------------------------------------------------------------------------------------
# Step 1: the largest outer contour, as cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_NONE) gives it


def outer_boundaries(mask: np.ndarray) -> list[np.ndarray]:
    """The outer boundaries of a mask's 8-connected regions, as OpenCV traces them.

    Marching squares at level 0.5 on a 0/1 image puts every contour vertex halfway between a
    foreground and a background pixel; the foreground pixels, in contour order, are OpenCV's
    boundary chain (checked equal to a line-for-line port of OpenCV's border following on the
    2156 PSFHS ground-truth contours and on 17,000 contours of random masks).

    Args:
        mask: H x W boolean array.

    Returns:
        One N x 2 int array of ``(x, y)`` boundary pixels per region, each starting at its
        region's first pixel in raster order and running the way OpenCV's trace does (down the
        left side first); a one-pixel region gives one point. In no particular order.
    """
    # RETR_EXTERNAL sees neither holes nor anything inside them; the pad closes the contours of
    # regions touching the image border.
    filled = np.pad(ndimage.binary_fill_holes(mask), 1)
    lines = measure.find_contours(
        filled.astype(np.float32), 0.5, fully_connected="high", positive_orientation="high"
    )
    return [_boundary_chain(line, filled) for line in lines]


def _boundary_chain(line: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Turn one closed marching-squares contour (K x 2 (row, col)) into OpenCV's pixel chain."""
    low, high = np.floor(line).astype(int), np.ceil(line).astype(int)
    inside = np.where(filled[low[:, 0], low[:, 1]][:, None], low, high)
    # Several vertices lie on the sides of one pixel: that pixel is one chain point.
    new = np.ones(len(inside), dtype=bool)
    new[1:] = np.any(inside[1:] != inside[:-1], axis=1)
    inside = inside[new]
    if len(inside) > 1 and np.array_equal(inside[0], inside[-1]):
        inside = inside[:-1]  # the closing vertex repeats the first
    chain = inside[:, ::-1] - 1  # (row, col) of the padded image -> (x, y)
    return _rotate_to_opencv_start(chain, filled)


def _rotate_to_opencv_start(chain: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Start a cyclic chain where OpenCV does: at the region's first pixel in raster order.

    A pixel where thin parts meet is visited more than once; OpenCV's trace starts at the visit
    that follows the first foreground neighbour clockwise from the west (its last point).
    """
    first = chain[np.lexsort((chain[:, 0], chain[:, 1]))[0]]
    visits = np.flatnonzero(np.all(chain == first, axis=1))
    start = visits[0]
    if len(visits) > 1:
        x, y = first
        # filled is padded by one pixel: (x, y) is at filled[y + 1, x + 1].
        last = next(
            np.array([x + dx, y + dy])
            for dx, dy in _CLOCKWISE_FROM_WEST
            if filled[y + 1 + dy, x + 1 + dx]
        )
        start = next((v for v in visits if np.array_equal(chain[v - 1], last)), start)
    return np.roll(chain, -start, axis=0)


def largest_outer_boundary(mask: np.ndarray) -> np.ndarray | None:
    """The outer boundary with the most points, as the challenge picks it; None for an empty mask.

    Of boundaries with equally many points the challenge keeps the first in OpenCV's list. OpenCV
    lists the last-found region first, so the one whose first pixel comes last in raster order is
    kept. (Not checked against OpenCV itself; no ground-truth map has such a tie.)

    Args:
        mask: H x W boolean array.

    Returns:
        N x 2 int array of ``(x, y)`` pixels (see :func:`outer_boundaries`), or None.
    """
    boundaries = outer_boundaries(mask)
    if not boundaries:
        return None
    boundaries.sort(key=lambda chain: (chain[0, 1], chain[0, 0]), reverse=True)
    return max(boundaries, key=len)  # max keeps the first of equals


# ---------------------------------------------------------------------------------------------
# Step 1: the 1 px simplification, cv2.approxPolyDP(contour, 1, closed=True)


def simplify_closed(chain: np.ndarray, tolerance: float = SIMPLIFY_TOLERANCE_PX) -> np.ndarray:
    """OpenCV's Douglas-Peucker simplification of a closed pixel chain.

    The curve is cut at two far-apart points, each half is simplified with the perpendicular
    distance to the chord's line, and a last pass drops vertices lying almost on the chord of
    their neighbours. Ties go to the first point in chain order, as in OpenCV; the integer
    coordinates keep the distances exact, so the ties are the same.

    Args:
        chain: N x 2 ``(x, y)`` points of a closed curve in order, N >= 1.
        tolerance: the largest distance, in pixels, of a dropped point from the polygon.

    Returns:
        M x 2 float array of polygon vertices, a subset of ``chain`` in chain order.
    """
    points = np.asarray(chain, dtype=float)
    start, far, spread_sq = _far_apart_pair(points)
    if spread_sq <= tolerance**2:
        return points[[start]]
    kept = _douglas_peucker(points, start, far, tolerance)
    kept += _douglas_peucker(points, far, start, tolerance)
    return _drop_almost_collinear(points[kept], tolerance)


def _far_apart_pair(points: np.ndarray) -> tuple[int, int, float]:
    """OpenCV's cut points: hop three times to the farthest point, starting at point 0.

    Returns the indices of the last hop's start and its farthest point, and their squared
    distance.
    """
    count = len(points)
    start, offset, farthest_sq = 0, 0, 0.0
    for _ in range(3):
        start = (start + offset) % count
        following = np.roll(points, -start, axis=0)[1:]  # chain order after the start
        distances_sq = np.sum((following - points[start]) ** 2, axis=1)
        farthest_sq = float(distances_sq.max()) if count > 1 else 0.0
        if farthest_sq > 0:  # OpenCV keeps the last offset when nothing is farther than 0
            offset = 1 + int(np.argmax(distances_sq))
    return start, (start + offset) % count, farthest_sq


def _douglas_peucker(points: np.ndarray, first: int, last: int, tolerance: float) -> list[int]:
    """Indices kept from the cyclic run ``first`` .. ``last`` (``last`` itself excluded).

    The distance is to the chord's infinite line, not to the segment, as in OpenCV.
    """
    count = len(points)
    kept = []
    runs = [(first, last)]
    while runs:
        a, b = runs.pop()
        inner = (a + 1 + np.arange((b - a) % count - 1)) % count
        if inner.size:
            dx, dy = points[b] - points[a]
            offsets = points[inner] - points[a]
            # |cross product| = distance to the line times the chord's length
            distances = np.abs(offsets[:, 1] * dx - offsets[:, 0] * dy)
            k = int(np.argmax(distances))
            if distances[k] ** 2 > tolerance**2 * (dx * dx + dy * dy):
                runs += [(int(inner[k]), b), (a, int(inner[k]))]  # the first half pops first
                continue
        kept.append(a)
    return kept


def _drop_almost_collinear(polygon: np.ndarray, tolerance: float) -> np.ndarray:
    """approxPolyDP's last pass on a closed polygon, line for line.

    Going once round from the last vertex, a vertex is dropped when it lies between its
    neighbours and within ``tolerance / sqrt(2)`` of the chord joining them, unless that chord is
    horizontal or vertical; after a drop the next vertex is not examined. The pass writes the
    survivors into the array it reads, so near the end it reads vertices it has already
    rewritten: that is kept, because it is what the challenge's polygons are.

    Args:
        polygon: M x 2 vertices in order.

    Returns:
        L x 2 vertices, L <= M.
    """
    vertices = [tuple(p) for p in polygon]
    count = remaining = len(vertices)
    if count < 3:
        return np.asarray(polygon, dtype=float)
    start, point = vertices[-1], vertices[0]
    read, write, examined = 1 % count, 0, 0
    while examined < count and remaining > 2:
        end = vertices[read]
        read = (read + 1) % count
        dx, dy = end[0] - start[0], end[1] - start[1]
        off_chord = abs((point[0] - start[0]) * dy - (point[1] - start[1]) * dx)
        between = (point[0] - start[0]) * (end[0] - point[0]) + (point[1] - start[1]) * (
            end[1] - point[1]
        )
        if (
            off_chord**2 <= 0.5 * tolerance**2 * (dx * dx + dy * dy)
            and dx != 0
            and dy != 0
            and between >= 0
        ):
            remaining -= 1
            vertices[write] = start = end
            write = (write + 1) % count
            point = vertices[read]
            read = (read + 1) % count
            examined += 2
            continue
        vertices[write] = start = point
        write = (write + 1) % count
        point = end
        examined += 1
    return np.array(vertices[:remaining], dtype=float)


# ---------------------------------------------------------------------------------------------
# Step 1: the least-squares ellipse


def fit_ellipse_opencv(points: np.ndarray) -> RotatedEllipse | None:
    """``cv2.fitEllipse`` for 6 or more points (OpenCV 4's fitEllipseNoDirect), in numpy.

    A general conic ``-A x^2 - B y^2 - C xy + D x + E y = 10000`` is fitted by least squares to
    the centred, scaled points; its centre is where the conic's gradient vanishes; then
    ``A' dx^2 + B' dy^2 + C' dx dy = 1`` is refitted about that centre, which gives the axes and
    the angle. The conic is not forced to be an ellipse (OpenCV's absolute values are kept).

    Args:
        points: N x 2 ``(x, y)``, N >= 6.

    Returns:
        The ellipse, or None when the points are degenerate (OpenCV would jitter them at random)
        or the fit has a zero or non-finite axis.
    """
    points = np.asarray(points, dtype=float)
    centroid = points.mean(axis=0)
    offsets = points - centroid
    spread = float(np.abs(offsets).sum())
    if len(points) < MIN_FIT_VERTICES or not spread > _FLT_EPSILON:
        return None
    scale = 100.0 / spread  # OpenCV's scaling: the fit's numbers do not depend on the image size
    x, y = (offsets * scale).T

    design = np.column_stack([-x * x, -y * y, -x * y, x, y])
    singular_values = np.linalg.svd(design, compute_uv=False)
    if singular_values[0] * _FLT_EPSILON > singular_values[-1]:
        return None
    a, b, c, d, e = np.linalg.lstsq(design, np.full(len(x), 10000.0), rcond=None)[0]

    gradient = np.array([[2 * a, c], [c, 2 * b]])
    cx, cy = np.linalg.lstsq(gradient, np.array([d, e]), rcond=None)[0]

    about_centre = np.column_stack([(x - cx) ** 2, (y - cy) ** 2, (x - cx) * (y - cy)])
    a, b, c = np.linalg.lstsq(about_centre, np.ones(len(x)), rcond=None)[0]
    centre = centroid + np.array([cx, cy]) / scale
    return _rotated_ellipse(float(a), float(b), float(c), centre, scale)


def _rotated_ellipse(
    a: float, b: float, c: float, centre: np.ndarray, scale: float
) -> RotatedEllipse | None:
    """OpenCV's conversion of ``a dx^2 + b dy^2 + c dx dy = 1`` (scaled) to a RotatedRect."""
    theta = -0.5 * math.atan2(c, b - a)
    t = c / math.sin(-2.0 * theta) if abs(c) > _MIN_EPS else b - a
    first, second = abs(a + b - t), abs(a + b + t)
    if not (first > _MIN_EPS and second > _MIN_EPS):
        return None  # an infinite axis: OpenCV returns nonsense here
    width = 2.0 * math.sqrt(2.0 / first) / scale
    height = 2.0 * math.sqrt(2.0 / second) / scale
    angle = 0.0  # OpenCV sets the angle only when it swaps the axes (the usual case)
    if width > height:
        width, height = height, width
        angle = 90.0 + math.degrees(theta)
    if not all(map(math.isfinite, (*centre, width, height, angle))):
        return None
    return RotatedEllipse((float(centre[0]), float(centre[1])), width, height, angle)


def fit_ellipse_skimage(points: np.ndarray) -> RotatedEllipse | None:
    """scikit-image's least-squares ellipse (Halir-Flusser), in OpenCV's convention.

    Args:
        points: N x 2 ``(x, y)``, N >= 6.

    Returns:
        The ellipse, or None when the estimate fails.
    """
    points = np.asarray(points, dtype=float)
    if len(points) < MIN_FIT_VERTICES:
        return None
    with warnings.catch_warnings():
        # skimage 0.26 divides by zero when the axes lie at 45 deg; handled below.
        warnings.simplefilter("ignore", RuntimeWarning)
        model = measure.EllipseModel.from_estimate(points)
    if not model:
        return None
    centre = np.asarray(model.center, dtype=float)
    semi_major, semi_minor = (float(v) for v in model.axis_lengths)  # skimage sorts them
    if not semi_minor > 0:
        return None
    # There, its angle can come out 90 deg off: keep the orientation that fits the points.
    theta = min(
        (float(model.theta), float(model.theta) + math.pi / 2),
        key=lambda t: _misfit(points, centre, semi_major, semi_minor, t),
    )
    # Major along angle - 90 deg, angle in [0, 180): the PS apex is then the same end as OpenCV's.
    angle = (math.degrees(theta) + 90.0) % 180.0
    return RotatedEllipse(
        (float(centre[0]), float(centre[1])), 2 * semi_minor, 2 * semi_major, angle
    )


def _misfit(points: np.ndarray, centre: np.ndarray, a: float, b: float, theta: float) -> float:
    """Sum of squared algebraic residuals of N x 2 points to an ellipse with semi-axis ``a`` at
    ``theta`` radians and ``b`` across it."""
    along = np.array([math.cos(theta), math.sin(theta)])
    across = np.array([-along[1], along[0]])
    rel = points - centre
    return float(np.sum(((rel @ along / a) ** 2 + (rel @ across / b) ** 2 - 1.0) ** 2))


# A registry: another fitter is one more entry.
ELLIPSE_FITTERS: dict[str, Callable[[np.ndarray], RotatedEllipse | None]] = {
    "opencv": fit_ellipse_opencv,
    "skimage": fit_ellipse_skimage,
}


def class_ellipse(mask: np.ndarray, fitter: str = "opencv") -> RotatedEllipse | None:
    """Step 1 for one class: largest outer boundary -> 1 px polygon -> ellipse.

    Args:
        mask: H x W boolean array of one class.
        fitter: a key of :data:`ELLIPSE_FITTERS`.

    Returns:
        The ellipse, or None for an empty mask, a polygon of fewer than 6 vertices or a failed fit.
    """
    boundary = largest_outer_boundary(mask)
    if boundary is None:
        return None
    polygon = simplify_closed(boundary)
    if len(polygon) < MIN_FIT_VERTICES:
        return None
    return ELLIPSE_FITTERS[fitter](polygon)


# ---------------------------------------------------------------------------------------------
# Steps 3-5: apex, tangent point, angle


def symphysis_ends(ps: RotatedEllipse) -> tuple[np.ndarray, np.ndarray]:
    """The ends of the PS ellipse's major axis: ``(apex, other end)``, length-2 ``(x, y)`` each.

    The apex is the end along ``angle - 90`` deg, the one with the larger x.
    """
    half_axis = ps.height / 2.0 * ps.major_direction()
    centre = np.asarray(ps.centre)
    return centre + half_axis, centre - half_axis


def challenge_tangent_point(apex: np.ndarray, head: RotatedEllipse) -> np.ndarray | None:
    """Where the challenge's tangent from ``apex`` touches the head ellipse.

    Args:
        apex: length-2 ``(x, y)``.
        head: the FH ellipse.

    Returns:
        Length-2 ``(x, y)``, or None when the apex is inside the ellipse (no tangent).
    """
    a, b = head.height / 2.0, head.width / 2.0
    along = head.major_direction()
    across = np.array([-along[1], along[0]])  # the frame's y axis: x turned by +90 deg
    centre = np.asarray(head.centre)
    x0, y0 = float((apex - centre) @ along), float((apex - centre) @ across)
    if x0 * x0 == a * a:
        x0 += 1.0  # the challenge code's guard against dividing by zero, kept as it is
    radicand = b * b * x0 * x0 + a * a * y0 * y0 - a * a * b * b
    if radicand < 0:
        return None
    k = (x0 * y0 - math.sqrt(radicand)) / (x0 * x0 - a * a)
    c = y0 - k * x0
    # The chord midpoint of the line y = k x + c, which on a tangent is the touching point; the
    # challenge's form, safe where -a^2 k / c would divide by zero.
    x = -a * a * k * c / (b * b + a * a * k * k)
    y = k * x + c
    return centre + x * along + y * across


def _angle_deg(u: np.ndarray, v: np.ndarray) -> float | None:
    """Unsigned angle between two vectors in degrees, None when either has zero length."""
    if not (np.any(u) and np.any(v)):
        return None
    cross = u[0] * v[1] - u[1] * v[0]
    # atan2 stays accurate near 0 and 180 deg, where the challenge's law of cosines does not.
    return math.degrees(math.atan2(abs(cross), float(u @ v)))


def challenge_aop(label_map: np.ndarray, fitter: str = "opencv") -> float | None:
    """The angle of progression by the PS-FH-AOP 2023 challenge's definition.

    Args:
        label_map: H x W integer array (or array-like), 0 background, 1 pubic symphysis,
            2 fetal head.
        fitter: the ellipse fit, a key of :data:`ELLIPSE_FITTERS`; "opencv" reproduces the
            challenge's numbers.

    Returns:
        The angle in degrees, in [0, 180], or None when the challenge's construction has no
        answer (a class missing, too few polygon vertices, a degenerate fit, the apex inside the
        head ellipse).

    Raises:
        PSFHInputError: ``label_map`` is not 2-D, is empty, or holds other values than 0/1/2;
            or ``fitter`` is unknown.
    """
    if fitter not in ELLIPSE_FITTERS:
        raise PSFHInputError(
            f"fitter must be one of {', '.join(ELLIPSE_FITTERS)}; got {fitter!r}"
        )
    labels = check_label_map(label_map)
    ps = class_ellipse(labels == PS, fitter)
    head = class_ellipse(labels == FH, fitter)
    if ps is None or head is None:
        return None
    apex, other_end = symphysis_ends(ps)
    touching = challenge_tangent_point(apex, head)
    if touching is None:
        return None
    return _angle_deg(other_end - apex, touching - apex)
