"""psfh.measure.quality: inputs and results that should not be trusted are flagged, with reasons."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import EXAMPLES
from PIL import Image, ImageDraw

from psfh.core.errors import PSFHInputError
from psfh.core.labels import FH, PS
from psfh.io.images import as_uint8, load_image, load_label_map
from psfh.measure import quality
from psfh.measure.aop import measure_aop

EXAMPLE_IDS = sorted(p.stem for p in (EXAMPLES / "image_mha").glob("*.mha"))


def example(sample_id: str) -> tuple[np.ndarray, np.ndarray]:
    return (as_uint8(load_image(EXAMPLES / "image_mha" / f"{sample_id}.mha")),
            load_label_map(EXAMPLES / "label_mha" / f"{sample_id}.mha"))


def disk(shape, centre, radius) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def test_solidity_and_border_measures():
    assert quality.solidity(disk((100, 100), (50, 50), 30)) > 0.95
    ring = disk((100, 100), (50, 50), 30) & ~disk((100, 100), (50, 50), 24)
    assert quality.solidity(ring) < 0.5
    assert quality.border_pixels(disk((20, 20), (0, 10), 3)) == 7 and quality.border_pixels(disk((20, 20), (10, 10), 3)) == 0


def test_ps_fh_gap_measure():
    head = disk((60, 60), (40, 30), 12)
    ps = np.zeros_like(head)
    ps[20:25, 25:35] = True  # the head's top row is 28: rows 25-27 lie between them
    assert quality.ps_fh_gap(ps, head) == pytest.approx(4.0)
    ps[25:28, 29:31] = True  # now side by side with the head's top pixel
    assert quality.ps_fh_gap(ps, head) == pytest.approx(1.0)
    # Measured on the largest components, as the AoP is: a stray PS island on the head does not count.
    island = ps.copy()
    island[25:28, 29:31] = False
    island[40, 30] = True
    assert quality.ps_fh_gap(island, head) == pytest.approx(4.0)


def test_a_symphysis_touching_the_head_is_flagged():
    image, labels = example(EXAMPLE_IDS[0])
    apart = quality.check(image, labels)
    assert apart.trusted and apart.measures["ps_fh_gap"] >= 2.0
    # Grow the PS down until it meets the head: the model's typical gross error.
    touching = labels.copy()
    ps_rows, ps_cols = np.nonzero(labels == PS)
    col = int(np.median(ps_cols))
    head_top = int(np.nonzero(labels[:, col] == FH)[0].min())
    touching[ps_rows.max():head_top, col - 2:col + 3] = PS
    checked = quality.check(image, touching)
    assert checked.measures["ps_fh_gap"] < quality.MIN_PS_FH_GAP
    assert any("touches the fetal head" in reason for reason in checked.reasons)
    assert quality.judge(checked.measures) == checked.reasons


def bar(shape, centre, length, width, angle_deg) -> np.ndarray:
    """A straight bar of pixels (H x W bool) through ``centre`` (row, col), ``angle_deg`` from the rows."""
    rows, cols = np.indices(shape)
    angle = np.radians(angle_deg)
    along = (cols - centre[1]) * np.cos(angle) - (rows - centre[0]) * np.sin(angle)
    across = (cols - centre[1]) * np.sin(angle) + (rows - centre[0]) * np.cos(angle)
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)


@pytest.mark.parametrize("angle_deg", [0, 15, 40, 70, 90])
def test_ps_elevation_measure(angle_deg):
    labels = np.zeros((200, 200), np.uint8)
    labels[disk(labels.shape, (140, 100), 45)] = FH
    labels[bar(labels.shape, (45, 100), 50, 6, angle_deg)] = PS
    assert quality.ps_elevation(labels) == pytest.approx(angle_deg, abs=2.0)
    # Folded into 0-90: the mirror image (a frame scanned from the other side) measures the same.
    assert quality.ps_elevation(labels[:, ::-1]) == pytest.approx(quality.ps_elevation(labels), abs=1e-6)
    assert quality.ps_elevation(np.where(labels == FH, 0, labels)) is None  # no head: no axis ends
    # A caller that measured the AoP already passes it: the same number, no second measurement.
    measured = measure_aop(labels)
    assert quality.ps_elevation(labels, measured) == quality.ps_elevation(labels)
    assert quality.measure(labels * 100, labels, aop=measured) == quality.measure(labels * 100, labels)
    assert quality.ps_elevation(labels, measure_aop(labels[:, ::-1].T)) != pytest.approx(quality.ps_elevation(labels))


def test_a_steep_symphysis_is_flagged():
    image, labels = example(EXAMPLE_IDS[0])
    flat = quality.check(image, labels)
    assert flat.trusted and flat.measures["ps_elevation"] < quality.MAX_PS_ELEVATION
    # The expert's PS swapped for a bar of the same length at 60 degrees, where the PS was.
    rows, cols = np.nonzero(labels == PS)
    steep = np.where(labels == PS, 0, labels).astype(np.uint8)
    length = np.hypot(np.ptp(rows), np.ptp(cols))
    steep[bar(labels.shape, (rows.mean() - 10, cols.mean()), length, 7, 60) & (labels != FH)] = PS
    checked = quality.check(image, steep)
    assert checked.measures["ps_elevation"] > quality.MAX_PS_ELEVATION
    assert any("long axis is steeper than in 96 % of expert outlines" in reason for reason in checked.reasons)
    assert quality.judge(checked.measures) == checked.reasons
    # A PS the user boxed is the patient's: its elevation is reported, not judged; a corrected head is no excuse.
    by_user = quality.check_corrected(image, steep, {PS})
    assert by_user.measures["ps_elevation"] == checked.measures["ps_elevation"]
    assert not any("steeper" in reason for reason in by_user.reasons)
    assert quality.check_corrected(image, steep, {FH}).reasons == checked.reasons


def test_flip_gap_and_fold_spread_measures():
    assert quality.flip_aop_gap({"fold_0": [100.0, 110.0], "fold_1": [100.0, 104.0]}) == pytest.approx(7.0)
    # A fold that finds an AoP in one view only does not know where the anatomy is: 90 degrees.
    assert quality.flip_aop_gap({"fold_0": [100.0, None], "fold_1": [100.0, 102.0]}) == pytest.approx(46.0)
    assert quality.flip_aop_gap({"fold_0": [None, None]}) is None
    assert quality.flip_aop_gap({"fold_0": [100.0]}) is None  # no flip view: nothing to compare
    assert quality.fold_aop_spread({"fold_0": 100.0, "fold_1": 111.5, "fold_2": None}) == pytest.approx(11.5)
    assert quality.fold_aop_spread({"fold_0": 100.0}) is None


def test_ps_view_dice_measure():
    ps = np.zeros((20, 20), np.uint8)
    ps[5:10, 5:10] = PS  # 25 pixels
    moved = np.zeros_like(ps)
    moved[5:10, 7:12] = PS  # 15 of them shared
    assert quality.ps_view_dice({"fold_0": [ps, ps]}) == pytest.approx(1.0)
    assert quality.ps_view_dice({"fold_0": [ps, moved], "fold_1": [ps, ps]}) == pytest.approx((0.6 + 1.0) / 2)
    assert quality.ps_view_dice({"fold_0": [ps, np.zeros_like(ps)]}) == pytest.approx(0.0)
    assert quality.ps_view_dice({"fold_0": [np.zeros_like(ps)] * 2}) is None  # no PS in either view
    assert quality.ps_view_dice({"fold_0": [ps]}) is None


def test_the_models_self_disagreement_is_judged_when_known():
    image, labels = example(EXAMPLE_IDS[0])
    agree = {"fold_0": [120.0, 122.0]}
    disagree = {"fold_0": [120.0, 120.0 + quality.MAX_FLIP_AOP_GAP + 1]}
    assert quality.check(image, labels, agree).trusted
    checked = quality.check(image, labels, disagree)
    assert not checked.trusted and "unsure" in checked.reasons[0]
    assert checked.measures["flip_aop_gap"] == pytest.approx(quality.MAX_FLIP_AOP_GAP + 1)
    assert "flip_aop_gap" not in quality.check(image, labels).measures  # not given: not checked
    # The same verdict from the measures alone (calibration judges stored measures again).
    assert quality.judge(checked.measures) == checked.reasons
    # The views' PS outlines: the same PS in both views passes, a PS that moves is flagged.
    assert quality.check(image, labels, view_maps={"fold_0": [labels, labels]}).trusted
    shifted = np.roll(labels, 12, axis=1)
    unsure = quality.check(image, labels, view_maps={"fold_0": [labels, shifted]})
    assert unsure.measures["ps_view_dice"] < quality.MIN_PS_VIEW_DICE
    assert any("unsure where the pubic symphysis is" in reason for reason in unsure.reasons)


@pytest.mark.parametrize("sample_id", EXAMPLE_IDS)
def test_ground_truth_of_real_frames_passes(sample_id):
    check = quality.check(*example(sample_id))
    assert check.trusted, check.reasons


def test_each_check_says_what_failed():
    image, labels = example(EXAMPLE_IDS[0])
    ragged = labels.copy()
    ragged[(labels == FH) & (np.indices(labels.shape).sum(0) % 6 == 0)] = 0  # a head full of holes
    assert any("fetal head outline" in r for r in quality.check(image, ragged).reasons)
    tiny_ps = labels.copy()
    tiny_ps[tiny_ps == PS] = 0
    tiny_ps[60:63, 120:123] = PS
    assert any("times the head's area" in r for r in quality.check(image, tiny_ps).reasons)
    cut = labels.copy()
    cut[:, -1][:40] = FH
    assert any("touches the image border" in r for r in quality.check(image, cut).reasons)
    assert any("grey levels" in r for r in quality.check((labels * 100).astype(np.uint8), labels).reasons)
    assert any("dark background" in r for r in quality.check(np.clip(image, 30, 255), labels).reasons)
    assert quality.check(image, labels).to_dict()["trusted"] is True


def bad_inputs() -> dict[str, np.ndarray]:
    """Inputs that are not transperineal ultrasound frames as the model knows them."""
    import skimage.data

    ultrasound = as_uint8(load_image(EXAMPLES / "image_mha" / f"{EXAMPLE_IDS[0]}.mha"))
    text = Image.new("L", (256, 256), 255)
    draw = ImageDraw.Draw(text)
    for line in range(8):
        draw.text((10, 10 + 30 * line), "angle of progression 123 deg", fill=0)
    return {
        "noise": np.random.default_rng(0).integers(0, 256, (256, 256)).astype(np.uint8),
        "label map": load_label_map(EXAMPLES / "label_mha" / f"{EXAMPLE_IDS[0]}.mha"),
        "text": np.asarray(text),
        "photograph": skimage.data.camera(),  # bundled with scikit-image, no download
        "rotated ultrasound": np.rot90(ultrasound).copy(),
        "upside-down ultrasound": ultrasound[::-1].copy(),
        # A frame cropped so that the PS is cut away: test_a_cropped_frame_is_flagged_as_unsure.
    }


@pytest.mark.parametrize("name", list(bad_inputs()))
def test_bad_inputs_are_flagged_and_their_aop_withheld(embedded, name):
    # One fold, one view keeps the test quick; the checks look at the image and the label map only.
    prediction = embedded.predict(bad_inputs()[name], folds=["fold_0"], tta=False)
    assert not prediction.trusted, (name, prediction.quality.measures)
    assert prediction.aop_deg is None and prediction.quality.reasons
    report = prediction.report()
    assert report["quality"]["trusted"] is False and report["aop_deg"] is None


def test_a_cropped_frame_is_flagged_as_unsure(embedded):
    # Cropped so that the pubic symphysis is cut away, the image and anatomy checks can pass; the
    # model's views then disagree on where the anatomy is (its flip TTA needed: both views).
    ultrasound = as_uint8(load_image(EXAMPLES / "image_mha" / "03970.mha"))
    prediction = embedded.predict(ultrasound[100:, 80:].copy(), folds=["fold_0"], tta=True)
    assert not prediction.trusted and prediction.aop_deg is None
    assert any("unsure" in reason for reason in prediction.quality.reasons), prediction.quality.reasons
    assert prediction.quality.measures["flip_aop_gap"] > quality.MAX_FLIP_AOP_GAP
    whole = embedded.predict(ultrasound, folds=["fold_0"], tta=True)
    assert whole.trusted and whole.quality.measures["flip_aop_gap"] < quality.MAX_FLIP_AOP_GAP
    assert set(whole.view_aop_deg) == {"fold_0"} and len(whole.view_aop_deg["fold_0"]) == 2
    assert whole.report()["view_aop_deg"] == {"fold_0": whole.view_aop_deg["fold_0"]}


def test_a_blank_frame_is_refused(embedded):
    with pytest.raises(PSFHInputError, match="constant"):
        embedded.predict(np.full((256, 256), 17, np.uint8), folds=["fold_0"], tta=False)


@pytest.mark.parametrize("sample_id", EXAMPLE_IDS[:4])
def test_real_frames_are_trusted(embedded, sample_id):
    prediction = embedded.predict(EXAMPLES / "image_mha" / f"{sample_id}.mha", folds=["fold_0"], tta=False)
    assert prediction.trusted, prediction.quality.reasons
    assert prediction.aop_deg == prediction.aop.angle_deg is not None
