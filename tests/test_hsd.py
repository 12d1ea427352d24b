"""Tests for psfh.measure.hsd: synthetic shapes with an analytic distance, spacing, edge cases, a real mask."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import BAD_LABEL_MAPS

from psfh.core.errors import PSFHInputError
from psfh.io.images import load_label_map
from psfh.measure.aop import measure_aop
from psfh.measure.hsd import MISSES_HEAD, HSDMeasurement, check_spacing, measure_hsd, perpendicular_towards, ray_entry

EXAMPLE_LABELS = Path(__file__).resolve().parents[1] / "examples" / "label_mha"
GRID = 400
PS_LENGTH = 60.0
PS_WIDTH = 5.0


def _unit(angle_deg):
    a = math.radians(angle_deg)
    return np.array([math.cos(a), math.sin(a)])


def _vertical_scene():
    """A vertical PS (pixel centres x 100..104, y 50..110) and a disc (centre (160, 120), r 40).

    By hand: the PS axis is the line x = 102, its inferior end (nearer the disc) A = (102, 110).
    The perpendicular from A is the row y = 110, towards +x. On that row the disc holds the
    pixels with (c - 160)^2 + 10^2 <= 40^2, i.e. c >= 160 - sqrt(1500) = 121.27, so c >= 122,
    whose square begins at x = 121.5: the HSD is 121.5 - 102 = 19.5 px (the true circle's is
    160 - sqrt(1500) - 102 = 19.27 px).
    """
    labels = np.zeros((200, 220), np.uint8)
    rows, cols = np.mgrid[:200, :220]
    labels[(cols - 160) ** 2 + (rows - 120) ** 2 <= 40**2] = 2
    labels[50:111, 100:105] = 1
    return labels


def _scene(axis_deg, side, across, along, radius, scale=(1.0, 1.0)):
    """A thin rectangle (PS) and a disc (FH) drawn in mm, sampled at the pixel centres.

    The PS runs from the apex A along ``axis_deg`` for PS_LENGTH mm; the disc centre is
    ``across`` mm from A along the perpendicular on ``side`` (+1 / -1) and ``along`` mm along the
    axis (negative: past the apex, as the head lies in labour). ``scale`` is (column, row) mm
    per pixel. By hand, the perpendicular from A meets the circle after
    ``across - sqrt(radius^2 - along^2)`` mm.

    Returns the label map, A in pixels, and that distance in mm.
    """
    scale = np.asarray(scale, float)
    axis = _unit(axis_deg)
    normal = side * _unit(axis_deg + 90)
    centre = across * normal + along * axis
    superior = PS_LENGTH * axis
    low = np.minimum.reduce([np.zeros(2), superior, centre - radius])
    high = np.maximum.reduce([np.zeros(2), superior, centre + radius])
    shift = (GRID - 1) / 2 * scale - (low + high) / 2  # centre the scene on the grid
    assert np.all(high - low < (GRID - 10) * scale), "scene does not fit the grid"
    apex, centre = shift, centre + shift

    rows, cols = np.mgrid[:GRID, :GRID]
    mm = np.stack([cols, rows], axis=-1) * scale
    labels = np.zeros((GRID, GRID), np.uint8)
    labels[np.linalg.norm(mm - centre, axis=-1) <= radius] = 2
    along_axis = (mm - apex) @ axis
    across_axis = (mm - apex) @ _unit(axis_deg + 90)
    labels[(along_axis >= 0) & (along_axis <= PS_LENGTH) & (np.abs(across_axis) <= PS_WIDTH / 2)] = 1
    return labels, apex / scale, across - math.sqrt(radius**2 - along**2)


# (PS axis direction, side of the head, |across|, along, radius), all in mm.
SCENES = [
    (90, +1, 70, -15, 45),
    (-60, -1, 90, -30, 60),
    (200, +1, 60, -10, 40),
    (135, -1, 100, 20, 70),
    (10, +1, 50, 0, 35),
]


def test_vertical_scene_matches_the_hand_computed_distance():
    result = measure_hsd(_vertical_scene())
    assert result.measured and result.reason is None
    assert result.apex == pytest.approx((102.0, 110.0))
    assert result.skull_point == pytest.approx((121.5, 110.0))
    assert result.distance_px == pytest.approx(19.5)
    assert result.distance_mm is None  # no spacing given


@pytest.mark.parametrize("axis_deg, side, across, along, radius", SCENES)
def test_synthetic_distance_matches_analytic(axis_deg, side, across, along, radius):
    labels, apex, expected = _scene(axis_deg, side, across, along, radius)
    result = measure_hsd(labels)
    assert result.measured
    assert result.distance_px == pytest.approx(expected, abs=1.0)
    assert np.linalg.norm(np.subtract(result.apex, apex)) < 1.5
    aop = measure_aop(labels)
    # The HSD line is perpendicular to the PS axis (the AoP's axis), and on the head's side.
    axis = np.subtract(aop.ps_superior, aop.ps_inferior)
    line = np.subtract(result.skull_point, result.apex)
    assert abs(axis @ line) / (np.linalg.norm(axis) * np.linalg.norm(line)) < 1e-9
    rows, cols = np.nonzero(labels == 2)
    head_centre = np.array([cols.mean(), rows.mean()])
    assert line @ (head_centre - np.asarray(result.apex)) > 0


@pytest.mark.parametrize("axis_deg, side, across, along, radius", SCENES)
def test_apex_is_the_aop_apex(axis_deg, side, across, along, radius):
    labels, _, _ = _scene(axis_deg, side, across, along, radius)
    assert measure_hsd(labels).apex == measure_aop(labels).ps_inferior  # exactly the same point


def test_isotropic_spacing_scales_the_length():
    labels = _vertical_scene()
    result = measure_hsd(labels, spacing_mm=(0.2, 0.2))
    assert result.distance_mm == pytest.approx(19.5 * 0.2)
    assert result.distance_px == measure_hsd(labels).distance_px


def test_anisotropic_spacing_converts_each_component():
    # The HSD line of the vertical scene runs along a row: only the column spacing counts.
    result = measure_hsd(_vertical_scene(), spacing_mm=(0.5, 0.25))
    assert result.distance_mm == pytest.approx(19.5 * 0.25)
    swapped = measure_hsd(_vertical_scene(), spacing_mm=(0.25, 0.5))
    assert swapped.distance_mm == pytest.approx(19.5 * 0.5)


@pytest.mark.parametrize("axis_deg, side, across, along, radius", SCENES[:3])
def test_anisotropic_scene_drawn_in_mm_matches_analytic(axis_deg, side, across, along, radius):
    # Pixels 0.5 mm wide and 1 mm high: a disc in mm is an ellipse in pixels, and a right angle
    # in mm is not one in pixels.
    column_mm, row_mm = 0.5, 1.0
    labels, _, expected_mm = _scene(axis_deg, side, across, along, radius, scale=(column_mm, row_mm))
    result = measure_hsd(labels, spacing_mm=(row_mm, column_mm))
    assert result.measured
    assert result.distance_mm == pytest.approx(expected_mm, abs=1.0)
    line_mm = np.subtract(result.skull_point, result.apex) * (column_mm, row_mm)
    assert result.distance_mm == pytest.approx(np.linalg.norm(line_mm))
    aop = measure_aop(labels)
    axis_mm = np.subtract(aop.ps_superior, aop.ps_inferior) * (column_mm, row_mm)
    assert abs(axis_mm @ line_mm) / (np.linalg.norm(axis_mm) * np.linalg.norm(line_mm)) < 1e-9


def test_perpendicular_that_misses_the_head():
    labels = np.zeros((240, 220), np.uint8)
    rows, cols = np.mgrid[:240, :220]
    labels[(cols - 140) ** 2 + (rows - 180) ** 2 <= 30**2] = 2  # rows 150..210: below row 110
    labels[50:111, 100:105] = 1
    result = measure_hsd(labels)
    assert not result.measured and result.distance_mm is None and result.skull_point is None
    assert result.reason == MISSES_HEAD and "misses the fetal head" in result.reason
    assert result.apex == pytest.approx((102.0, 110.0))
    assert measure_aop(labels).measured  # the AoP still exists: only the HSD line misses


def test_missing_pubic_symphysis_or_fetal_head():
    labels = _vertical_scene()
    no_ps = np.where(labels == 1, 0, labels)
    no_fh = np.where(labels == 2, 0, labels)
    assert measure_hsd(no_ps, (0.2, 0.2)) == HSDMeasurement(None, reason="no pubic symphysis found")
    assert measure_hsd(no_fh, (0.2, 0.2)) == HSDMeasurement(None, reason="no fetal head found")
    assert measure_hsd(np.zeros((32, 32), np.uint8)).reason == "no pubic symphysis found"


def test_apex_inside_head():
    # The AoP test's scene: a vertical PS whose lower end reaches 20 px into the disc.
    rows, cols = np.mgrid[0:256, 0:256]
    labels = np.zeros((256, 256), dtype=np.uint8)
    labels[(cols - 128) ** 2 + (rows - 150) ** 2 <= 60**2] = 2
    labels[70:131, 126:131] = 1
    result = measure_hsd(labels, (0.2, 0.2))
    assert result.distance_px is None and result.distance_mm is None and result.skull_point is None
    assert result.reason == "the symphysis' inferior end lies inside the fetal head"
    assert result.reason == measure_aop(labels).reason  # refused together with the AoP
    assert result.apex == pytest.approx((128.0, 130.0))


def test_single_pixel_symphysis_has_no_axis():
    labels = np.zeros((64, 64), np.uint8)
    labels[10, 10] = 1
    labels[40:50, 40:50] = 2
    assert "no long axis" in measure_hsd(labels).reason


def test_spurious_blobs_do_not_change_result():
    labels = _vertical_scene()
    noisy = labels.copy()
    noisy[2:6, 2:6] = 1
    noisy[-6:-2, 2:6] = 2
    assert measure_hsd(noisy) == measure_hsd(labels)


@pytest.mark.parametrize("bad", BAD_LABEL_MAPS)
def test_bad_label_map_raises(bad):
    with pytest.raises(PSFHInputError):
        measure_hsd(bad)


@pytest.mark.parametrize("spacing", [(0.2,), (0.2, 0.2, 0.2), (0.0, 0.2), (-0.1, 0.2), (float("nan"), 0.2),
                                     "ab", (None, 0.2)])
def test_bad_spacing_raises(spacing):
    with pytest.raises(PSFHInputError, match="spacing_mm"):
        measure_hsd(_vertical_scene(), spacing)


def test_check_spacing_flips_to_column_row():
    np.testing.assert_array_equal(check_spacing((0.5, 0.25)), [0.25, 0.5])
    assert check_spacing(None) is None


def test_ray_entry_is_exact_on_the_pixel_grid():
    mask = np.zeros((10, 20), bool)
    mask[5, 10] = True
    assert ray_entry(mask, np.array([2.0, 5.0]), np.array([1.0, 0.0])) == pytest.approx(7.5)
    assert ray_entry(mask, np.array([2.0, 5.0]), np.array([-1.0, 0.0])) is None
    assert ray_entry(mask, np.array([10.2, 5.1]), np.array([0.0, 1.0])) == 0.0  # starts inside
    diagonal = np.array([1.0, 1.0]) / math.sqrt(2)
    square = np.zeros((10, 10), bool)
    square[3, 3] = True  # entered through its corner (2.5, 2.5)
    assert ray_entry(square, np.zeros(2), diagonal) == pytest.approx(2.5 * math.sqrt(2))
    corner = np.zeros((10, 10), bool)
    corner[1, 2] = True  # y = x only touches this pixel's corner (1.5, 1.5): not a hit
    assert ray_entry(corner, np.zeros(2), diagonal) is None


def test_perpendicular_towards_the_head_side():
    down = perpendicular_towards(np.array([1.0, 0.0]), np.array([5.0, 3.0]), np.ones(2))
    assert len(down) == 1 and down[0] == pytest.approx([0.0, 1.0])
    up = perpendicular_towards(np.array([1.0, 0.0]), np.array([5.0, -3.0]), np.ones(2))
    assert up[0] == pytest.approx([0.0, -1.0])
    # The head centre on the axis line: no side is the head's, both are returned.
    both = perpendicular_towards(np.array([1.0, 0.0]), np.array([-5.0, 0.0]), np.ones(2))
    assert len(both) == 2 and both[0] == pytest.approx(-both[1])
    # 45 deg in pixels, pixels twice as wide as high: the mm perpendicular is not the pixel one.
    scale = np.array([2.0, 1.0])
    axis = np.array([1.0, 1.0])
    (normal,) = perpendicular_towards(axis, np.array([0.0, 10.0]), scale)
    assert (axis * scale) @ (normal * scale) == pytest.approx(0.0, abs=1e-12)
    assert abs(axis @ normal) > 0.1


def test_result_is_frozen_and_json_able():
    result = measure_hsd(_vertical_scene(), (0.2, 0.2))
    with pytest.raises(AttributeError):
        result.distance_px = 0.0
    data = json.loads(json.dumps(result.to_dict()))
    assert data == {"distance_px": pytest.approx(19.5), "distance_mm": pytest.approx(3.9), "reason": None,
                    "apex": pytest.approx([102.0, 110.0]), "skull_point": pytest.approx([121.5, 110.0])}
    assert HSDMeasurement(None, reason="no fetal head found").to_dict() == {
        "distance_px": None, "distance_mm": None, "reason": "no fetal head found", "apex": None,
        "skull_point": None,
    }


def test_real_example_gives_a_plausible_distance():
    labels = load_label_map(EXAMPLE_LABELS / "03811.mha")
    result = measure_hsd(labels, spacing_mm=(0.2, 0.2))
    assert result.measured, result.reason
    # A 256 x 256 frame: the head is below the symphysis, a few tens of pixels from its end.
    assert 5.0 < result.distance_px < 128.0 and math.isfinite(result.distance_px)
    assert result.distance_mm == pytest.approx(0.2 * result.distance_px)
    assert result.apex == measure_aop(labels).ps_inferior
    # The skull point is on the edge of a head pixel: a head pixel centre within half a diagonal.
    rows, cols = np.nonzero(labels == 2)
    gaps = np.hypot(cols - result.skull_point[0], rows - result.skull_point[1])
    assert gaps.min() <= math.sqrt(0.5) + 1e-9
    # ... and the segment before it crosses no head pixel.
    for t in np.linspace(0.0, 0.99, 50):
        x, y = np.add(result.apex, t * np.subtract(result.skull_point, result.apex))
        assert labels[int(np.floor(y + 0.5)), int(np.floor(x + 0.5))] != 2
