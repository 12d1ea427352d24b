"""Calipers (psfh.model.calipers, Prediction.adjusted, ClipResult.adjusted): the AoP re-measured from
a user's points of its construction.

Most tests use a synthetic frame whose construction is known by hand: a fetal head that is a disk
of radius 60 px around (150, 150) and a pubic symphysis that is a horizontal bar from x = 40 to
x = 100 at y = 60-66, so its long axis runs from (40, 63) to the apex (100, 63).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from psfh.batch import cine
from psfh.core.errors import PSFHInputError
from psfh.io.images import load_label_map
from psfh.io.sequence import FrameSequence
from psfh.measure import quality
from psfh.measure.aop import TANGENT_TOLERANCE_PX, measure_aop
from psfh.measure.hsd import measure_hsd
from psfh.model import calipers
from psfh.model.prediction import Prediction
from psfh.render.overlay import USER_POINT_COLOUR, render_segmentation

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HEAD_CENTRE, HEAD_RADIUS = np.array([150.0, 150.0]), 60.0
SUPERIOR, APEX = np.array([40.0, 63.0]), np.array([100.0, 63.0])


def synthetic_label_map(ps_rows=slice(60, 67), ps_cols=slice(40, 101)) -> np.ndarray:
    rows, cols = np.mgrid[:256, :256]
    label_map = np.zeros((256, 256), np.uint8)
    label_map[(rows - HEAD_CENTRE[1]) ** 2 + (cols - HEAD_CENTRE[0]) ** 2 <= HEAD_RADIUS ** 2] = 2
    label_map[ps_rows, ps_cols] = 1
    return label_map


def rotated(point, centre, degrees: float) -> np.ndarray:
    """``point`` turned about ``centre`` by ``degrees`` (image axes: y down)."""
    angle = np.radians(degrees)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.asarray(centre) + turn @ (np.asarray(point, float) - np.asarray(centre))


@pytest.fixture
def synthetic() -> Prediction:
    return Prediction.from_label_map(synthetic_label_map())


# ------------------------------------------------------------------------------- the geometry


def test_the_synthetic_construction_is_the_one_drawn_by_hand(synthetic):
    assert synthetic.aop.ps_superior == tuple(SUPERIOR) and synthetic.aop.ps_inferior == tuple(APEX)
    # Straight down from the apex, the ray meets the disk's pixels at column 100 first at row 117,
    # whose top edge is y = 116.5.
    assert synthetic.hsd.distance_px == pytest.approx(116.5 - 63.0)


@pytest.mark.parametrize("degrees", [5.0, 12.5, 20.0])
def test_moving_the_tangent_point_by_an_angle_moves_the_aop_by_that_angle(synthetic, degrees):
    apex, tangent = np.array(synthetic.aop.ps_inferior), np.array(synthetic.aop.tangent_point)
    # The far tangent's side is the one where the head is not: turning that way leaves the head
    # (a degree or so inwards would still be taken as on the outline: the tolerance).
    outward = [sign for sign in (1, -1) if _accepted(synthetic, rotated(tangent, apex, sign * degrees))]
    assert len(outward) == 1, "one way round leaves the head, the other goes into it"
    moved = synthetic.adjusted(tangent_point=rotated(tangent, apex, outward[0] * degrees))
    assert moved.aop.angle_deg == pytest.approx(synthetic.aop.angle_deg + degrees, abs=1e-9)
    # The rest of the construction stays the model's.
    assert moved.aop.ps_inferior == synthetic.aop.ps_inferior and moved.aop.ps_superior == synthetic.aop.ps_superior
    assert moved.hsd == synthetic.hsd


def _accepted(prediction: Prediction, tangent) -> bool:
    try:
        prediction.adjusted(tangent_point=tangent)
    except PSFHInputError:
        return False
    return True


def test_three_points_give_the_angle_between_them(synthetic):
    # The axis points along -x from the apex; a tangent at 20 deg below +x makes 160 deg with it.
    tangent = APEX + 100.0 * np.array([np.cos(np.radians(20.0)), np.sin(np.radians(20.0))])
    moved = synthetic.adjusted(ps_ends=(APEX, SUPERIOR), tangent_point=tangent)
    assert moved.aop.angle_deg == pytest.approx(160.0, abs=1e-9)
    assert moved.aop.tangent_point == pytest.approx(tuple(tangent))
    assert moved.adjusted_by_user == {"ps_inferior": (100.0, 63.0), "ps_superior": (40.0, 63.0),
                                      "tangent_point": pytest.approx(tuple(tangent))}


def test_the_ps_ends_may_come_in_either_order_and_the_hsd_follows_the_inferior_end(synthetic):
    moved = synthetic.adjusted(ps_ends=((110.0, 63.0), (40.0, 63.0)))
    assert moved.aop.ps_inferior == (110.0, 63.0)  # the end nearer the head
    # Straight down from (110, 63): the disk's first pixel in column 110 is row 106, top edge 105.5.
    assert moved.hsd.apex == (110.0, 63.0) and moved.hsd.distance_px == pytest.approx(105.5 - 63.0)
    # The tangent is the model's construction again, from the moved apex: the label map's far tangent.
    moved_map = synthetic_label_map(ps_cols=slice(40, 111))
    assert moved.aop.angle_deg == pytest.approx(measure_aop(moved_map).angle_deg, abs=1e-9)
    assert set(moved.adjusted_by_user) == {"ps_inferior", "ps_superior"}


def test_the_models_own_points_give_the_models_measurement_on_every_example():
    """One definition: re-measured from its own points, each expert construction is unchanged."""
    for path in sorted((EXAMPLES / "label_mha").glob("*.mha")):
        label_map = load_label_map(path)
        prediction = Prediction.from_label_map(label_map)
        aop = prediction.aop
        moved = prediction.adjusted(ps_ends=(aop.ps_inferior, aop.ps_superior), tangent_point=aop.tangent_point)
        assert moved.aop.angle_deg == pytest.approx(aop.angle_deg, abs=1e-9), path.name
        assert moved.hsd.to_dict() == measure_hsd(label_map).to_dict(), path.name


def test_earlier_points_stay_when_others_are_placed(synthetic):
    tangent = APEX + 100.0 * np.array([np.cos(np.radians(20.0)), np.sin(np.radians(20.0))])
    first = synthetic.adjusted(tangent_point=tangent)
    second = first.adjusted(ps_ends=((95.0, 63.0), (40.0, 63.0)))
    assert set(second.adjusted_by_user) == set(calipers.POINT_NAMES)
    assert second.aop.tangent_point == pytest.approx(tuple(tangent))  # the user's, not the far tangent
    expected = np.degrees(np.arctan2(tangent[1] - 63.0, tangent[0] - 95.0))  # the axis is along -x
    assert second.aop.angle_deg == pytest.approx(180.0 - expected, abs=1e-9)
    assert synthetic.adjusted_by_user == {}  # the original is left as it was


def test_a_tangent_point_a_pixel_or_two_inside_the_outline_counts_as_on_it(synthetic):
    tangent = np.array(synthetic.aop.tangent_point)
    inward = (HEAD_CENTRE - tangent) / np.linalg.norm(HEAD_CENTRE - tangent)
    synthetic.adjusted(tangent_point=tangent + 0.75 * TANGENT_TOLERANCE_PX * inward)  # accepted
    with pytest.raises(PSFHInputError, match=r"inside the fetal head outline \(4\.0 px in"):
        synthetic.adjusted(tangent_point=tangent + 2 * TANGENT_TOLERANCE_PX * inward)


# ------------------------------------------------------------------------------- bad points


@pytest.mark.parametrize("arguments, message", [
    ({"tangent_point": (300.0, 20.0)}, r"tangent_point \(300\.0, 20\.0\) is outside the 256 x 256 image"),
    ({"ps_ends": ((40.0, 63.0), (100.0, -3.0))}, r"ps_ends\[1\] \(100\.0, -3\.0\) is outside the 256 x 256 image"),
    ({"tangent_point": (150.0, 150.0)}, r"tangent_point \(150\.0, 150\.0\): it lies inside the fetal head outline "
                                        r"\(59\.4 px in"),
    ({"ps_ends": ((40.0, 63.0), (150.0, 140.0))}, r"ps_inferior \(150\.0, 140\.0\) lies inside the fetal head"),
    ({"tangent_point": (30.0, 200.0)}, r"tangent_point \(30\.0, 200\.0\): it is on the near side of the fetal head"),
    ({"tangent_point": (100.0, 250.0)}, r"tangent_point \(100\.0, 250\.0\): the line from the symphysis' inferior "
                                        r"end through it crosses the fetal head"),
    ({"tangent_point": (101.0, 10.0)}, r"it is behind the symphysis' inferior end"),
    ({"tangent_point": (100.2, 63.3)}, r"it is on the symphysis' inferior end"),
    ({"ps_inferior": (20.0, 63.0)}, r"ps_inferior \(20\.0, 63\.0\): the inferior end \(20\.0, 63\.0\) is farther from "
                                    r"the fetal head than the superior end"),
    ({"ps_ends": ((60.0, 63.0), (60.4, 63.0))}, r"the symphysis' two ends are 0\.4 px apart"),
    ({"ps_ends": ((60.0, 63.0),)}, r"ps_ends must be two points"),
    ({"tangent_point": "beside the head"}, r"tangent_point must be two numbers \(x, y\) in image pixels"),
    ({"tangent_point": (float("nan"), 3.0)}, r"tangent_point must be two numbers"),
    ({"ps_ends": ((40.0, 63.0), (100.0, 63.0)), "ps_inferior": (100.0, 63.0)}, r"either as ps_ends \(both\) or"),
    ({}, r"nothing to adjust: give ps_ends"),
])
def test_bad_points_are_refused_naming_the_point(synthetic, arguments, message):
    with pytest.raises(PSFHInputError, match=message):
        synthetic.adjusted(**arguments)


def test_without_a_head_or_without_a_model_axis_the_missing_part_is_asked_for():
    no_head = synthetic_label_map()
    no_head[no_head == 2] = 0
    with pytest.raises(PSFHInputError, match="no fetal head in this result"):
        Prediction.from_label_map(no_head).adjusted(ps_ends=(SUPERIOR, APEX))
    no_ps = synthetic_label_map()
    no_ps[no_ps == 1] = 0
    prediction = Prediction.from_label_map(no_ps)
    with pytest.raises(PSFHInputError, match="no pubic symphysis axis in this result: place both ends"):
        prediction.adjusted(tangent_point=(200.0, 90.0))
    assert prediction.adjusted(ps_ends=(SUPERIOR, APEX)).aop.angle_deg == pytest.approx(156.529, abs=1e-3)


def test_a_label_map_that_does_not_fit_its_image_is_refused():
    with pytest.raises(PSFHInputError, match="label_map is 256 x 256 pixels; the image is 200 x 100"):
        Prediction.from_label_map(synthetic_label_map(), image=np.zeros((100, 200), np.uint8))


# ------------------------------------------------------------------------------- the result


def with_quality(prediction: Prediction, **measures) -> Prediction:
    """The prediction with a quality check of ordinary input measures and ``measures`` added."""
    base = {"grey_levels": 200.0, "dark_fraction": 0.3, "fh_solidity": 0.99, "ps_solidity": 0.95,
            "ps_to_fh_area": 0.04, "border_pixels": 0.0, "ps_fh_gap": 20.0}
    base.update(measures)
    base["ps_elevation"] = quality.ps_elevation(prediction.label_map, prediction.aop)
    return dataclasses.replace(prediction, quality=quality.QualityCheck(quality.judge(base), base))


def test_a_check_votes_only_while_what_it_looks_at_is_still_the_models(synthetic):
    flagged = with_quality(synthetic, flip_aop_gap=40.0, ps_solidity=0.5)
    assert [reason.split(":")[0][:40] for reason in flagged.quality.reasons] == [
        "the pubic symphysis outline is ragged (s", "the model is unsure"]
    tangent = APEX + 100.0 * np.array([np.cos(np.radians(20.0)), np.sin(np.radians(20.0))])
    # The tangent alone: the PS outline and the model's angle still count.
    assert len(flagged.adjusted(tangent_point=tangent).quality.reasons) == 2
    # Both PS ends: the PS outline no longer enters; the model's angle still does (the tangent is its).
    ends = flagged.adjusted(ps_ends=(SUPERIOR, APEX))
    assert [r[:19] for r in ends.quality.reasons] == ["the model is unsure"] and ends.aop_deg is None
    # All three points: the angle is the user's; every measure is still reported.
    mine = ends.adjusted(tangent_point=tangent)
    assert mine.trusted and mine.aop_deg == pytest.approx(160.0)
    assert mine.quality.measures["flip_aop_gap"] == 40.0 and mine.quality.measures["ps_solidity"] == 0.5
    # An image check stays whatever the user placed.
    dark = with_quality(synthetic, dark_fraction=0.0).adjusted(ps_ends=(SUPERIOR, APEX), tangent_point=tangent)
    assert not dark.trusted and "no dark background" in dark.quality.reasons[0]


def test_a_user_placed_steep_axis_is_reported_but_not_flagged(synthetic):
    steep = ((60.0, 20.0), (90.0, 80.0))  # 63 deg from the image rows, above the 34 deg bound
    model_steep = synthetic.adjusted(ps_ends=steep)
    judged = with_quality(synthetic)
    assert judged.trusted
    moved = judged.adjusted(ps_ends=steep)
    assert moved.quality.measures["ps_elevation"] == pytest.approx(63.43, abs=0.01)
    assert moved.trusted and moved.aop_deg == pytest.approx(model_steep.aop.angle_deg)


def test_the_report_and_table_say_what_the_user_placed(synthetic):
    moved = synthetic.adjusted(ps_ends=((40.04, 63.0), (100.0, 63.0)))
    report = moved.report()
    assert report["adjusted_by_user"] == {"ps_inferior": [100.0, 63.0], "ps_superior": [40.0, 63.0]}
    assert report["aop"]["ps_superior"] == [40.04, 63.0]
    assert synthetic.report()["adjusted_by_user"] == {}
    assert moved.table_cells()["aop_deg"] == pytest.approx(moved.aop.angle_deg)
    assert "adjustment" in moved.timings
    assert calipers.moved_cell(moved.adjusted_by_user) == "ps_inferior (100.0, 63.0); ps_superior (40.0, 63.0)"
    assert calipers.moved_cell({}) == "none"


def test_the_overlay_rings_the_users_points(synthetic):
    image = np.full((256, 256), 60, np.uint8)
    tangent = APEX + 100.0 * np.array([np.cos(np.radians(20.0)), np.sin(np.radians(20.0))])
    moved = synthetic.adjusted(tangent_point=tangent)
    plain = render_segmentation(image, moved.label_map, moved.aop)
    ringed = render_segmentation(image, moved.label_map, moved.aop, user_points=tuple(moved.adjusted_by_user))
    white = np.all(ringed[:512] == USER_POINT_COLOUR, axis=-1)  # the picture is twice the frame
    rows, cols = np.nonzero(white)
    centre = (tangent + 0.5) * 2 - 0.5
    assert len(rows) and np.all(np.hypot(cols - centre[0], rows - centre[1]) < 16)  # only around the tangent point
    assert not np.all(plain[:512] == USER_POINT_COLOUR, axis=-1).any()
    assert ringed.shape[0] > plain.shape[0] or not np.array_equal(ringed[512:], plain[512:])  # the legend says so


# ------------------------------------------------------------------------------- clips


class LabelMapModel:
    """Stands in for PSFHModel in psfh.batch.cine.analyse_clip: each frame's 'prediction' is a
    given label map's (so the clip's construction is known), with an ordinary quality check."""

    def __init__(self, label_maps):
        self.label_maps = list(label_maps)
        self.calls = 0

    def predict(self, image, folds=None, tta=None, precision="fp32", spacing_mm=None):
        label_map = self.label_maps[self.calls]
        self.calls += 1
        prediction = Prediction.from_label_map(label_map, spacing_mm=spacing_mm)
        return dataclasses.replace(with_quality(prediction), folds=["fold_0"], tta=False)


def test_a_clips_frame_is_adjusted_and_the_curve_and_its_maximum_follow(tmp_path):
    shifted = [synthetic_label_map(ps_cols=slice(40, 101 + 5 * i)) for i in range(3)]  # apex moves right
    sequence = FrameSequence(frames=[np.zeros((256, 256), np.float32)] * 3, names=["c_f0", "c_f1", "c_f2"],
                             frame_times_s=(0.0, 0.1, 0.2), spacing_mm=(0.2, 0.2), source="test",
                             path=tmp_path, original_dtype="uint8")
    result = cine.analyse_clip(LabelMapModel(shifted), sequence)
    angles = [row["aop_deg"] for row in result.rows]
    assert angles == pytest.approx([measure_aop(m).angle_deg for m in shifted])
    assert result.maximum["frame"] == int(np.argmax(angles))

    # Frame 1's tangent turned 15 deg outward: its AoP becomes the clip's largest.
    apex, tangent = (np.array(p) for p in (result.measurements[1][0].ps_inferior, result.measurements[1][0].tangent_point))
    moved_tangent = next(t for t in (rotated(tangent, apex, 15.0), rotated(tangent, apex, -15.0))
                         if _accepted(Prediction.from_label_map(shifted[1]), t))
    adjusted = result.adjusted(1, tangent_point=moved_tangent)
    assert adjusted.rows[1]["aop_deg"] == pytest.approx(angles[1] + 15.0)
    assert adjusted.maximum["frame"] == 1 and adjusted.summary()["max_aop_deg"] == pytest.approx(angles[1] + 15.0)
    assert adjusted.summary()["frames_adjusted"] == [1]
    assert adjusted.rows[1]["adjusted_by_user"].startswith("tangent_point (")
    assert adjusted.measurements[1][0].tangent_point == pytest.approx(tuple(moved_tangent))
    assert adjusted.rows[1]["hsd_mm"] == pytest.approx(result.rows[1]["hsd_mm"])  # the apex did not move
    # The PS ends of the same frame later: the tangent placed before stays.
    again = adjusted.adjusted(1, ps_ends=((40.0, 63.0), (100.0, 63.0)))
    assert set(again.adjusted_points[1]) == set(calipers.POINT_NAMES)
    assert again.rows[1]["hsd_mm"] == pytest.approx(53.5 * 0.2)
    # The original is left as it was (Undo), and the table says who placed what.
    assert result.rows[1]["aop_deg"] == angles[1] and result.adjusted_points == {}
    folder = cine.write_tables(again, tmp_path / "out")
    with open(folder / "frames.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["adjusted_by_user"] for row in rows][::2] == ["none", "none"]
    assert rows[1]["adjusted_by_user"].startswith("ps_inferior (100.0, 63.0); ps_superior (40.0, 63.0); tangent_point")
    assert 'adjusted by the user' in (folder / "aop_curve.svg").read_text()


@pytest.mark.parametrize("frame", [3, -1, 1.5, "two"])
def test_a_frame_outside_the_clip_is_refused(frame, tmp_path):
    sequence = FrameSequence(frames=[np.zeros((256, 256), np.float32)] * 2, names=["a", "b"], frame_times_s=None,
                             spacing_mm=None, source="test", path=tmp_path, original_dtype="uint8")
    result = cine.analyse_clip(LabelMapModel([synthetic_label_map()] * 2), sequence)
    with pytest.raises(PSFHInputError, match="frame must be a whole number from 0 to 1"):
        result.adjusted(frame, tangent_point=(200.0, 90.0))
