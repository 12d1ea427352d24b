"""app.py's calipers: the AoP re-measured from the user's own points of its construction, in the
page (clicks on the overlay, Undo, Reset; the Cine clip tab's scrubbed frame) and through "/adjust".

Where no model is needed the example frame 04821 is measured on its expert label map
(examples/label_mha), so its construction is known: its AoP is 141.6 deg. The API is called with
gradio_client on the app launched around the tiny-random package, as in test_app.py.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import SimpleITK as sitk
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from psfh.batch import cine
from psfh.io.images import as_uint8, load_image, load_label_map
from psfh.io.sequence import FrameSequence
from psfh.measure.aop import measure_aop
from psfh.model.prediction import Prediction

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FRAME = EXAMPLES / "image_mha" / "04821.mha"
EXPERT = EXAMPLES / "label_mha" / "04821.mha"

pytestmark = pytest.mark.usefixtures("app_outputs")


@pytest.fixture(scope="module")
def server(tiny_model):
    demo = app.build_demo(tiny_model, concurrency_limit=2)
    yield app.launch_locally(demo)
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


def rotated(point, centre, degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.asarray(centre) + turn @ (np.asarray(point, float) - np.asarray(centre))


def outward_tangent(prediction: Prediction, degrees: float) -> np.ndarray:
    """The model's tangent point turned ``degrees`` about the apex, the way that leaves the head
    (the other way goes into it and is refused)."""
    apex, tangent = np.array(prediction.aop.ps_inferior), np.array(prediction.aop.tangent_point)
    for sign in (1, -1):
        candidate = rotated(tangent, apex, sign * degrees)
        try:
            prediction.adjusted(tangent_point=candidate)
            return candidate
        except app.PSFHInputError:
            pass
    raise AssertionError("neither way round was accepted")


def display(point, factor: int = 2):
    """Image pixel (x, y) -> the overlay's display pixel a click there gives (the 256 x 256 frame
    is shown at twice its size): the same point back, to a quarter pixel."""
    return tuple(int(round((v + 0.5) * factor - 0.5)) for v in point)


# ------------------------------------------------------------------------------- the page


@pytest.fixture
def expert_analysis():
    """The page's state for frame 04821 measured on its expert label map (no model)."""
    return app.analysis_of_label_map(str(FRAME), str(EXPERT))


def test_click_the_skull_tangent_the_aop_follows_and_undo_and_reset_restore(tiny_model, expert_analysis):
    analysis = expert_analysis
    automatic = analysis.prediction
    assert automatic.aop.angle_deg == pytest.approx(measure_aop(load_label_map(EXPERT)).angle_deg)
    tangent = outward_tangent(automatic, 8.0)
    analysis, status = app.correct_click(tiny_model, analysis, "Skull tangent (caliper)", display(tangent))
    assert status.startswith("Your points: **skull tangent**") and "Undo or Reset go back" in status
    clicked = np.array(analysis.points["tangent_point"])
    assert np.abs(clicked - tangent).max() <= 0.25
    # The AoP moves by the 8 degrees the point was turned (to the click's quarter pixel: ~0.2 deg).
    assert analysis.prediction.aop.angle_deg == pytest.approx(automatic.aop.angle_deg + 8.0, abs=0.25)
    assert analysis.prediction.aop.tangent_point == tuple(clicked)

    state, overlay, aop, aop_text, label_png, label_mha, report, report_file, _ = app.show_correction(analysis, status)
    assert aop == round(analysis.prediction.aop_deg, 1)
    assert f"{analysis.prediction.aop.angle_deg:.1f}\N{DEGREE SIGN}" in aop_text
    assert "Measured from the points you placed** (skull tangent" in aop_text
    assert "The PS inferior end and the PS superior end are the model's" in aop_text
    assert report["adjusted_by_user"] == {"tangent_point": [round(v, 1) for v in clicked]}
    assert json.loads(Path(report_file).read_text()) == report
    cell = f"tangent_point ({clicked[0]:.1f}, {clicked[1]:.1f})"
    assert Image.open(label_png).text["psfh_adjusted_by_user"] == cell
    assert sitk.ReadImage(label_mha).GetMetaData("psfh_adjusted_by_user") == cell
    assert np.all(overlay == (255, 255, 255), axis=-1).any()  # the user's point is ringed in white

    # The PS ends, two clicks in either order: the end nearer the head is the inferior one.
    inferior, superior = automatic.aop.ps_inferior, automatic.aop.ps_superior
    lower = (inferior[0] + 6.0, inferior[1] + 2.0)
    analysis, status = app.correct_click(tiny_model, analysis, "PS ends (calipers)", display(superior))
    assert status.startswith("First end at") and analysis.pending is not None
    analysis, status = app.correct_click(tiny_model, analysis, "PS ends (calipers)", display(lower))
    assert status.startswith("Your points: **PS inferior end, PS superior end, skull tangent**")
    assert np.abs(np.subtract(analysis.prediction.aop.ps_inferior, lower)).max() <= 0.25
    assert analysis.prediction.hsd.apex == analysis.prediction.aop.ps_inferior  # the HSD follows

    analysis, status = app.undo_correction(tiny_model, analysis)
    assert set(analysis.points) == {"tangent_point"}
    assert analysis.prediction.aop.angle_deg == pytest.approx(automatic.aop.angle_deg + 8.0, abs=0.25)
    analysis, status = app.undo_correction(tiny_model, analysis, reset=True)
    assert status == "The model's own result." and analysis.points == {}
    assert analysis.prediction.aop == automatic.aop and analysis.prediction.adjusted_by_user == {}


def test_a_point_that_makes_no_sense_is_not_used_and_the_page_says_why(tiny_model, expert_analysis):
    analysis = expert_analysis
    before = analysis.prediction
    head = np.argwhere(load_label_map(EXPERT) == 2).mean(axis=0)[::-1]  # (x, y) of the head's centre
    analysis, status = app.correct_click(tiny_model, analysis, "Skull tangent (caliper)", display(head))
    assert status.startswith("\N{WARNING SIGN} Not used: tangent_point (")
    assert "lies inside the fetal head outline" in status
    assert analysis.prediction is before and analysis.points == {} and analysis.history == []
    # A PS end inside the head: refused at the second click, nothing changes.
    app.correct_click(tiny_model, analysis, "PS ends (calipers)", display(before.aop.ps_superior))
    analysis, status = app.correct_click(tiny_model, analysis, "PS ends (calipers)", display(head))
    assert "Not used: ps_inferior (" in status and "lies inside the fetal head outline" in status
    assert analysis.prediction is before and analysis.pending is None
    # A click on the legend is not a point.
    analysis, status = app.correct_click(tiny_model, analysis, "Skull tangent (caliper)", (100, 530))
    assert status == "Click inside the image (not the legend)."
    with pytest.raises(gr.Error, match="Run the model first"):
        app.correct_click(tiny_model, None, "Skull tangent (caliper)", (1, 1))


def test_a_box_then_the_tangent_combine_and_undo_goes_back_one_step(embedded):
    *_, analysis = app.run_segment(embedded, str(FRAME), False, 1)
    automatic = analysis.prediction
    rows, cols = np.nonzero(load_label_map(EXPERT) == 2)
    corners = [(cols.min() - 3, rows.min() - 3), (cols.max() + 3, rows.max() + 3)]
    for corner in corners:
        analysis, status = app.correct_click(embedded, analysis, "Fetal head (FH)", display(corner))
    assert status.startswith("Corrected: **fetal head**")
    boxed = analysis.prediction
    tangent = outward_tangent(boxed, 5.0)
    analysis, status = app.correct_click(embedded, analysis, "Skull tangent (caliper)", display(tangent))
    assert status.startswith("Corrected: **fetal head**; your points: **skull tangent**")
    expected = embedded.decode(analysis.embeddings, boxes=analysis.boxes).adjusted(
        tangent_point=analysis.points["tangent_point"])
    assert analysis.prediction.aop.angle_deg == pytest.approx(expected.aop.angle_deg, abs=1e-9)
    np.testing.assert_array_equal(analysis.prediction.label_map, boxed.label_map)  # the points leave the outline
    assert analysis.prediction.corrected == boxed.corrected
    analysis, _ = app.undo_correction(embedded, analysis)
    assert analysis.prediction.aop == boxed.aop and analysis.points == {}
    analysis, _ = app.undo_correction(embedded, analysis)
    assert analysis.prediction.aop == automatic.aop and analysis.boxes == {}


# ------------------------------------------------------------------------------- the API


def test_the_api_adjusts_an_earlier_label_map_without_a_model(client):
    expert = Prediction.from_label_map(load_label_map(EXPERT), as_uint8(load_image(FRAME)), name="04821")
    tangent = outward_tangent(expert, 6.0)
    ends = [list(expert.aop.ps_superior), list(expert.aop.ps_inferior)]
    label_png, label_mha, aop, report = client.predict(
        image=handle_file(FRAME), tta=False, n_folds=1, ps_ends=ends, tangent_point=list(tangent),
        label_map=handle_file(EXPERT), api_name="/adjust")
    wanted = expert.adjusted(ps_ends=ends, tangent_point=tangent)
    assert aop == round(wanted.aop_deg, 1) and aop == pytest.approx(expert.aop.angle_deg + 6.0, abs=0.05)
    assert report["aop"] == json.loads(json.dumps(wanted.aop.to_dict()))
    assert report["adjusted_by_user"] == {name: [round(v, 1) for v in point]
                                          for name, point in wanted.adjusted_by_user.items()}
    assert report["folds"] == [] and report["backend"] == "none"  # no model ran
    np.testing.assert_array_equal(load_label_map(label_png), load_label_map(EXPERT))
    assert Image.open(label_png).text["psfh_adjusted_by_user"].startswith("ps_inferior (")


def test_the_api_segments_then_adjusts(client, tiny_model):
    """Without a label map, /adjust segments first (here the tiny model, whose result has a head
    somewhere); a point outside the image is refused by name whatever the model found."""
    with pytest.raises(AppError, match=r"tangent_point \(999\.0, 5\.0\) is outside the 256 x 256 image") as refused:
        client.predict(image=handle_file(FRAME), tta=False, n_folds=1, ps_ends=None, tangent_point=[999, 5],
                       api_name="/adjust")
    assert "/tmp/" not in str(refused.value)
    with pytest.raises(AppError, match=r"give ps_ends \[\[x, y\], \[x, y\]\] and/or tangent_point"):
        client.predict(image=handle_file(FRAME), tta=False, n_folds=1, ps_ends=None, tangent_point=None,
                       api_name="/adjust")


def test_the_handler_segments_then_adjusts_with_the_embedded_package(embedded):
    # Near the expert's ends of frame 04821's symphysis, superior first.
    label_png, label_mha, aop, report, analysis = app.run_adjust(embedded, str(FRAME), False, 1,
                                                                 ps_ends=[[125.0, 36.0], [82.0, 40.0]])
    alone = embedded.predict(FRAME, folds=embedded.folds[:1], tta=False)
    wanted = alone.adjusted(ps_ends=[[125.0, 36.0], [82.0, 40.0]])
    assert report["aop"] == json.loads(json.dumps(wanted.aop.to_dict()))
    assert report["adjusted_by_user"] == {"ps_inferior": [82.0, 40.0], "ps_superior": [125.0, 36.0]}
    assert aop == (None if wanted.aop_deg is None else round(wanted.aop_deg, 1))
    assert analysis.points == wanted.adjusted_by_user
    assert sitk.ReadImage(label_mha).GetMetaData("psfh_adjusted_by_user") == (
        "ps_inferior (82.0, 40.0); ps_superior (125.0, 36.0)")


def test_a_bad_label_map_for_the_api_is_refused_by_name(tmp_path):
    small = tmp_path / "small_labels.png"
    Image.fromarray(np.zeros((100, 120), np.uint8)).save(small)
    with pytest.raises(gr.Error, match="label_map is 120 x 100 pixels; the image is 256 x 256") as refused:
        app.run_adjust(None, str(FRAME), tangent_point=[10, 10], label_map=str(small))
    assert str(tmp_path) not in refused.value.message


# ------------------------------------------------------------------------------- the cine clip


class ExpertFrames:
    """Stands in for PSFHModel in analyse_clip: frame i's result is example i's expert label map."""

    def __init__(self, label_maps):
        self.label_maps, self.calls = label_maps, 0

    def predict(self, image, folds=None, tta=None, precision="fp32", spacing_mm=None):
        label_map = self.label_maps[self.calls]
        self.calls += 1
        prediction = Prediction.from_label_map(label_map, image=as_uint8(image), spacing_mm=spacing_mm)
        return dataclasses.replace(prediction, folds=["fold_0"], tta=False)


@pytest.fixture
def clip_view(tmp_path):
    """The Cine clip tab's state for a 3-frame clip of example frames measured on their expert
    label maps, with its downloads written as run_clip writes them."""
    ids = ["04821", "04810", "04970"]
    frames = [as_uint8(load_image(EXAMPLES / "image_mha" / f"{i}.mha")) for i in ids]
    sequence = FrameSequence(frames=[f.astype(np.float32) for f in frames], names=[f"c_f{i}" for i in range(3)],
                             frame_times_s=(0.0, 0.04, 0.08), spacing_mm=None, source="test", path=tmp_path,
                             original_dtype="uint8")
    result = cine.analyse_clip(ExpertFrames([load_label_map(EXAMPLES / "label_mha" / f"{i}.mha") for i in ids]),
                               sequence)
    folder = cine.write_clip(result, tmp_path / "clip")
    shutil.make_archive(str(folder / "label_maps"), "zip", folder / "label_maps")
    return app.ClipView(frames, result, folder=folder, fast=True, automatic=result)


def test_the_scrubbed_frames_tangent_moves_the_curve_and_its_maximum(clip_view):
    view = clip_view
    angles = [row["aop_deg"] for row in view.result.rows]
    assert angles == pytest.approx([141.6, 133.3, 137.3], abs=0.05)  # the experts' AoPs
    assert view.result.maximum["frame"] == 0
    frame_one = Prediction.from_label_map(view.result.label_maps[1])
    tangent = outward_tangent(frame_one, 12.0)  # frame 1: 133.3 + 12 deg, above frame 0's 141.6
    view, status = app.clip_click(view, 1, "Skull tangent (caliper)", display(tangent))
    assert status.startswith("Frame 1 adjusted: your points: **skull tangent**")
    state, curve, summary, overlay, text, frames_csv, files, report, shown = app.show_clip_change(view, 1, status)
    assert shown == status and report["max_aop_frame"] == 1 and report["frames_adjusted"] == [1]
    assert report["max_aop_deg"] == pytest.approx(angles[1] + 12.0, abs=0.25)
    assert f"Maximum AoP: {report['max_aop_deg']:.1f}\N{DEGREE SIGN} at frame 1" in summary
    assert "Adjusted by you** (hollow dots on the curve): frame(s) 1" in summary
    assert "adjusted by the user (tangent_point (" in curve
    assert "From your points: skull tangent (ringed)" in text and "the clip's maximum" in text
    with open(frames_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["adjusted_by_user"] == "none" for row in rows] == [True, False, True]
    assert float(rows[1]["aop_deg"]) == pytest.approx(report["max_aop_deg"])
    assert json.loads(Path(files[0]).read_text()) == json.loads(json.dumps(report))
    assert Path(files[2]) == view.folder / "label_maps.zip"  # the label maps did not change

    # Reset: the model's own clip, its own downloads.
    view, status = app.clip_undo(view, reset=True)
    *_, frames_csv, files, report, _ = app.show_clip_change(view, 1, status)
    assert status == "The model's own clip." and report["max_aop_frame"] == 0 and report["frames_adjusted"] == []
    assert Path(frames_csv) == view.folder / "frames.csv"


def test_the_clips_ps_ends_take_two_clicks_on_one_frame_and_bad_points_are_explained(clip_view):
    view = clip_view
    aop = view.result.measurements[2][0]
    view, status = app.clip_click(view, 2, "PS ends (calipers)", display(aop.ps_superior))
    assert status.startswith("Frame 2: first end at")
    overlay, _ = app.frame_view(view, 2)
    assert np.all(overlay == (255, 255, 255), axis=-1).any()  # the first end is marked
    # Scrubbed to another frame, the next click starts that frame's pair.
    view, status = app.clip_click(view, 0, "PS ends (calipers)", display(aop.ps_superior))
    assert status.startswith("Frame 0: first end at")
    lower = (aop.ps_inferior[0] - 5.0, aop.ps_inferior[1])
    app.clip_click(view, 2, "PS ends (calipers)", display(aop.ps_superior))
    view, status = app.clip_click(view, 2, "PS ends (calipers)", display(lower))
    assert status.startswith("Frame 2 adjusted: your points: **PS inferior end, PS superior end**")
    assert view.result.rows[2]["aop_deg"] != view.automatic.rows[2]["aop_deg"]
    head = np.argwhere(view.result.label_maps[2] == 2).mean(axis=0)[::-1]
    before = view.result
    view, status = app.clip_click(view, 2, "Skull tangent (caliper)", display(head))
    assert status.startswith("\N{WARNING SIGN} Frame 2, not used: tangent_point (") and view.result is before
    view, status = app.clip_undo(view)
    assert view.result is view.automatic and status == "The model's own clip."
    with pytest.raises(gr.Error, match="Run a clip first"):
        app.clip_click(None, 0, "Skull tangent (caliper)", (1, 1))
