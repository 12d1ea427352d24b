"""Head-symphysis distance (HSD) from a pubic symphysis / fetal head label map.

The HSD, as the project's issue 14 defines it and as implemented here: the distance from the
inferior apex of the pubic symphysis (PS) to the fetal skull, along the line through the apex
perpendicular to the PS long axis. The measurement is described for intrapartum
transperineal ultrasound by Youssef A, Maroni E, Ragusa A, et al., "Fetal head-symphysis
distance: a simple and reliable ultrasound index of fetal head station in labor", Ultrasound
Obstet Gynecol 2013; 41: 419-424, doi:10.1002/uog.12335 (docs/HSD.md says what of it was
checked). Measured here on a label map (the values of :mod:`psfh.core.labels`) as follows:

1. Keep the largest connected component of each structure, as :func:`psfh.measure.aop.measure_aop`
   does.
2. PS long axis and inferior apex: exactly those of the AoP (:func:`psfh.measure.aop.ps_axis_ends`):
   the principal axis of the PS pixels, and its end nearer the FH centroid. No HSD when the
   apex is inside the head (the AoP's test: in an FH pixel or in the head's convex hull).
3. From the apex, a ray perpendicular to the axis, on the side of the axis where the FH
   centroid lies. With a pixel spacing the ray is perpendicular in millimetres (on an
   anisotropic grid a right angle in pixels is not one in the body); without one, in pixels.
4. Skull point: where the ray first enters the fetal head mask, taking each FH pixel as the
   unit square around its centre. Found exactly, by walking the ray across the pixel grid's
   lines (no step size to choose).
5. HSD: the length of apex -> skull point, in pixels, and in mm when the spacing is known (the
   vector's column and row components are each scaled by their own spacing).

Steps 3-5 are :func:`hsd_from_points`, which :func:`measure_hsd` calls with the model's axis ends and
which a user's own PS ends (calipers, :mod:`psfh.model.calipers`) go through as well: the HSD follows a
moved inferior end and a turned axis.

Coordinates follow :mod:`psfh.measure.aop`: points are ``(x, y)`` = ``(column, row)`` at pixel centres.
See docs/HSD.md for the construction and its limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from psfh.core.errors import PSFHInputError
from psfh.core.labels import FH, PS, check_label_map, largest_component
from psfh.measure.aop import Measurement, Point, apex_inside_head, mask_points, ps_axis_ends

# Grid-line crossings closer than this (in pixels of ray length) are one crossing: the ray
# passes through a pixel corner there and touches the diagonal neighbours only at a point.
_SAME_CROSSING_PX = 1e-9
MISSES_HEAD = "the perpendicular from the symphysis' inferior end misses the fetal head"


@dataclass(frozen=True)
class HSDMeasurement(Measurement):
    """An HSD and its construction, or the reason there is none.

    Points are ``(x, y)`` = ``(column, row)`` pixel coordinates (floats, pixel centres).

    Attributes:
        distance_px: length of the HSD line in pixels (of the label map), or None when it
            cannot be measured.
        distance_mm: the same line's length in millimetres; None without a pixel spacing. With
            an anisotropic spacing it is not ``distance_px`` times one number.
        reason: why there is no distance, in plain words; None when it was measured.
        apex: the inferior end of the PS long axis, where the HSD line starts (the AoP's apex).
        skull_point: where the HSD line meets the fetal head.
    """

    distance_px: float | None
    distance_mm: float | None = None
    reason: str | None = None
    apex: Point | None = None
    skull_point: Point | None = None


def check_spacing(spacing_mm) -> np.ndarray | None:
    """``(row spacing, column spacing)`` in mm per pixel -> ``(column, row)`` array, or None.

    The order is flipped so that it multiplies ``(x, y)`` vectors directly. Raises
    PSFHInputError unless there are two finite, positive numbers.
    """
    if spacing_mm is None:
        return None
    try:
        values = np.asarray(spacing_mm, dtype=float)
    except (TypeError, ValueError):
        values = np.array([])
    if values.shape != (2,) or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise PSFHInputError(
            f"spacing_mm must be two positive numbers (row spacing, column spacing) in mm per pixel; "
            f"got {spacing_mm!r}"
        )
    return values[::-1].copy()


def perpendicular_towards(axis: np.ndarray, target: np.ndarray, scale: np.ndarray) -> list[np.ndarray]:
    """Unit pixel-space direction(s) of the perpendicular to ``axis`` on the side of ``target``.

    Perpendicular in physical space: a vector ``v`` (pixels) is ``v * scale`` in mm, so the mm
    perpendicular of the axis, mapped back to pixels, is ``(-a_y s_y / s_x, a_x s_x / s_y)``.

    Args:
        axis: length-2 ``(x, y)`` direction of the PS axis, in pixels, not zero.
        target: length-2 ``(x, y)`` vector from the apex towards the head centroid.
        scale: length-2 ``(column, row)`` mm per pixel (ones for pixel space).

    Returns:
        A list of one unit vector; of both (``n`` and ``-n``) when ``target`` lies on the axis
        line, so that neither side is the head's (the caller keeps the nearer hit).
    """
    normal = np.array([-axis[1] * scale[1] / scale[0], axis[0] * scale[0] / scale[1]])
    normal /= np.linalg.norm(normal)
    # Which side the head is on is a physical question too: compare in mm.
    side = float((normal * scale) @ (target * scale))
    if abs(side) <= 1e-9 * float(np.linalg.norm(axis * scale) * np.linalg.norm(target * scale)):
        return [normal, -normal]
    return [normal if side > 0 else -normal]


def ray_entry(mask: np.ndarray, start: np.ndarray, direction: np.ndarray) -> float | None:
    """Ray length at which a ray first enters a True pixel of ``mask``, or None if it never does.

    Pixel ``mask[r, c]`` is the unit square centred on ``(c, r)``. The ray crosses the grid
    lines ``x = k + 0.5`` and ``y = k + 0.5``; between two crossings it stays in one pixel, the
    one holding the middle of that stretch, so the first True pixel met, and the crossing
    where its stretch begins, are exact.

    Args:
        mask: H x W bool.
        start: length-2 ``(x, y)`` start of the ray (may lie outside the image).
        direction: length-2 ``(x, y)`` unit vector.

    Returns:
        The distance in pixels from ``start`` to the entry point; 0.0 when ``start`` is in a
        True pixel.
    """
    height, width = mask.shape
    # Far enough to leave the image from anywhere a PS axis end can be.
    length = math.hypot(height, width) + float(np.abs(start).max()) + 2.0
    crossings = [np.array([0.0, length])]
    for axis, size in ((0, width), (1, height)):
        if abs(direction[axis]) > 1e-12:
            lines = np.arange(size + 1) - 0.5
            crossings.append((lines - start[axis]) / direction[axis])
    t = np.unique(np.concatenate(crossings))
    t = t[(t >= 0.0) & (t <= length)]
    begins, ends = t[:-1], t[1:]
    keep = ends - begins > _SAME_CROSSING_PX
    begins, ends = begins[keep], ends[keep]
    middles = start + np.outer((begins + ends) / 2, direction)
    cols, rows = np.floor(middles + 0.5).astype(int).T
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    hits = np.zeros(len(begins), dtype=bool)
    hits[inside] = mask[rows[inside], cols[inside]]
    if not hits.any():
        return None
    return float(begins[int(np.argmax(hits))])


def _point(p: np.ndarray) -> Point:
    return (float(p[0]), float(p[1]))


def measure_hsd(label_map, spacing_mm=None) -> HSDMeasurement:
    """Measure the head-symphysis distance on a label map.

    Args:
        label_map: H x W integer array (or array-like), 0 background, 1 pubic symphysis,
            2 fetal head.
        spacing_mm: ``(row spacing, column spacing)`` in mm per pixel, or None when unknown.
            Note the order: SimpleITK's ``GetSpacing()`` (and ``LoadedImage.spatial["spacing"]``)
            is ``(x, y)``, the other way round.

    Returns:
        An :class:`HSDMeasurement`. When the distance cannot be measured (no PS, no FH, a PS
        without a long axis, the apex inside the head, the perpendicular missing the head)
        ``distance_px`` is None, ``reason`` says why, and the apex is filled in once found.

    Raises:
        PSFHInputError: ``label_map`` is not 2-D, is empty, or holds other values than 0/1/2;
            ``spacing_mm`` is not two positive numbers.
    """
    labels = check_label_map(label_map)
    check_spacing(spacing_mm)  # refused before anything is measured
    ps = largest_component(labels == PS)
    fh = largest_component(labels == FH)
    if not ps.any():
        return HSDMeasurement(None, reason="no pubic symphysis found")
    if not fh.any():
        return HSDMeasurement(None, reason="no fetal head found")

    fh_points = mask_points(fh)
    superior, apex = ps_axis_ends(mask_points(ps), fh_points.mean(axis=0))
    if np.allclose(superior, apex):
        return HSDMeasurement(None, reason="the pubic symphysis is a single pixel and has no long axis")

    # The same test as the AoP's, so that both are refused together: a head reaching past the
    # apex (into its hull) overlaps the bone, which the anatomy does not allow.
    if apex_inside_head(apex, fh_points, fh):
        return HSDMeasurement(None, reason="the symphysis' inferior end lies inside the fetal head",
                              apex=_point(apex))
    return hsd_from_points(superior, apex, fh, spacing_mm)


def hsd_from_points(superior, apex, head_mask: np.ndarray, spacing_mm=None) -> HSDMeasurement:
    """The HSD from the two PS ends and the head (steps 3-5 of the module doc).

    Args:
        superior, apex: ``(x, y)``, the superior and the inferior PS end (the apex, outside the
            head: :func:`measure_hsd` and :mod:`psfh.model.calipers` check that first).
        head_mask: H x W bool, the fetal head's pixels (its largest component).
        spacing_mm: ``(row spacing, column spacing)`` in mm per pixel, or None.

    Returns:
        An :class:`HSDMeasurement`; no distance, with the reason, when the perpendicular misses
        the head.

    Raises:
        PSFHInputError: ``spacing_mm`` is not two positive numbers.
    """
    scale = check_spacing(spacing_mm)
    superior, apex = np.asarray(superior, dtype=float), np.asarray(apex, dtype=float)
    head_centroid = mask_points(head_mask).mean(axis=0)
    directions = perpendicular_towards(superior - apex, head_centroid - apex,
                                       np.ones(2) if scale is None else scale)
    entries = [(t, d) for d in directions if (t := ray_entry(head_mask, apex, d)) is not None]
    if not entries:
        return HSDMeasurement(None, reason=MISSES_HEAD, apex=_point(apex))

    distance_px, direction = min(entries, key=lambda entry: entry[0])
    skull = apex + distance_px * direction
    distance_mm = None if scale is None else float(np.linalg.norm((skull - apex) * scale))
    return HSDMeasurement(
        distance_px=distance_px,
        distance_mm=distance_mm,
        reason=None,
        apex=_point(apex),
        skull_point=_point(skull),
    )
