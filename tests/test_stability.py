"""psfh.measure.stability: the AoP's change on a brighter, darker and zoomed-out frame flags a fragile result."""

from __future__ import annotations

import csv
import types

import numpy as np
import pytest
from conftest import EXAMPLES

from psfh.batch.predict import CSV_COLUMNS, predict_paths
from psfh.core.errors import PSFHInputError
from psfh.io.images import as_uint8, load_image, load_label_map
from psfh.measure import quality, stability
from psfh.measure.aop import AoPMeasurement
from psfh.model.psfh_model import Prediction

FRAME = EXAMPLES / "image_mha" / "03970.mha"


def test_perturbations_change_gain_or_field_of_view_only():
    image = as_uint8(load_image(FRAME))
    black = image == 0
    brighter, darker = stability.perturb(image, "brighter"), stability.perturb(image, "darker")
    for changed in (brighter, darker):
        assert changed.shape == image.shape and changed.dtype == np.uint8
        # The background outside the sector stays black and no tissue pixel turns black.
        assert np.array_equal(changed == 0, black)
    assert brighter[~black].mean() > image[~black].mean() > darker[~black].mean()
    wider = stability.perturb(image, "zoomed out")
    rows, cols = (int(n * stability.ZOOM_MARGIN) for n in image.shape)
    assert wider.shape == (image.shape[0] + 2 * rows, image.shape[1] + 2 * cols)
    assert np.array_equal(wider[rows:-rows, cols:-cols], image)
    assert wider[:rows].max() == 0 and wider[:, -cols:].max() == 0
    with pytest.raises(ValueError, match="unknown perturbation"):
        stability.perturb(image, "rotated")


def test_aop_gap_and_the_reference_angle():
    assert stability.aop_gap(120.0, {"a": 110.0, "b": 124.0, "c": 120.0}) == pytest.approx(14.0 / 3)
    # A perturbed frame without an AoP counts 90 degrees: the model lost the anatomy.
    assert stability.aop_gap(120.0, {"a": None, "b": 126.0}) == pytest.approx(48.0)
    assert stability.aop_gap(None, {"a": 110.0}) is None and stability.aop_gap(120.0, {}) is None
    with_views = types.SimpleNamespace(view_aop_deg={"fold_0": [101.0, 99.0]}, fold_aop_deg={"fold_0": 100.0})
    assert stability.reference_aop(with_views, "fold_0") == 101.0  # the frame as given, not the flip
    without = types.SimpleNamespace(view_aop_deg={}, fold_aop_deg={"fold_0": 100.0})
    assert stability.reference_aop(without, "fold_0") == 100.0
    assert stability.reference_aop(without, "fold_3") is None


class ScriptedModel:
    """Answers each perturbed frame with a set AoP, keyed by the frame's mean grey level."""

    def __init__(self, image, angles):
        self.angles = {float(stability.perturb(image, kind).mean()): angle for kind, angle in angles.items()}
        self.calls = []

    def predict(self, image, folds=None, tta=None):
        self.calls.append((folds, tta))
        return types.SimpleNamespace(aop=AoPMeasurement(self.angles[float(np.asarray(image).mean())]))


def test_a_fragile_aop_is_flagged_with_its_reason():
    image, labels = as_uint8(load_image(FRAME)), load_label_map(EXAMPLES / "label_mha" / FRAME.name)
    empty = np.zeros(image.shape, np.float32)
    prediction = Prediction(
        label_map=labels, probabilities=np.stack([empty] * 3), disagreement=empty, aop=AoPMeasurement(119.0),
        fold_aop_deg={}, folds=["fold_2", "fold_4"], tta=True, timings={"encoder": 1.0},
        view_aop_deg={"fold_2": [120.0, 118.0]}, quality=quality.check(image, labels))
    steady = ScriptedModel(image, {"brighter": 118.0, "darker": 123.0, "zoomed out": 121.0})
    kept = stability.checked(steady, prediction, image)
    fragile = ScriptedModel(image, {"brighter": 100.0, "darker": 140.0, "zoomed out": None})
    flagged = stability.checked(fragile, prediction, image)
    assert steady.calls == [(["fold_2"], False)] * 3  # the first fold, no flip, once per perturbation
    assert kept.quality.trusted and kept.quality.measures["stability_gap"] == pytest.approx(2.0)
    assert kept.quality.measures["grey_levels"] == prediction.quality.measures["grey_levels"]
    assert "stability_check" in kept.timings
    assert kept.aop_deg == 119.0
    assert flagged.quality.measures["stability_gap"] == pytest.approx((20 + 20 + 90) / 3)
    assert not flagged.trusted and flagged.aop_deg is None
    assert any("the AoP is fragile" in reason for reason in flagged.quality.reasons)
    assert quality.judge(flagged.quality.measures) == flagged.quality.reasons
    assert "stability_gap" not in prediction.quality.measures  # the prediction given is left as it was


def test_predict_with_the_stability_check(embedded):
    image = as_uint8(load_image(FRAME))
    plain = embedded.predict(image, folds=["fold_1"], tta=False)
    checked = embedded.predict(image, folds=["fold_1"], tta=False, stability_check=True)
    assert "stability_gap" not in plain.quality.measures
    expected = stability.aop_gap(plain.aop.angle_deg, stability.perturbed_aops(embedded, image, "fold_1"))
    assert checked.quality.measures["stability_gap"] == pytest.approx(expected, abs=1e-6)
    assert checked.table_cells()["stability_gap"] == checked.quality.measures["stability_gap"]
    assert np.array_equal(checked.label_map, plain.label_map)  # the check judges; it changes no outline
    with pytest.raises(PSFHInputError, match="box prompts"):
        embedded.predict(image, folds=["fold_1"], boxes={"ps": (10, 10, 60, 40)}, stability_check=True)


class RecordingModel:
    """Records what psfh.batch.predict asks the model for; returns the embedded package's answer."""

    def __init__(self, model):
        self.model, self.folds, self.options = model, model.folds, []

    def members(self, folds=None):
        return self.model.members(folds)

    def predict(self, image, **options):
        self.options.append(options.get("stability_check"))
        return self.model.predict(image, **options)


def test_the_batch_cli_passes_the_option_and_fills_the_column(embedded, tmp_path):
    recording = RecordingModel(embedded)
    rows = predict_paths(recording, [FRAME], tmp_path / "out", folds=["fold_0"], tta=False, progress=False,
                         stability_check=True)
    assert recording.options == [True]
    assert rows[0]["stability_gap"] is not None and "stability_gap" in CSV_COLUMNS
    with open(tmp_path / "out" / "aop.csv", newline="") as table:
        assert float(next(csv.DictReader(table))["stability_gap"]) == pytest.approx(rows[0]["stability_gap"], abs=1e-3)
