"""psfh.batch.predict: the batch command line on a tiny-random package (garbage but deterministic)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

import psfh.cli.predict
from psfh.batch.predict import CSV_COLUMNS, plan_outputs, predict_paths
from psfh.cli.predict import main
from psfh.core.errors import PSFHInputError
from psfh.core.options import resolve_folds
from psfh.io.images import load_image, load_label_map

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPACING = (0.25, 0.5)  # the examples have spacing 1: give one copy a geometry worth keeping
ORIGIN = (3.0, -7.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def inputs(tmp_path) -> Path:
    """A folder with two .mha examples (one with non-unit geometry), a PNG, a bad file, a note."""
    folder = tmp_path / "in"
    folder.mkdir()
    first, second = sorted((EXAMPLES / "image_mha").glob("*.mha"))[:2]
    shutil.copy(first, folder / first.name)
    image = sitk.ReadImage(str(second))
    image.SetSpacing((*SPACING, 1.0))
    image.SetOrigin((*ORIGIN, 0.0))
    sitk.WriteImage(image, str(folder / second.name), True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 80), dtype=np.uint8)).save(folder / "scan.png")
    (folder / "broken.png").write_text("this is not a PNG")
    (folder / "notes.txt").write_text("not an image")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def read_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return {row["name"]: row for row in reader}


def test_predict_folder_writes_label_maps_and_table(tiny_package, inputs, tmp_path, capsys):
    before = snapshot(inputs)
    out = tmp_path / "out"
    code = main([str(inputs), "--model", str(tiny_package), "--out", str(out), "--device", "cpu"])

    assert code == 1  # broken.png failed, the others went on
    assert snapshot(inputs) == before
    stderr = capsys.readouterr().err
    assert "broken.png" in stderr and "notes.txt" in stderr  # the failure and the skipped file

    names = [p.stem for p in sorted((EXAMPLES / "image_mha").glob("*.mha"))[:2]]
    rows = read_rows(out / "aop.csv")
    assert sorted(rows) == sorted([*names, "scan", "broken"])
    assert rows["broken"]["error"] and not rows["broken"]["label_map"]
    for name in [*names, "scan"]:
        assert rows[name]["error"] == ""
        assert float(rows[name]["seconds"]) > 0
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.mha" for n in names] + ["scan.png", "aop.csv"])

    for name, suffix in [*((n, ".mha") for n in names), ("scan", ".png")]:
        written = out / f"{name}{suffix}"
        assert rows[name]["label_map"] == str(written)
        label = load_label_map(written)
        assert label.dtype == np.uint8
        assert label.shape == load_image(inputs / f"{name}{suffix}").pixels.shape
        assert set(np.unique(label).tolist()) <= {0, 1, 2}
        areas = (int(rows[name]["ps_area_px"]), int(rows[name]["fh_area_px"]))
        assert areas == (int((label == 1).sum()), int((label == 2).sum()))
        check = rows[name]["check"]
        assert check == "ok" or check.startswith("check this result: ")
        if check != "ok":  # the tiny random model's garbage: the AoP is withheld, the measurement kept
            assert rows[name]["aop_deg"] == ""

    geometry = sitk.ReadImage(str(out / f"{names[1]}.mha"))
    assert geometry.GetSpacing() == pytest.approx(SPACING)
    assert geometry.GetOrigin() == pytest.approx(ORIGIN)


def test_refuses_to_overwrite_an_input_when_out_is_the_input_folder(tiny_package, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sorted((EXAMPLES / "image_mha").glob("*.mha"))[0], folder / "case.mha")
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(folder / "scan.png")
    before = snapshot(folder)

    code = main([str(folder / "scan.png"), str(folder / "case.mha"), "--model", str(tiny_package),
                 "--out", str(folder), "--no-tta", "--folds", "fold_1"])

    assert code == 1
    assert sorted(p.name for p in folder.iterdir()) == ["aop.csv", "case.mha", "scan.png"]
    assert {name: data for name, data in snapshot(folder).items() if name != "aop.csv"} == before
    rows = read_rows(folder / "aop.csv")
    assert "would overwrite the input itself" in rows["scan"]["error"]
    assert "would overwrite the input itself" in rows["case"]["error"]
    assert "would overwrite the input itself" in capsys.readouterr().err


def test_same_name_inputs_do_not_overwrite_each_other(tmp_path):
    """a.jpg comes first (sorted) and writes a.png; the later a.png is refused, whatever --out is."""
    first, second = tmp_path / "a.jpg", tmp_path / "a.png"
    for path in (first, second):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    items = plan_outputs([first, second], tmp_path / "out")
    assert items[0].output == tmp_path / "out" / "a.png" and items[0].refused is None
    assert "already the output of" in items[1].refused


class ConstantModel:
    """Stands in for PSFHModel where only the file handling is under test."""

    folds = ["only"]

    def members(self, folds=None):
        return resolve_folds(self.folds, folds)

    def predict(self, image, folds=None, tta=None, precision="fp32"):
        raise AssertionError("not reached: these items are refused before prediction")


def test_predict_paths_rejects_unknown_folds(tmp_path):
    with pytest.raises(PSFHInputError, match="unknown folds"):
        predict_paths(ConstantModel(), [tmp_path], tmp_path / "out", folds=["fold_9"], progress=False)


def test_model_without_folds_fails_up_front(tmp_path, capsys, monkeypatch):
    class BaseOnly(ConstantModel):
        folds = []

    monkeypatch.setattr(psfh.cli.predict, "load_model", lambda model, device, backend="torch": BaseOnly())
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "x.png")
    assert main([str(tmp_path / "x.png"), "--out", str(tmp_path / "out")]) == 2
    assert "no fold adapters" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ensemble_and_named_folds_together_are_refused(tiny_package, tmp_path, capsys):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "x.png")
    assert main([str(tmp_path / "x.png"), "--model", str(tiny_package), "--device", "cpu", "--out",
                 str(tmp_path / "out"), "--folds", "fold_0", "--ensemble"]) == 2
    assert "give --folds or --ensemble, not both" in capsys.readouterr().err
