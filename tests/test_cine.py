"""psfh.batch.cine: clips segmented frame by frame, the AoP curve, its maximum, flagged frames left out;
and the HSD in mm from a DICOM's spacing through predict and the CLIs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from dicom_fixtures import FRAME_TIME_MS, PIXEL_SPACING_MM, write_cine, write_single_frame

import psfh.cli.cine
from psfh.batch import cine
from psfh.cli.cine import main as cine_main
from psfh.cli.predict import main as predict_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def frame_row(index: int, aop: float | None, time_s: float | None = None) -> dict:
    row = dict.fromkeys(cine.FRAME_COLUMNS)
    row.update(frame=index, name=f"clip_f{index:04d}", time_s=time_s, aop_deg=aop, aop_deg_measured=aop or 150.0,
               in_curve=aop is not None, check="ok" if aop is not None else "check this result: the model is unsure")
    return row


def result_of(angles, times=None) -> cine.ClipResult:
    rows = [frame_row(i, a, None if times is None else times[i]) for i, a in enumerate(angles)]
    return cine.ClipResult(rows=rows, label_maps=[], source="test", spacing_mm=None, folds=["fold_0"], tta=False,
                           seconds=2.0 * len(rows), names=[r["name"] for r in rows])


def test_curve_leaves_out_flagged_frames_and_finds_the_maximum():
    result = result_of([120.0, None, 131.5, 131.5, 128.0], times=[0.0, 0.04, 0.08, 0.12, 0.16])
    assert [row["frame"] for row in result.curve] == [0, 2, 3, 4]
    assert result.maximum["frame"] == 2  # the first of a tie
    summary = result.summary()
    assert summary["max_aop_deg"] == 131.5 and summary["max_aop_time_s"] == 0.08
    assert summary["frames_flagged"] == [1] and summary["frames_in_curve"] == 4
    assert summary["seconds_per_frame"] == pytest.approx(2.0)
    svg = cine.curve_svg(result)
    assert svg.startswith("<svg") and svg.count("<circle") == 4 + 1  # 4 curve points + the maximum's ring
    assert "max 131.5" in svg and "time (s)" in svg and "the model is unsure" in svg


def test_a_clip_without_a_trusted_frame_has_no_maximum():
    result = result_of([None, None])
    assert result.maximum is None and result.summary()["max_aop_deg"] is None
    svg = cine.curve_svg(result)
    assert "<polyline" not in svg and "frame" in svg  # no times: the frame index is the axis


def test_cine_dicom_through_the_command_line(embedded, tmp_path, monkeypatch, capsys):
    clip = write_cine(tmp_path / "labour.dcm", count=3)
    monkeypatch.setattr(psfh.cli.cine, "load_model", lambda model, device, backend="torch": embedded)
    code = cine_main([str(clip), "--out", str(tmp_path / "out"), "--fast"])
    assert code == 0, capsys.readouterr().err
    folder = tmp_path / "out" / "labour"
    with open(folder / "frames.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["labour_f0000", "labour_f0001", "labour_f0002"]
    assert [float(row["time_s"]) for row in rows] == pytest.approx([0.0, FRAME_TIME_MS / 1000, 2 * FRAME_TIME_MS / 1000])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["frames"] == 3 and summary["folds"] == ["soup"] and summary["tta"] is True  # fast: the soup x flip
    assert summary["pixel_spacing_mm"] == list(PIXEL_SPACING_MM)
    trusted = [row for row in rows if row["in_curve"] == "True"]
    assert trusted, rows  # real ultrasound frames: the curve is not empty
    assert summary["max_aop_deg"] == pytest.approx(max(float(r["aop_deg"]) for r in trusted), abs=1e-3)
    assert all(float(r["hsd_mm"]) > 0 for r in trusted)  # the DICOM's spacing gives the HSD in mm
    assert (folder / "aop_curve.svg").read_text().count("<polyline") == 1
    assert len(list((folder / "label_maps").glob("*.png"))) == 3
    assert "max AoP" in capsys.readouterr().out


def test_a_broken_clip_fails_alone(embedded, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    monkeypatch.setattr(psfh.cli.cine, "load_model", lambda model, device, backend="torch": embedded)
    assert cine_main([str(broken), "--out", str(tmp_path / "out"), "--fast"]) == 1
    assert "broken.mp4" in capsys.readouterr().err


def test_hsd_in_mm_from_a_dicoms_spacing(embedded, tmp_path):
    path = write_single_frame(tmp_path / "frame.dcm")
    prediction = embedded.predict(path, folds=["fold_0"], tta=False)
    assert prediction.spacing_mm == PIXEL_SPACING_MM and prediction.hsd.measured
    dx, dy = np.subtract(prediction.hsd.skull_point, prediction.hsd.apex)
    expected = np.hypot(dx * PIXEL_SPACING_MM[1], dy * PIXEL_SPACING_MM[0])
    assert prediction.hsd.distance_mm == pytest.approx(expected, rel=1e-6)
    report = prediction.report()
    assert report["pixel_spacing_mm"] == list(PIXEL_SPACING_MM)
    assert report["hsd_mm"] == (prediction.hsd.distance_mm if prediction.trusted else None)
    # A spacing given by the caller wins over the file's; a bad one is refused before the encoder runs.
    given = embedded.predict(path, folds=["fold_0"], tta=False, spacing_mm=(0.1, 0.1))
    assert given.hsd.distance_mm == pytest.approx(0.1 * given.hsd.distance_px)
    from psfh.core.errors import PSFHInputError
    with pytest.raises(PSFHInputError, match="spacing_mm"):
        embedded.predict(path, folds=["fold_0"], tta=False, spacing_mm=(0.0, 0.1))


def test_predict_cli_writes_hsd_for_a_dicom_and_points_clips_to_cine(embedded, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    write_single_frame(folder / "still.dcm")
    write_cine(folder / "clip.dcm", count=2)
    import psfh.cli.predict
    monkeypatch.setattr(psfh.cli.predict, "load_model", lambda model, device, backend="torch": embedded)
    code = predict_main([str(folder), "--out", str(tmp_path / "out"), "--folds", "fold_0", "--no-tta"])
    assert code == 1  # the clip is an error row
    with open(tmp_path / "out" / "aop.csv", newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert "python -m psfh.cine" in rows["clip"]["error"]
    still = rows["still"]
    assert still["error"] == "" and still["label_map"].endswith("still.mha")  # .mha keeps the spacing
    assert still["pixel_spacing_mm"] == "0.21 x 0.23" and float(still["hsd_px"]) > 0
    assert (float(still["hsd_mm"]) > 0) == (still["check"] == "ok")


def test_a_bad_spacing_stops_the_command_line_at_once(tiny_package, tmp_path, capsys):
    clip = write_cine(tmp_path / "labour.dcm", count=2)
    image = write_single_frame(tmp_path / "frame.dcm")
    assert predict_main([str(image), "--model", str(tiny_package), "--out", str(tmp_path / "p"),
                         "--spacing-mm", "0", "0.2", "--device", "cpu"]) == 2
    assert cine_main([str(clip), "--model", str(tiny_package), "--out", str(tmp_path / "c"),
                      "--spacing-mm", "-1", "0.2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("spacing_mm must be two positive numbers") == 2
    assert not (tmp_path / "p" / "aop.csv").exists()


class _Stop(Exception):
    """A stand-in for the demo's time limit."""


def test_a_clip_stopped_by_on_frame_keeps_the_frames_done(tiny_model, tmp_path):
    from psfh.io.sequence import read_sequence

    sequence = read_sequence(write_cine(tmp_path / "clip.dcm", count=4))

    def stop_after_two(done, total):
        if done >= 2:
            raise _Stop(f"stopped after {done} of {total} frames")

    result = cine.analyse_clip(tiny_model, sequence, folds=["fold_0"], tta=False, on_frame=stop_after_two,
                               stop_on=(_Stop,))
    assert [row["frame"] for row in result.rows] == [0, 1] and len(result.label_maps) == 2
    assert result.names == list(sequence.names[:2])
    assert result.summary()["frames"] == 2 and result.summary()["stopped_early"] == "stopped after 2 of 4 frames"
    folder = cine.write_clip(result, tmp_path / "out")
    assert sorted(p.stem for p in (folder / "label_maps").iterdir()) == sorted(sequence.names[:2])

    # A stop at the last frame changes nothing; an exception not named in stop_on is not swallowed.
    def stop_at_the_end(done, total):
        if done == total:
            raise _Stop("late")

    last = cine.analyse_clip(tiny_model, sequence, folds=["fold_0"], tta=False, stop_on=(_Stop,),
                             on_frame=stop_at_the_end)
    assert len(last.rows) == 4 and last.stopped_early is None
    with pytest.raises(_Stop):
        cine.analyse_clip(tiny_model, sequence, folds=["fold_0"], tta=False, on_frame=stop_after_two)
