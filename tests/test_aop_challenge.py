"""Tests for psfh.measure.aop_challenge: the OpenCV reference, hand-computed scenes, OpenCV conventions."""

import csv
import math

import numpy as np
import pytest
from conftest import BAD_LABEL_MAPS, DATA, REFERENCE, require_data, require_reference
from skimage import draw

from psfh.core.errors import PSFHInputError
from psfh.io.images import load_label_map
from psfh.measure.aop_challenge import (
    ELLIPSE_FITTERS,
    RotatedEllipse,
    challenge_aop,
    class_ellipse,
    fit_ellipse_opencv,
    fit_ellipse_skimage,
    largest_outer_boundary,
    simplify_closed,
    symphysis_ends,
)

REFERENCE_CSV = REFERENCE / "aop_on_ground_truth.csv"
GROUND_TRUTH = sorted((DATA / "label_mha").glob("*.mha"))
SAMPLE = GROUND_TRUTH[::10]  # 108 maps spread over all exams

GRID = 320
HEAD_CENTRE = np.array([160.0, 160.0])
HEAD_AXES = (80.0, 50.0)  # semi-axes a (major, along the scene's x) and b
PS_AXES = (30.0, 6.0)
PS_DROP = 100.0  # the apex lies this far from the head centre, across the head's major axis


# ---------------------------------------------------------------------------------------------
# Agreement with the OpenCV 4 reference


@pytest.fixture(scope="module")
def reference_sample():
    """(reference angle, label map) for every 10th ground-truth map."""
    require_data()
    require_reference(REFERENCE_CSV.name)
    with open(REFERENCE_CSV, newline="") as handle:
        reference = {
            row["id"]: float(row["aop_challenge_definition_deg"]) for row in csv.DictReader(handle)
        }
    return [(reference[path.stem], load_label_map(path)) for path in SAMPLE]


def _differences(sample, fitter):
    return np.array([abs(challenge_aop(labels, fitter) - angle) for angle, labels in sample])


def test_reproduces_the_opencv_reference(reference_sample):
    # Measured on all 1078 maps: max 0.0005 deg (float32 rounding inside OpenCV).
    differences = _differences(reference_sample, "opencv")
    assert differences.max() < 0.01


def test_skimage_fitter_differs_only_as_another_fitter_does(reference_sample):
    # Measured on this sample: 98 % within 1 deg, median 0.13, max 2.0 deg (all 1078 maps:
    # 98.4 %, median 0.12, max 4.3).
    differences = _differences(reference_sample, "skimage")
    assert np.mean(differences <= 1.0) >= 0.95
    assert np.median(differences) < 0.25
    assert differences.max() < 3.0


# ---------------------------------------------------------------------------------------------
# Hand-computed scenes


def _scene(turn_deg: float, side: int) -> np.ndarray:
    """A head ellipse and a PS ellipse, the whole scene turned by ``turn_deg`` about the head.

    Before the turn the head's major axis (a = 80) lies along x; the PS lies along x too, with
    its right end (the apex) at (0, side * 100) from the head centre: below the head for
    side = +1 (y points down), above for side = -1.
    """
    turn = math.radians(turn_deg)
    rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    labels = np.zeros((GRID, GRID), dtype=np.uint8)
    shapes = [
        (2, (0.0, 0.0), HEAD_AXES),
        (1, (-PS_AXES[0], side * PS_DROP), PS_AXES),
    ]
    for label, offset, (along, across) in shapes:
        x, y = HEAD_CENTRE + rotation @ np.array(offset)
        # skimage turns counter-clockwise as seen on screen, i.e. by -turn in (x, y) with y down.
        rows, cols = draw.ellipse(y, x, across, along, shape=labels.shape, rotation=-turn)
        labels[rows, cols] = label
    return labels


def _hand_computed_aop(side: int) -> float:
    """The challenge's AoP for :func:`_scene`, worked out by hand.

    In the head's frame the apex is (x0, y0) = (0, side * 100), so the slope is
    k = (0 - sqrt(a^2 y0^2 - a^2 b^2)) / (0 - a^2) = sqrt(y0^2 - b^2) / a = sqrt(3) * 5 / 8 for
    either side, c = y0, and the touching point is x = -a^2 k / c = -side * 40 sqrt(3),
    y = b^2 / y0 = side * 25. The other PS end is 60 px in -x from the apex. Below the head
    (side +1) the ray to the tangent point goes to (-40 sqrt(3), -75): 47.27 deg from the ray
    along -x, the near tangent; above it (side -1) to (+40 sqrt(3), +75): 132.73 deg, the far one.
    """
    touching = np.array([-side * 40 * math.sqrt(3), side * 25.0])
    apex = np.array([0.0, side * PS_DROP])
    u, v = np.array([-1.0, 0.0]), touching - apex
    return math.degrees(math.acos(u @ v / np.linalg.norm(v)))


def test_hand_computed_values():
    assert _hand_computed_aop(+1) == pytest.approx(47.2695, abs=1e-3)
    assert _hand_computed_aop(-1) == pytest.approx(180 - 47.2695, abs=1e-3)


@pytest.mark.parametrize("fitter", sorted(ELLIPSE_FITTERS))
@pytest.mark.parametrize("side", [+1, -1])
@pytest.mark.parametrize("turn_deg", [0, -25, 35, 60, -60])
def test_scene_matches_hand_computation(turn_deg, side, fitter):
    # Turning the scene turns both ellipses' frames, so the angle stays (the apex stays the same
    # end while the PS axis is less than 90 deg from x). Pixel outlines put the fitted ellipses
    # up to about half a pixel inside the drawn ones: measured within 0.37 deg.
    assert challenge_aop(_scene(turn_deg, side), fitter) == pytest.approx(
        _hand_computed_aop(side), abs=0.6
    )


@pytest.mark.parametrize("turn_deg", [70, -70, 0])
def test_apex_is_the_end_with_larger_x(turn_deg):
    ps = class_ellipse(_scene(turn_deg, +1) == 1)
    apex, other = symphysis_ends(ps)
    assert apex[0] > other[0]
    # the drawn PS runs 60 px along the turned x axis; the apex is its end along +x
    turn = math.radians(turn_deg)
    expected_apex = HEAD_CENTRE + PS_DROP * np.array([-math.sin(turn), math.cos(turn)])
    assert np.linalg.norm(apex - expected_apex) < 1.5


def test_apex_inside_head_gives_none():
    labels = np.zeros((GRID, GRID), dtype=np.uint8)
    rows, cols = draw.ellipse(160, 160, 50, 80, shape=labels.shape)
    labels[rows, cols] = 2
    # A PS whose right end (the apex, at x = 200) lies inside the head ellipse.
    rows, cols = draw.ellipse(160, 170, 6, 30, shape=labels.shape)
    labels[rows, cols] = 1
    assert class_ellipse(labels == 1) is not None and class_ellipse(labels == 2) is not None
    assert challenge_aop(labels) is None


def test_too_few_polygon_vertices_gives_none():
    labels = _scene(0, +1)
    labels[labels == 1] = 0
    labels[250:253, 150:153] = 1  # a 3 x 3 square simplifies to 4 vertices: no ellipse
    assert class_ellipse(labels == 1) is None
    assert challenge_aop(labels) is None


def test_smaller_stray_blobs_are_ignored():
    labels = _scene(20, +1)
    clean = challenge_aop(labels)
    labels[2:12, 2:12] = 1
    labels[-12:-2, 2:12] = 2
    assert challenge_aop(labels) == clean


@pytest.mark.parametrize("missing", [1, 2])
def test_missing_class_gives_none(missing):
    labels = _scene(0, +1)
    assert challenge_aop(labels) is not None
    labels[labels == missing] = 0
    assert challenge_aop(labels) is None


def test_all_background_gives_none():
    assert challenge_aop(np.zeros((64, 64), dtype=np.uint8)) is None


# ---------------------------------------------------------------------------------------------
# OpenCV's conventions, piece by piece


def test_boundary_runs_as_opencv_traces_it():
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True
    # From the first pixel in raster order, down the left side first; (x, y) = (column, row).
    expected = [[1, 1], [1, 2], [1, 3], [2, 3], [3, 3], [3, 2], [3, 1], [2, 1]]
    assert largest_outer_boundary(mask).tolist() == expected


def test_boundary_ignores_holes_and_empty_masks():
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False
    assert len(largest_outer_boundary(mask)) == 16  # the 5 x 5 square's rim
    assert largest_outer_boundary(np.zeros((7, 7), dtype=bool)) is None


def test_rectangle_simplifies_to_its_corners():
    mask = np.zeros((9, 9), dtype=bool)
    mask[1:6, 2:8] = True  # x 2..7, y 1..5
    polygon = simplify_closed(largest_outer_boundary(mask))
    assert sorted(map(tuple, polygon.tolist())) == [(2, 1), (2, 5), (7, 1), (7, 5)]


@pytest.mark.parametrize("fit", [fit_ellipse_opencv, fit_ellipse_skimage])
@pytest.mark.parametrize("major_deg", [-80, -45, -30, 0, 10, 45, 90, 135])
def test_fit_returns_opencv_convention(fit, major_deg):
    # Exact points of an ellipse whose major axis points along major_deg (x, y; y down).
    turn = math.radians(major_deg)
    along = np.array([math.cos(turn), math.sin(turn)])
    across = np.array([-along[1], along[0]])
    t = np.linspace(0, 2 * math.pi, 13)[:-1]
    points = (
        np.array([50.0, 40.0]) + np.outer(30 * np.cos(t), along) + np.outer(12 * np.sin(t), across)
    )
    ellipse = fit(points)
    assert ellipse.centre == pytest.approx((50, 40), abs=1e-6)
    assert (ellipse.width, ellipse.height) == pytest.approx((24, 60), abs=1e-6)
    # OpenCV: the major axis points along angle - 90 deg, angle in [0, 180].
    assert ellipse.angle_deg == pytest.approx((major_deg + 90) % 180, abs=1e-6)


def test_major_direction_points_to_larger_x():
    for angle in (0.0, 30.0, 90.0, 150.0, 180.0):
        direction = RotatedEllipse((0.0, 0.0), 1.0, 2.0, angle).major_direction()
        assert direction[0] >= -1e-12
    # a vertical axis at angle 0: the upper end (y points down)
    assert RotatedEllipse((0.0, 0.0), 1.0, 2.0, 0.0).major_direction() == pytest.approx((0, -1))


def test_degenerate_points_do_not_fit():
    collinear = np.column_stack([np.arange(8.0), 2 * np.arange(8.0)])
    assert fit_ellipse_opencv(collinear) is None
    assert fit_ellipse_opencv(collinear[:5]) is None  # fewer than 6 points


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("bad", BAD_LABEL_MAPS)
def test_bad_input_raises(bad):
    with pytest.raises(PSFHInputError):
        challenge_aop(bad)


def test_unknown_fitter_raises():
    with pytest.raises(PSFHInputError, match="fitter"):
        challenge_aop(_scene(0, +1), fitter="opencv2")
