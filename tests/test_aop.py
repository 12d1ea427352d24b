"""Tests for psfh.measure.aop: synthetic shapes with an analytic angle, edge cases, real masks."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import BAD_LABEL_MAPS, DATA

from psfh.core.errors import PSFHInputError
from psfh.measure.aop import AoPMeasurement, measure_aop

GRID = 512
PS_LENGTH = 60.0
PS_WIDTH = 5.0

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_LABELS = sorted((REPO / "examples" / "label_mha").glob("*.mha"))
# A spread of the full data set where it is present (conftest: PSFH_DATA); the examples always.
PSFHS_LABELS = sorted((DATA / "label_mha").glob("*.mha"))


def _unit(angle_deg):
    a = math.radians(angle_deg)
    return np.array([math.cos(a), math.sin(a)])


def _synthetic_scene(axis_deg, alpha_deg, side, distance, radius):
    """Draw a thin rectangle (PS, label 1) and a disc (FH, label 2) on a GRID x GRID map.

    The rectangle runs from the apex A to the superior end S along direction ``axis_deg``;
    the disc centre C lies at ``distance`` from A, turned ``side * alpha_deg`` from the ray
    A -> S. The scene is centred on the grid.

    Returns the label map and the analytic construction: (apex, superior, centre, far and
    near tangent points, sweep from A -> S to the far tangent in degrees).
    """
    half_cone = math.degrees(math.asin(radius / distance))
    apex = np.zeros(2)
    superior = apex + PS_LENGTH * _unit(axis_deg)
    centre_deg = axis_deg + side * alpha_deg
    centre = apex + distance * _unit(centre_deg)
    # The far tangent is turned a further half cone away from the axis.
    reach = math.sqrt(distance**2 - radius**2)
    tangent = apex + reach * _unit(centre_deg + side * half_cone)
    near_tangent = apex + reach * _unit(centre_deg - side * half_cone)

    low = np.minimum.reduce([apex, superior, centre - radius])
    high = np.maximum.reduce([apex, superior, centre + radius])
    shift = (GRID - 1) / 2 - (low + high) / 2
    assert np.all(high - low < GRID - 10), "scene does not fit the grid"
    apex, superior, centre, tangent, near_tangent = (
        p + shift for p in (apex, superior, centre, tangent, near_tangent)
    )

    rows, cols = np.mgrid[0:GRID, 0:GRID]
    xy = np.stack([cols, rows], axis=-1).astype(float)
    labels = np.zeros((GRID, GRID), dtype=np.uint8)
    labels[np.linalg.norm(xy - centre, axis=-1) <= radius] = 2
    along = (xy - apex) @ _unit(axis_deg)
    across = (xy - apex) @ _unit(axis_deg + 90)
    labels[(along >= 0) & (along <= PS_LENGTH) & (np.abs(across) <= PS_WIDTH / 2)] = 1
    return labels, (apex, superior, centre, tangent, near_tangent, alpha_deg + half_cone)


def _assert_far_tangent(point, centre, radius, far, near):
    """The point is on the disc's edge, on the far tangent's side."""
    point = np.asarray(point)
    assert abs(np.linalg.norm(point - centre) - radius) <= 1.5
    # A grazing tangent is poorly placed along the arc, so allow a few pixels there; the near
    # tangent point is far away (2 * 20 deg or more around the disc).
    assert np.linalg.norm(point - far) < 0.1 * radius
    assert np.linalg.norm(point - near) > 0.5 * radius


# (axis direction, angle A->S to A->C, side, |AC|, radius): expected AoP = alpha + asin(r/d).
SCENES = [
    (0, 70, +1, 80, 40),  # 100.0 deg
    (45, 90, -1, 150, 60),  # 113.6 deg
    (160, 95, +1, 160, 90),  # 129.2 deg
    (200, 105, -1, 170, 100),  # 141.0 deg
    (290, 115, +1, 180, 110),  # 152.7 deg
    (135, 120, -1, 200, 100),  # 150.0 deg
    (-90, 100, +1, 190, 95),  # 130.0 deg, head straight across the +-180 deg direction
    (180, 85, -1, 140, 80),  # 119.8 deg
]


@pytest.mark.parametrize("axis_deg, alpha_deg, side, distance, radius", SCENES)
def test_synthetic_angle_matches_analytic(axis_deg, alpha_deg, side, distance, radius):
    labels, (apex, superior, centre, far, near, sweep) = _synthetic_scene(
        axis_deg, alpha_deg, side, distance, radius
    )
    result = measure_aop(labels)
    assert result.measured and result.reason is None
    assert result.angle_deg == pytest.approx(sweep, abs=2.0)
    assert np.linalg.norm(np.subtract(result.ps_inferior, apex)) < 2.0
    assert np.linalg.norm(np.subtract(result.ps_superior, superior)) < 2.0
    _assert_far_tangent(result.tangent_point, centre, radius, far, near)


def test_head_past_axis_extension_folds_angle_below_180():
    # The far tangent sweeps 150 + 40 = 190 deg from the axis: the angle between the rays is
    # 170 deg and the tangent point is still the far one.
    radius = 150 * math.sin(math.radians(40))
    labels, (_, _, centre, far, near, sweep) = _synthetic_scene(30, 150, -1, 150, radius)
    assert sweep == pytest.approx(190)
    result = measure_aop(labels)
    assert result.angle_deg == pytest.approx(360 - sweep, abs=2.0)
    _assert_far_tangent(result.tangent_point, centre, radius, far, near)


def _default_scene():
    return _synthetic_scene(200, 105, -1, 170, 100)[0]


def test_missing_pubic_symphysis():
    labels = _default_scene()
    labels[labels == 1] = 0
    result = measure_aop(labels)
    assert result.angle_deg is None and not result.measured
    assert result.reason == "no pubic symphysis found"


def test_missing_fetal_head():
    labels = _default_scene()
    labels[labels == 2] = 0
    result = measure_aop(labels)
    assert result.angle_deg is None
    assert result.reason == "no fetal head found"


def test_all_background():
    result = measure_aop(np.zeros((64, 64), dtype=np.uint8))
    assert result.angle_deg is None and result.reason == "no pubic symphysis found"


def test_apex_inside_head():
    rows, cols = np.mgrid[0:256, 0:256]
    labels = np.zeros((256, 256), dtype=np.uint8)
    labels[(cols - 128) ** 2 + (rows - 150) ** 2 <= 60**2] = 2
    # A vertical PS whose lower end reaches 20 px into the disc (labels 1 overwrite 2 there).
    labels[70:131, 126:131] = 1
    result = measure_aop(labels)
    assert result.angle_deg is None
    assert result.reason == "the symphysis' inferior end lies inside the fetal head"
    assert result.ps_inferior[1] > result.ps_superior[1]  # the end nearer the head
    assert result.tangent_point is None


def test_single_pixel_symphysis_has_no_axis():
    labels = np.zeros((64, 64), dtype=np.uint8)
    labels[10, 10] = 1
    labels[40:50, 40:50] = 2
    result = measure_aop(labels)
    assert result.angle_deg is None and "no long axis" in result.reason


def test_spurious_blobs_do_not_change_result():
    labels = _default_scene()
    clean = measure_aop(labels)
    noisy = labels.copy()
    noisy[2:6, 2:6] = 1  # a stray PS blob in a corner, far from everything
    noisy[-6:-2, 2:6] = 2  # and a stray FH blob in another
    assert measure_aop(noisy) == clean


@pytest.mark.parametrize("bad", BAD_LABEL_MAPS)
def test_bad_input_raises(bad):
    with pytest.raises(PSFHInputError):
        measure_aop(bad)


def test_whole_number_float_map_is_accepted():
    labels = _default_scene()
    assert measure_aop(labels.astype(np.float32)) == measure_aop(labels)


def test_result_is_frozen_and_json_able():
    result = measure_aop(_default_scene())
    with pytest.raises(AttributeError):
        result.angle_deg = 0.0
    data = json.loads(json.dumps(result.to_dict()))
    assert data["angle_deg"] == pytest.approx(result.angle_deg)
    assert data["reason"] is None
    assert data["tangent_point"] == list(result.tangent_point)
    empty = AoPMeasurement(None, "no fetal head found").to_dict()
    assert empty == {
        "angle_deg": None,
        "reason": "no fetal head found",
        "ps_superior": None,
        "ps_inferior": None,
        "tangent_point": None,
    }


def _real_label_paths():
    # A spread of the PSFHS data set plus the repository's examples.
    spread = PSFHS_LABELS[:: max(1, len(PSFHS_LABELS) // 5)][:5]
    return EXAMPLE_LABELS + spread


@pytest.mark.skipif(not EXAMPLE_LABELS, reason="examples/label_mha is missing")
@pytest.mark.parametrize(
    "path", _real_label_paths(), ids=lambda p: f"{p.parent.parent.name}/{p.name}"
)
def test_real_masks_in_clinical_range(path):
    sitk = pytest.importorskip("SimpleITK")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    result = measure_aop(labels)
    assert result.measured, result.reason
    # FACTS.md: the far tangent gives 102-175 deg on PSFHS ground truth.
    assert 90.0 <= result.angle_deg <= 180.0
    height, width = labels.shape
    for x, y in (result.ps_superior, result.ps_inferior, result.tangent_point):
        assert -0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5
    rows, cols = np.nonzero(labels == 2)
    gaps = np.hypot(cols - result.tangent_point[0], rows - result.tangent_point[1])
    assert gaps.min() <= 1.5
