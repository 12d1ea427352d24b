"""psfh.batch.evaluate: per-image metrics and summary on a small labelled set."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import psfh.cli.evaluate
from psfh.batch.evaluate import ROW_COLUMNS, evaluate
from psfh.cli.evaluate import main
from psfh.core.errors import PSFHInputError
from psfh.core.options import resolve_folds
from psfh.io.dataset import find_samples, select_samples
from psfh.io.images import load_label_map, save_label_map
from psfh.measure.aop import measure_aop
from psfh.measure.metrics import METRIC_KEYS
from psfh.model.psfh_model import Prediction

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SUMMARY_KEYS = {*METRIC_KEYS, "aop_error_mean", "aop_error_median", "score", "n",
                "model", "folds", "tta", "data", "date"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def labelled(tmp_path) -> Path:
    """Three real pairs from examples/ in the published layout."""
    root = tmp_path / "data"
    names = [p.name for p in sorted((EXAMPLES / "image_mha").glob("*.mha"))[:3]]
    for folder in ("image_mha", "label_mha"):
        (root / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(EXAMPLES / folder / name, root / folder / name)
    return root


class GroundTruthModel:
    """A stand-in model whose prediction is the image's own label map: a perfect model."""

    folds = ["truth"]
    source = None
    default_tta = True

    def members(self, folds=None):
        return resolve_folds(self.folds, folds)

    def predict(self, image, folds=None, tta=None, precision="fp32") -> Prediction:
        label = load_label_map(Path(image).parents[1] / "label_mha" / Path(image).name)
        one_hot = np.stack([label == value for value in (0, 1, 2)]).astype(np.float32)
        return Prediction(label_map=label, probabilities=one_hot, disagreement=np.zeros(label.shape, np.float32),
                          aop=measure_aop(label), fold_aop_deg={}, folds=list(folds or self.folds), tta=bool(tta))


def test_evaluate_cli_writes_rows_and_summary(tiny_package, labelled, tmp_path):
    out = tmp_path / "eval"
    code = main(["--model", str(tiny_package), "--data", str(labelled), "--out", str(out),
                 "--no-tta", "--folds", "fold_0", "fold_2", "--device", "cpu"])
    assert code == 0
    with open(out / "per_image.csv", newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames) == ROW_COLUMNS
        rows = list(reader)
    assert [row["id"] for row in rows] == [s.id for s in find_samples(labelled)]
    for row in rows:  # the quality check of each prediction, to calibrate flags against errors
        assert row["trusted"] in ("True", "False") and float(row["grey_levels"]) > 1
        assert (row["trusted"] == "False") == bool(row["quality_reasons"])
        assert row["flip_aop_gap"] == ""  # --no-tta: no mirror view to compare with
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["n"] == 3 and summary["folds"] == ["fold_0", "fold_2"] and summary["tta"] is False
    assert summary["model"] == str(tiny_package) and summary["data"] == str(labelled)


def test_a_perfect_model_scores_one(labelled):
    rows, summary = evaluate(GroundTruthModel(), find_samples(labelled), progress=False)
    assert len(rows) == 3
    for row in rows:
        assert row["dice_ps"] == row["dice_fh"] == row["dice_all"] == 1.0
        assert row["hd_all"] == 0.0 and row["asd_all"] == 0.0
        assert row["aop_error"] == 0.0 and row["aop_pred"] == row["aop_true"] is not None
    assert summary["aop_error_mean"] == 0.0 and summary["aop_error_median"] == 0.0
    assert summary["score"] == pytest.approx(1.0)
    assert summary["folds"] == ["truth"] and summary["tta"] is True


def test_ids_file_and_limit_select_a_subset(labelled, tmp_path, monkeypatch):
    monkeypatch.setattr(psfh.cli.evaluate, "load_model", lambda model, device, backend="torch": GroundTruthModel())
    ids = [s.id for s in find_samples(labelled)]
    ids_file = tmp_path / "held_out.txt"
    ids_file.write_text(f"# held-out ids\n{ids[2]}\n\n{ids[0]}\n")
    out = tmp_path / "eval"
    assert main(["--data", str(labelled), "--out", str(out), "--ids-file", str(ids_file)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and summary["score"] == pytest.approx(1.0)
    assert [s.id for s in select_samples(find_samples(labelled), limit=1)] == ids[:1]
    with pytest.raises(PSFHInputError, match="not in the data set"):
        select_samples(find_samples(labelled), ["99999"])


def test_a_folder_that_is_not_a_data_set_exits_2(tmp_path, capsys):
    folder = tmp_path / "just_images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    assert main(["--data", str(folder), "--out", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err
    assert str(folder) in error and "not a labelled data set" in error
    assert not (tmp_path / "eval").exists()


def test_out_of_fold_uses_each_images_held_out_fold_and_saves_label_maps(tiny_package, labelled, tmp_path):
    from psfh.model.psfh_model import PSFHModel

    package = tmp_path / "package"
    shutil.copytree(tiny_package, package)
    ids = [s.id for s in find_samples(labelled)]
    fold_of = {ids[0]: "fold_0", ids[1]: "fold_2", ids[2]: "fold_0"}
    (package / "folds.json").write_text(json.dumps({"fold_of_id": fold_of, "test_ids": []}))
    model = PSFHModel.from_pretrained(package, device="cpu")
    maps = tmp_path / "maps"
    rows, summary = evaluate(model, find_samples(labelled), out_of_fold=True, progress=False, label_map_dir=maps)
    assert summary["out_of_fold"] is True and summary["folds"] == ["fold_0", "fold_2"]
    for row, sample in zip(rows, find_samples(labelled)):
        expected = model.predict(sample.image_path, folds=[fold_of[sample.id]]).label_map
        np.testing.assert_array_equal(load_label_map(maps / f"{sample.id}.mha"), expected)  # as psfh.predict names it
        other = model.predict(sample.image_path, folds=["fold_1"]).label_map
        assert not np.array_equal(other, expected), "the folds differ, so the check above means something"
    with pytest.raises(PSFHInputError, match="give no folds"):
        evaluate(model, find_samples(labelled), folds=["fold_0"], out_of_fold=True, progress=False)
    del fold_of[ids[1]]
    (package / "folds.json").write_text(json.dumps({"fold_of_id": fold_of}))
    with pytest.raises(PSFHInputError, match="in no fold's validation set"):
        evaluate(model, find_samples(labelled), out_of_fold=True, progress=False)


def test_scoring_written_label_maps_needs_no_model(labelled, tmp_path, capsys):
    maps = tmp_path / "maps"
    maps.mkdir()
    samples = find_samples(labelled)
    for sample in samples:  # the labels themselves: a perfect method
        save_label_map(load_label_map(sample.label_path), maps / f"{sample.id}.png")
    out = tmp_path / "scored"
    assert main(["--predictions", str(maps), "--data", str(labelled), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dice_all"] == 1.0 and summary["aop_error_mean"] == 0.0
    assert summary["aop_challenge_error_mean"] == 0.0 and summary["aop_challenge_measured"] == 3
    assert summary["predictions"] == str(maps) and "model" not in summary
    with open(out / "per_image.csv") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["aop_challenge_true"]) > 0 and row["seconds"] == ""
    assert "challenge-definition AoP error mean 0.00" in capsys.readouterr().out
    assert main(["--predictions", str(maps), "--data", str(labelled), "--out", str(out), "--out-of-fold"]) == 2
    assert "--out-of-fold would be ignored" in capsys.readouterr().err
    (maps / f"{samples[1].id}.png").unlink()
    assert main(["--predictions", str(maps), "--data", str(labelled), "--out", str(out)]) == 2
    assert f"no label map for 1 sample(s), e.g. {samples[1].id} (looked for <id> with .png" in capsys.readouterr().err
    save_label_map(load_label_map(samples[1].label_path), maps / f"{samples[1].id}.mha")
    save_label_map(load_label_map(samples[1].label_path), maps / f"{samples[1].id}.nrrd")
    assert main(["--predictions", str(maps), "--data", str(labelled), "--out", str(out)]) == 2
    assert f"two label maps for '{samples[1].id}'" in capsys.readouterr().err


def test_predict_then_evaluate_chain_both_ways(tiny_package, labelled, tmp_path):
    """psfh.predict's --out is what psfh.evaluate --predictions reads, and psfh.evaluate's
    --save-label-maps writes what psfh.predict writes: same names, formats, geometry and labels."""
    import SimpleITK as sitk

    from psfh.cli.predict import main as predict_main

    predicted = tmp_path / "predicted"
    assert predict_main([str(labelled / "image_mha"), "--out", str(predicted), "--model", str(tiny_package),
                         "--folds", "fold_0", "--device", "cpu"]) == 0
    samples = find_samples(labelled)
    assert sorted(p.name for p in predicted.glob("*.mha")) == sorted(f"{s.id}.mha" for s in samples)
    scored = tmp_path / "scored"
    assert main(["--predictions", str(predicted), "--data", str(labelled), "--out", str(scored)]) == 0
    evaluated = tmp_path / "evaluated"
    assert main(["--model", str(tiny_package), "--folds", "fold_0", "--data", str(labelled), "--out", str(evaluated),
                 "--save-label-maps", "--device", "cpu"]) == 0
    for sample in samples:
        written, saved = predicted / f"{sample.id}.mha", evaluated / "label_maps" / f"{sample.id}.mha"
        np.testing.assert_array_equal(load_label_map(saved), load_label_map(written))
        by_predict, by_evaluate = sitk.ReadImage(str(written)), sitk.ReadImage(str(saved))
        assert by_evaluate.GetSpacing() == by_predict.GetSpacing() and by_evaluate.GetOrigin() == by_predict.GetOrigin()
    with open(scored / "per_image.csv") as a, open(evaluated / "per_image.csv") as b:
        rows_scored, rows_evaluated = list(csv.DictReader(a)), list(csv.DictReader(b))
    for row_scored, row_evaluated in zip(rows_scored, rows_evaluated):
        for key in ("id", "dice_ps", "dice_fh", "aop_pred", "aop_error", "ps_axis_error_deg"):
            assert row_scored[key] == row_evaluated[key], key


def test_dicom_images_with_label_maps_are_evaluated(tiny_package, tmp_path):
    from dicom_fixtures import EXAMPLE_IMAGES, write_single_frame

    root = tmp_path / "dicom_data"
    (root / "image_mha").mkdir(parents=True)
    (root / "label_mha").mkdir()
    write_single_frame(root / "image_mha" / f"{EXAMPLE_IMAGES[0].stem}.dcm")  # example frame 0 as a DICOM
    shutil.copy(EXAMPLES / "label_mha" / EXAMPLE_IMAGES[0].name, root / "label_mha" / EXAMPLE_IMAGES[0].name)
    out = tmp_path / "eval"
    code = main(["--model", str(tiny_package), "--data", str(root), "--out", str(out), "--no-tta",
                 "--folds", "fold_0", "--device", "cpu"])
    assert code == 0
    with open(out / "per_image.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["id"] for row in rows] == [EXAMPLE_IMAGES[0].stem]
    assert 0.0 <= float(rows[0]["dice_all"]) <= 1.0 and float(rows[0]["grey_levels"]) > 32
