"""Tests for psfh.measure.metrics: known geometry, edge cases, the challenge score and real labels."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from psfh.core.errors import PSFHInputError
from psfh.measure.metrics import METRIC_KEYS, aop_error, challenge_score, segmentation_metrics, summarize

LABEL_DIR = Path(__file__).resolve().parents[1] / "examples" / "label_mha"
SIZE = 64


def two_squares(ps_label=1, fh_label=2, ps_shift=0):
    """A 64 x 64 map with a 20-pixel PS square (shifted ps_shift columns) and a 16-pixel FH square."""
    label_map = np.zeros((SIZE, SIZE), dtype=np.uint8)
    label_map[10:30, 10 + ps_shift : 30 + ps_shift] = ps_label
    label_map[40:56, 30:46] = fh_label
    return label_map


def test_identical_maps_are_perfect():
    metrics = segmentation_metrics(two_squares(), two_squares())
    assert set(metrics) == set(METRIC_KEYS)
    for structure in ("ps", "fh", "all"):
        assert metrics[f"dice_{structure}"] == pytest.approx(1.0)
        assert metrics[f"hd_{structure}"] == 0.0
        assert metrics[f"asd_{structure}"] == 0.0


@pytest.mark.parametrize("k", [1, 3, 5])
def test_axis_aligned_shift_gives_hausdorff_k_and_analytic_dice(k):
    target = np.zeros((SIZE, SIZE), dtype=np.uint8)
    target[10:30, 10:30] = 1
    prediction = np.roll(target, k, axis=1)
    metrics = segmentation_metrics(prediction, target)
    # Two s x s squares offset by k columns overlap in s x (s - k): Dice = (s - k) / s.
    assert metrics["dice_ps"] == pytest.approx((20 - k) / 20, abs=1e-6)
    # The farthest boundary pixel (on the leading or trailing edge) lies exactly k from the other.
    assert metrics["hd_ps"] == pytest.approx(k, abs=1e-6)
    # Most boundary pixels move less than k from the other boundary (the top and bottom edges overlap).
    assert 0 < metrics["asd_ps"] < k
    # "all" is the same single square here.
    assert metrics["dice_all"] == pytest.approx(metrics["dice_ps"])
    assert metrics["hd_all"] == pytest.approx(metrics["hd_ps"])
    # FH absent from both maps: nothing to find, nothing missed.
    assert (metrics["dice_fh"], metrics["hd_fh"], metrics["asd_fh"]) == (1.0, 0.0, 0.0)


def test_class_missing_from_prediction_scores_zero_dice_and_the_diagonal():
    target = two_squares()
    prediction = np.where(target == 2, 0, target).astype(np.uint8)
    metrics = segmentation_metrics(prediction, target)
    diagonal = math.hypot(SIZE, SIZE)
    assert metrics["dice_fh"] == 0.0
    assert metrics["hd_fh"] == pytest.approx(diagonal)
    assert metrics["asd_fh"] == pytest.approx(diagonal)
    assert all(math.isfinite(value) for value in metrics.values())
    # PS is untouched; "all" keeps only the 400 PS of 656 pixels: Dice = 2*400 / (400 + 656).
    assert metrics["dice_ps"] == pytest.approx(1.0)
    assert metrics["dice_all"] == pytest.approx(800 / 1056, abs=1e-6)


def test_class_missing_from_target_is_also_the_worst_case():
    prediction = two_squares()
    target = np.where(prediction == 1, 0, prediction).astype(np.uint8)
    metrics = segmentation_metrics(prediction, target)
    assert metrics["dice_ps"] == 0.0
    assert metrics["hd_ps"] == pytest.approx(math.hypot(SIZE, SIZE))


def test_dice_all_merges_the_classes():
    target = two_squares()
    swapped = two_squares(ps_label=2, fh_label=1)
    metrics = segmentation_metrics(swapped, target)
    assert metrics["dice_all"] == pytest.approx(1.0)
    assert metrics["hd_all"] == 0.0
    assert metrics["dice_ps"] == pytest.approx(0.0)
    assert metrics["dice_fh"] == pytest.approx(0.0)
    assert metrics["hd_ps"] > 0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(PSFHInputError, match=r"\(64, 64\).*\(32, 64\)"):
        segmentation_metrics(np.zeros((64, 64), np.uint8), np.zeros((32, 64), np.uint8))


def test_unexpected_label_is_rejected():
    bad = two_squares()
    bad[0, 0] = 255
    with pytest.raises(PSFHInputError, match="255"):
        segmentation_metrics(bad, two_squares())


def test_aop_error():
    assert aop_error(120.0, 125.5) == pytest.approx(5.5)
    assert aop_error(None, 120.0) is None
    assert aop_error(120.0, None) is None


def test_challenge_score_of_a_perfect_result_is_one():
    assert challenge_score(1, 1, 1, 0, 0, 0, 0, 0, 0, aop_error=0) == pytest.approx(1.0)


def test_challenge_score_of_the_authors_validation_row():
    # FACTS.md gives ASD only for "all" (2.55); we use it for PS and FH too. By hand:
    #   0.25 * (0.879 + 0.940 + 0.933) / 3                          = 0.229333...
    #   0.25 * (0.5 * (94 + 92.09 + 91.03) / 300 + 0.5 * 0.9745)    = 0.237279...
    #   0.5 * (1 - 5.13 / 180)                                      = 0.48575
    score = challenge_score(
        dice_ps=0.879, dice_fh=0.940, dice_all=0.933,
        hd_ps=6.00, hd_fh=7.91, hd_all=8.97,
        asd_ps=2.55, asd_fh=2.55, asd_all=2.55,
        aop_error=5.13,
    )
    assert score == pytest.approx(0.9523625, abs=1e-7)


def row(value, aop):
    return {**{key: value for key in METRIC_KEYS}, "aop_error": aop}


def test_summarize_two_rows():
    summary = summarize([row(0.8, 2.0), row(0.6, 6.0)])
    for key in METRIC_KEYS:
        assert summary[key] == pytest.approx(0.7)
    assert summary["aop_error_mean"] == pytest.approx(4.0)
    assert summary["aop_error_median"] == pytest.approx(4.0)
    assert (summary["aop_measured"], summary["n"]) == (2, 2)
    expected = challenge_score(**{key: 0.7 for key in METRIC_KEYS}, aop_error=4.0)
    assert summary["score"] == pytest.approx(expected)
    json.dumps(summary)  # plain Python numbers only


def test_summarize_skips_unmeasured_angles():
    summary = summarize([row(1.0, 1.0), row(1.0, 2.0), row(1.0, 9.0), row(1.0, None)])
    assert summary["aop_error_mean"] == pytest.approx(4.0)
    assert summary["aop_error_median"] == pytest.approx(2.0)
    assert (summary["aop_measured"], summary["n"]) == (3, 4)


def test_summarize_without_any_angle_has_no_score():
    summary = summarize([row(1.0, None)])
    assert summary["aop_error_mean"] is None and summary["score"] is None
    json.dumps(summary)


def test_summarize_rejects_empty_input():
    with pytest.raises(PSFHInputError):
        summarize([])


@pytest.mark.parametrize("path", sorted(LABEL_DIR.glob("*.mha"))[:2], ids=lambda p: p.name)
def test_real_labels(path):
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert label.shape == (256, 256)

    perfect = segmentation_metrics(label, label)
    assert all(perfect[f"dice_{s}"] == pytest.approx(1.0) for s in ("ps", "fh", "all"))
    assert all(perfect[f"{m}_{s}"] == 0.0 for m in ("hd", "asd") for s in ("ps", "fh", "all"))

    # Erode each structure by one pixel: a near miss, so Dice stays high but below 1.
    eroded = np.zeros_like(label)
    for value in (1, 2):
        eroded[ndimage.binary_erosion(label == value)] = value
    metrics = segmentation_metrics(eroded, label)
    for structure in ("ps", "fh", "all"):
        assert 0.8 < metrics[f"dice_{structure}"] < 1.0
        assert metrics[f"hd_{structure}"] > 0
