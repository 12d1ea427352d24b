"""Where an AoP error comes from: PS axis error, apex distance, and the AoP with the expert's PS or head."""

import numpy as np
import pytest

from psfh.core.labels import FH, PS
from psfh.measure.aop import measure_aop
from psfh.measure.aop_error_sources import (
    ERROR_SOURCE_COLUMNS,
    combine_structures,
    error_sources,
    line_angle_deg,
    ps_axis_direction,
)
from psfh.measure.metrics import SCORE_COLUMNS, score_label_map, summarize

SIZE = 256


def _scene(ps_axis_deg: float, head_centre=(150, 150), head_radius=50) -> np.ndarray:
    """A 256 x 256 label map: an elongated PS (semi-axes 24 and 8 px) centred at (60, 90) with its
    long axis at ``ps_axis_deg`` from the x axis, and a round head."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[np.hypot(cols - head_centre[0], rows - head_centre[1]) <= head_radius] = FH
    angle = np.radians(ps_axis_deg)
    along = (cols - 60) * np.cos(angle) + (rows - 90) * np.sin(angle)
    across = -(cols - 60) * np.sin(angle) + (rows - 90) * np.cos(angle)
    labels[(along / 24) ** 2 + (across / 8) ** 2 <= 1] = PS
    return labels


@pytest.mark.parametrize("tilt", [0.0, 5.0, 12.0, 30.0])
def test_axis_error_is_the_tilt_between_outlines(tilt):
    errors = error_sources(_scene(20.0 + tilt), _scene(20.0))
    assert errors["ps_axis_error_deg"] == pytest.approx(tilt, abs=1.0)


def test_axis_is_a_line_without_sense():
    assert line_angle_deg(np.array([1.0, 0.0]), np.array([-1.0, 0.0])) == pytest.approx(0.0)
    assert line_angle_deg(np.array([1.0, 0.0]), np.array([-1.0, 1.0])) == pytest.approx(45.0)
    assert line_angle_deg(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(90.0)


def test_perfect_prediction_has_no_error_from_any_source():
    labels = _scene(25.0)
    assert error_sources(labels, labels) == {
        "ps_axis_error_deg": pytest.approx(0.0, abs=1e-6), "ps_apex_distance_px": 0.0,
        "aop_error_expert_ps": 0.0, "aop_error_expert_fh": 0.0}


def test_decomposition_blames_the_structure_that_is_wrong():
    expert = _scene(20.0)
    tilted_ps = combine_structures(_scene(35.0), expert)  # only the PS differs
    errors = error_sources(tilted_ps, expert)
    assert errors["aop_error_expert_ps"] == pytest.approx(0.0)  # the head is the expert's own
    total = abs(measure_aop(tilted_ps).angle_deg - measure_aop(expert).angle_deg)
    assert errors["aop_error_expert_fh"] == pytest.approx(total) and total > 5
    assert errors["ps_apex_distance_px"] > 1

    moved_head = combine_structures(expert, _scene(20.0, head_centre=(160, 170)))  # only the head differs
    errors = error_sources(moved_head, expert)
    assert errors["ps_axis_error_deg"] == pytest.approx(0.0, abs=1e-6)
    assert errors["aop_error_expert_fh"] == pytest.approx(0.0)
    assert errors["aop_error_expert_ps"] > 1


def test_combined_map_takes_each_structure_from_its_source():
    first, second = _scene(0.0), _scene(60.0, head_centre=(170, 160))
    combined = combine_structures(first, second)
    assert np.array_equal(combined == PS, first == PS)
    assert np.array_equal(combined == FH, (second == FH) & (first != PS))


def test_missing_structures_give_none_not_garbage():
    expert = _scene(20.0)
    no_ps = np.where(expert == PS, 0, expert).astype(np.uint8)
    errors = error_sources(no_ps, expert)
    assert errors["ps_axis_error_deg"] is None and errors["ps_apex_distance_px"] is None
    assert errors["aop_error_expert_fh"] is None  # the predicted PS is missing
    assert errors["aop_error_expert_ps"] == pytest.approx(0.0)  # expert PS + the (right) head
    assert ps_axis_direction(np.zeros((8, 8), np.uint8)) is None


def test_scores_and_summary_carry_the_sources():
    expert = _scene(20.0)
    rows = [score_label_map(str(i), combine_structures(_scene(20.0 + tilt), expert), expert)
            for i, tilt in enumerate((0.0, 10.0, 40.0))]
    assert all(set(row) == set(SCORE_COLUMNS) for row in rows)
    summary = summarize(rows)
    axis_errors = [row["ps_axis_error_deg"] for row in rows]
    assert summary["ps_axis_error_deg_mean"] == pytest.approx(np.mean(axis_errors))
    assert summary["ps_axis_error_deg_median"] == pytest.approx(10.0, abs=1.0)
    assert summary["aop_error_over_15"] == pytest.approx(np.mean([row["aop_error"] > 15 for row in rows]))
    assert set(f"{key}_p90" for key in ERROR_SOURCE_COLUMNS) <= set(summary)
