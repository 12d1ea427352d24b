"""app.py: the Gradio demo's API ("/segment", "/correct", "/adjust", "/clip"), its handlers, concurrency and bad input.

The app is launched once on a free localhost port around a tiny-random package (garbage but
deterministic predictions) and called with gradio_client, as a user of the API would.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import struct
import threading
import time
import types
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dicom_fixtures as fx
import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from psfh.batch.cine import FRAME_COLUMNS, ClipResult
from psfh.io.images import as_uint8, load_image, load_label_map
from psfh.measure import quality
from psfh.measure.aop import AoPMeasurement
from psfh.measure.hsd import HSDMeasurement
from psfh.render.overlay import HSD_COLOUR

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "image_mha"


# ------------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("app_outputs")


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def server(model):
    """The app on localhost, 4 requests at a time so that concurrent requests really overlap."""
    demo = app.build_demo(model, concurrency_limit=4)
    yield app.launch_locally(demo)
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three inputs of different sizes and formats, so mixed-up results cannot look alike."""
    folder = tmp_path_factory.mktemp("app_images")
    first, second, third = sorted(EXAMPLES.glob("*.mha"))[:3]
    cropped = as_uint8(load_image(second))[20:220, 10:250]  # 200 x 240
    Image.fromarray(cropped).save(folder / "cropped.png")
    resized = Image.fromarray(as_uint8(load_image(third))[:, ::-1]).resize((300, 220))  # 220 x 300
    resized.save(folder / "resized.png")
    return [first, folder / "cropped.png", folder / "resized.png"]


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG with a valid header claiming width x height and no pixel data at all: only a size
    check made before decoding can refuse it for its size (decoding it would fail otherwise)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def predict_alone(model, path, folds, tta, stability_check=app.STABILITY_CHECK_DEFAULT):
    """The prediction an API call should return (its stability check on by default, as in the page)."""
    return model.predict(path, folds=model.folds[:folds], tta=tta, stability_check=stability_check)


def assert_api_result_matches(result, expected):
    """An API result (label PNG, label MHA, AoP, report) equals a Prediction made alone."""
    label_png, label_mha, aop, report = result
    np.testing.assert_array_equal(load_label_map(label_png), expected.label_map)
    np.testing.assert_array_equal(load_label_map(label_mha), expected.label_map)
    angle = expected.aop_deg
    assert aop == (None if angle is None else round(angle, 1))
    wanted = expected.report()
    for key in ("name", "image_size", "aop", "aop_deg", "quality", "fold_aop_deg", "view_aop_deg",
                "area_pixels", "mean_disagreement", "folds", "tta"):
        assert report[key] == wanted[key], key


# ------------------------------------------------------------------------------- the API


def test_api_has_the_segment_endpoint(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert list(endpoints) == ["/segment", "/correct", "/adjust", "/clip"]  # the page's other events are private
    segment = endpoints["/segment"]
    assert [p["parameter_name"] for p in segment["parameters"]] == ["image", "tta", "n_folds", "stability_check",
                                                                    "mode"]
    assert segment["parameters"][3]["parameter_default"] is app.STABILITY_CHECK_DEFAULT
    assert segment["parameters"][4]["parameter_default"] == "ensemble"  # a package without a soup
    assert [r["component"] for r in segment["returns"]] == ["File", "File", "Number", "Json"]
    adjust = endpoints["/adjust"]
    assert [p["parameter_name"] for p in adjust["parameters"]] == ["image", "tta", "n_folds", "ps_ends", "tangent_point",
                                                                   "label_map", "stability_check", "mode"]
    assert [r["component"] for r in adjust["returns"]] == ["File", "File", "Number", "Json"]
    clip = endpoints["/clip"]
    assert [p["parameter_name"] for p in clip["parameters"]] == ["clip", "fast"]
    assert [r["component"] for r in clip["returns"]] == ["File", "Json"]


def test_segment_returns_label_maps_aop_and_report(client, model, images):
    # Keyword arguments, as the README shows them.
    result = client.predict(image=handle_file(images[0]), tta=True, n_folds=3, api_name="/segment")
    assert Path(result[0]).name == f"{images[0].stem}_labels.png"
    assert_api_result_matches(result, predict_alone(model, images[0], 3, True))
    assert set(result[3]["timings_s"]) >= {"total"}


def test_eight_concurrent_api_requests_never_mix_adapters(client, model, images):
    # 3 images x different fold counts and TTA: a request that ran under another's adapter (or
    # got another's result) would differ from the same request run alone.
    requests = [(0, 3, True), (1, 1, False), (2, 2, True), (0, 1, False),
                (1, 3, True), (2, 1, True), (0, 2, False), (1, 2, True)]
    alone = [predict_alone(model, images[i], folds, tta) for i, folds, tta in requests]
    jobs = [client.submit(handle_file(images[i]), tta, folds, api_name="/segment") for i, folds, tta in requests]
    for job, expected in zip(jobs, alone):
        assert_api_result_matches(job.result(timeout=120), expected)


def test_eight_threads_calling_the_handler_never_mix_adapters(model, images):
    requests = [(0, 1, True), (1, 2, False), (2, 3, True), (0, 3, False),
                (1, 1, True), (2, 2, False), (0, 2, True), (2, 1, False)]
    alone = [predict_alone(model, images[i], folds, tta, stability_check=False) for i, folds, tta in requests]
    start = threading.Barrier(len(requests))

    def call(request):
        i, folds, tta = request
        start.wait()  # all eight enter the model together
        return app.run_segment(model, str(images[i]), tta, folds)[-1].prediction

    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(call, requests))
    for result, expected, (_, folds, _) in zip(results, alone, requests):
        assert result.folds == model.folds[:folds]
        np.testing.assert_array_equal(result.label_map, expected.label_map)
        np.testing.assert_array_equal(result.probabilities, expected.probabilities)
        np.testing.assert_array_equal(result.disagreement, expected.disagreement)
        assert result.fold_aop_deg == expected.fold_aop_deg


# ------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_inputs")
    (folder / "text.png").write_text("this is a text file, renamed")
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(folder / "tiny.png")
    header_only_png(folder / "huge.png", 12000, 12000)
    (folder / "notes.txt").write_text("not an image type at all")
    return folder


@pytest.mark.parametrize("name, message", [
    ("text.png", "text.png: cannot read the image file"),
    ("empty.png", "empty.png: file is empty"),
    ("tiny.png", "image is 1 x 1 pixels; the minimum is 8 x 8"),
    ("huge.png", "12000 x 12000 = 144,000,000 pixels; the limit is 40,000,000"),
    ("notes.txt", "Invalid file type"),
])
def test_bad_input_is_refused_clearly_and_the_app_keeps_serving(client, model, images, bad_files, name, message):
    with pytest.raises(AppError, match=message) as refused:
        client.predict(handle_file(bad_files / name), True, 1, api_name="/segment")
    assert "/tmp/" not in str(refused.value)  # the server's paths are not shown to users
    result = client.predict(handle_file(images[1]), False, 1, api_name="/segment")
    assert_api_result_matches(result, predict_alone(model, images[1], 1, False))


def test_the_preview_says_what_is_wrong_without_raising(bad_files):
    preview, status = app.describe_upload(str(bad_files / "huge.png"))
    assert preview is None and "the limit is 40,000,000 pixels" in status
    preview, status = app.describe_upload(str(bad_files / "text.png"))
    assert preview is None and "cannot read the image file" in status
    assert app.describe_upload(None) == (None, "")


def test_bad_options_are_refused(model, images):
    with pytest.raises(gr.Error, match="folds must be from 1 to 3"):
        app.run_segment(model, str(images[0]), True, 4)
    with pytest.raises(gr.Error, match="whole number"):
        app.run_segment(model, str(images[0]), True, "many")
    with pytest.raises(gr.Error, match="Upload an image"):
        app.run_segment(model, None, True, 1)


def test_uploads_over_50_mb_are_refused(server, client, model, images, tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    with open(big, "wb") as handle:
        handle.truncate(51 * 2**20)  # sparse: costs no disk
    # Gradio's own limit (launch(max_file_size="50mb")): the server answers 413 ...
    with open(big, "rb") as handle:
        response = httpx.post(f"{server}gradio_api/upload", files={"files": ("big.png", handle, "image/png")},
                              timeout=60)
    assert response.status_code == 413
    # ... and gradio_client, which reads the limit from the app, does not even send it.
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(big), True, 1, api_name="/segment")
    # The handler checks again (files that reach it by another way, a lower limit).
    monkeypatch.setattr(app, "MAX_UPLOAD_BYTES", 1000)
    with pytest.raises(gr.Error, match="the limit is 0 MB|the limit is"):
        app.run_segment(model, str(images[0]), True, 1)


@pytest.mark.parametrize("kind", ["uint16", "rgba"])
def test_16_bit_and_rgba_images_are_segmented_with_a_note(client, model, images, tmp_path, kind):
    gray = as_uint8(load_image(images[0]))
    path = tmp_path / f"{kind}.png"
    if kind == "uint16":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)  # full 16-bit range
        note = "uint16 pixels: scaled min-max"
    else:
        alpha = np.full_like(gray, 200)
        Image.fromarray(np.stack([gray, gray, gray, alpha], axis=-1), mode="RGBA").save(path)
        note = "alpha) channel was ignored"
    result = client.predict(handle_file(path), True, 2, api_name="/segment")
    assert_api_result_matches(result, predict_alone(model, path, 2, True))
    preview, status = app.describe_upload(str(path))
    assert preview.shape == gray.shape and note in status


# ------------------------------------------------------------------------------- the page's texts


def test_show_result_draws_and_describes_a_run(model, images):
    *_, analysis = app.run_segment(model, str(images[2]), True, 3)
    overlay, aop_text, heatmap, fold_table, timing, report_file, status, correction = app.show_result(analysis)
    prediction = analysis.prediction
    assert overlay.shape[1] == heatmap.shape[1] == 300 * 3  # 220 x 300 input, enlarged 3x to reach 512
    if prediction.aop.measured:
        assert f"{prediction.aop.angle_deg:.1f}\N{DEGREE SIGN}" in aop_text
        assert ("withheld" in aop_text) == (not prediction.trusted)
    else:
        assert "not measured" in aop_text and prediction.aop.reason[1:] in aop_text
    assert "not a medical device" in aop_text.lower() and "120" in aop_text
    assert all(fold in fold_table for fold in model.folds)
    assert timing.startswith("**Time:**") and "Made by 3 fold(s) (fold_0, fold_1, fold_2), flip TTA on" in timing
    assert json.loads(Path(report_file).read_text()) == json.loads(json.dumps(prediction.report()))
    assert "Done" in status and correction == ""


def test_fold_spread_and_unmeasured_aop_texts():
    prediction = types.SimpleNamespace(
        fold_aop_deg={"fold_0": 100.0, "fold_1": 110.0, "fold_2": None},
        aop=AoPMeasurement(None, "no pubic symphysis found"), view_aop_deg={}, quality=None, hsd=None,
        adjusted_by_user={})
    table = app.fold_markdown(prediction)
    assert "100.0\N{DEGREE SIGN} to 110.0\N{DEGREE SIGN}" in table and "SD 7.1\N{DEGREE SIGN}" in table
    assert "| fold_2 | not measured |" in table and "mirror image" not in table
    # With flip views: each fold's AoP on the frame and its mirror image, and their mean gap.
    prediction.view_aop_deg = {"fold_0": [98.0, 102.0], "fold_1": [105.0, 115.0], "fold_2": [None, None]}
    prediction.quality = types.SimpleNamespace(measures={"flip_aop_gap": 7.0})
    table = app.fold_markdown(prediction)
    assert "| fold_1 | 110.0\N{DEGREE SIGN} | 105.0\N{DEGREE SIGN} | 115.0\N{DEGREE SIGN} |" in table
    assert "| fold_2 | not measured | - | - |" in table
    assert "7.0\N{DEGREE SIGN} apart on average" in table
    text = app.aop_markdown(prediction)
    assert "not measured\nNo pubic symphysis found." in text


# ------------------------------------------------------------------------------- startup


def test_model_source_is_argument_then_env_then_embedded(model, monkeypatch):
    asked = []

    def from_pretrained(source=None, backend="torch"):
        asked.append((source, backend))
        return model

    monkeypatch.setattr(app.PSFHModel, "from_pretrained", staticmethod(from_pretrained))
    monkeypatch.delenv("PSFH_MODEL", raising=False)
    monkeypatch.delenv("PSFH_BACKEND", raising=False)
    assert isinstance(app.create_app(), gr.Blocks)
    monkeypatch.setenv("PSFH_MODEL", "org/psfh-model")
    app.create_app()
    app.create_app("some/folder")
    # the backend: argument, then $PSFH_BACKEND, then torch
    monkeypatch.setenv("PSFH_BACKEND", "openvino")
    app.create_app("some/folder")
    app.create_app("some/folder", backend="onnxruntime")
    assert asked == [(None, "torch"), ("org/psfh-model", "torch"), ("some/folder", "torch"),
                     ("some/folder", "openvino"), ("some/folder", "onnxruntime")]


def test_main_serves_on_the_spaces_address_and_honours_gradio_env(monkeypatch):
    launched = []
    demo = types.SimpleNamespace(launch=lambda **kwargs: launched.append(kwargs))
    monkeypatch.setattr(app, "create_app", lambda: demo)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    app.main()
    monkeypatch.setenv("GRADIO_SERVER_NAME", "127.0.0.1")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    app.main()
    assert [(k["server_name"], k["server_port"]) for k in launched] == [("0.0.0.0", 7860), ("127.0.0.1", 7999)]
    assert all(k["max_file_size"] == "50mb" for k in launched)


# ------------------------------------------------------------------------------- correction


def test_the_api_corrects_a_structure_from_a_box(client, model, images):
    result = client.predict(image=handle_file(images[0]), tta=False, n_folds=2, ps_box=[20, 30, 120, 90], fh_box=None,
                            api_name="/correct")
    expected = model.predict(images[0], folds=model.folds[:2], tta=False, boxes={"ps": (20, 30, 120, 90)})
    assert_api_result_matches(result, expected)
    assert result[3]["corrected_by_user"] == {"pubic_symphysis": [20.0, 30.0, 120.0, 90.0]}
    with pytest.raises(AppError, match="ps_box and/or fh_box"):
        client.predict(image=handle_file(images[0]), tta=False, n_folds=1, ps_box=None, fh_box=None,
                       api_name="/correct")
    with pytest.raises(AppError, match="x0 < x1"):
        client.predict(image=handle_file(images[0]), tta=False, n_folds=1, ps_box=[50, 0, 10, 20], fh_box=None,
                       api_name="/correct")


def test_two_clicks_correct_undo_and_reset_go_back(model, images):
    *_, analysis = app.run_segment(model, str(images[0]), False, 2)
    automatic = analysis.prediction
    factor = 512 // 256  # the 256 x 256 frame is shown at twice its size
    analysis, status = app.correct_click(model, analysis, "Fetal head (FH)", (40 * factor, 60 * factor))
    assert "First corner at (40, 60)" in status and analysis.pending is not None
    shown = app.show_correction(analysis, status)
    assert shown[1].shape[1] == 512 and shown[-1] == status  # the first corner is drawn, nothing decoded yet
    analysis, status = app.correct_click(model, analysis, "Fetal head (FH)", (200 * factor, 180 * factor))
    assert analysis.boxes == {"fh": (40.0 - 0.25, 60.0 - 0.25, 200.0 - 0.25, 180.0 - 0.25)}
    assert analysis.prediction.corrected == {"fetal_head": list(analysis.boxes["fh"])}
    assert status.startswith("Corrected: **fetal head**")
    expected = model.decode(analysis.embeddings, boxes=analysis.boxes)
    np.testing.assert_array_equal(analysis.prediction.label_map, expected.label_map)

    state, overlay, aop, aop_text, label_png, label_mha, report, report_file, _ = app.show_correction(analysis, status)
    assert report["corrected_by_user"] == {"fetal_head": [39.8, 59.8, 199.8, 179.8]}
    assert Image.open(label_png).text["psfh_corrected_by_user"] == "fetal_head"
    np.testing.assert_array_equal(load_label_map(label_mha), analysis.prediction.label_map)
    assert json.loads(Path(report_file).read_text()) == report

    analysis, status = app.correct_click(model, analysis, "Pubic symphysis (PS)", (10, 10))
    analysis, status = app.correct_click(model, analysis, "Pubic symphysis (PS)", (100, 60))
    assert set(analysis.boxes) == {"fh", "ps"}
    analysis, status = app.undo_correction(model, analysis)
    assert set(analysis.boxes) == {"fh"}
    analysis, status = app.undo_correction(model, analysis, reset=True)
    assert analysis.boxes == {} and status == "The model's own result."
    np.testing.assert_array_equal(analysis.prediction.label_map, automatic.label_map)
    assert analysis.prediction.corrected == {}


def test_clicks_outside_the_image_or_before_a_run_are_explained(model, images):
    *_, analysis = app.run_segment(model, str(images[0]), False, 1)
    analysis, status = app.correct_click(model, analysis, "Fetal head (FH)", (5000, 10))
    assert "inside the image" in status and analysis.pending is None
    app.correct_click(model, analysis, "Fetal head (FH)", (100, 100))
    analysis, status = app.correct_click(model, analysis, "Fetal head (FH)", (101, 101))
    assert "too small" in status and analysis.boxes == {}
    with pytest.raises(gr.Error, match="Run the model first"):
        app.correct_click(model, None, "Fetal head (FH)", (1, 1))


def test_the_embedded_package_starts(monkeypatch, images, embedded):
    """The default app (no PSFH_MODEL) starts offline; until its folds are trained it says so."""
    monkeypatch.delenv("PSFH_MODEL", raising=False)
    assert isinstance(app.build_demo(embedded), gr.Blocks)
    if embedded.folds:
        *_, analysis = app.run_segment(embedded, str(images[0]), False, 1)
        assert analysis.prediction.label_map.shape == (256, 256)
    else:
        with pytest.raises(gr.Error, match="base model only"):
            app.run_segment(embedded, str(images[0]), False, 1)


def test_the_stability_check_joins_the_result_and_stays_after_reset(embedded, images):
    *_, report, analysis = app.run_segment(embedded, str(images[0]), False, 1, stability_check=True)
    gap = report["quality"]["measures"]["stability_gap"]
    assert gap >= 0 and "stability_check" in analysis.prediction.timings
    assert ("the AoP is fragile" in " ".join(report["quality"]["reasons"])) == (gap > quality.MAX_STABILITY_GAP)
    # A box correction is the user's outline: the model's stability no longer describes it ...
    analysis.boxes = {"ps": (60.0, 40.0, 130.0, 90.0)}
    analysis, _ = app.apply_corrections(embedded, analysis)
    assert "stability_gap" not in analysis.prediction.quality.measures
    # ... and Reset comes back to the checked automatic result, with no new pass.
    analysis, _ = app.undo_correction(embedded, analysis, reset=True)
    assert analysis.prediction.quality.measures["stability_gap"] == pytest.approx(gap, abs=1e-4)
    *_, plain, _ = app.run_segment(embedded, str(images[0]), False, 1)
    assert "stability_gap" not in plain["quality"]["measures"]


# ------------------------------------------------------------------------------- DICOM and the HSD


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory):
    """Test DICOMs (and a video) written from the example frames: a 3-frame cine, a single frame
    with Pixel Spacing, a CT slice and a CT cine (not ultrasound), and broken ones."""
    import pydicom

    folder = tmp_path_factory.mktemp("app_dicoms")
    files = {
        "cine": fx.write_cine(folder / "cine.dcm", count=3),
        "single": fx.write_single_frame(folder / "single.dcm"),
        "ct": fx.write_ct(folder / "ct.dcm"),
        "no_pixels": fx.write_no_pixels(folder / "no_pixels.dcm"),
        "truncated": fx.write_truncated(folder / "truncated.dcm"),
        "video": fx.write_video(folder / "clip.mp4", fx.cine_frames(3)),
    }
    ct_cine = pydicom.dcmread(files["cine"])
    ct_cine.Modality = "CT"
    ct_cine.save_as(folder / "ct_cine.dcm")
    files["ct_cine"] = folder / "ct_cine.dcm"
    (folder / "text.dcm").write_text("a text file, renamed")
    files["text"] = folder / "text.dcm"
    Image.fromarray(fx.example_frame(0)).save(folder / "frame.png")
    files["png"] = folder / "frame.png"
    return files


def with_hsd(prediction, distance_mm, trusted=True):
    """The prediction with a measured HSD (a 20-pixel line), trusted or flagged."""
    quality = None if trusted else types.SimpleNamespace(trusted=False, reasons=["a made-up reason"], measures={})
    hsd = HSDMeasurement(20.0, distance_mm, apex=(100.0, 120.0), skull_point=(120.0, 120.0))
    return dataclasses.replace(prediction, hsd=hsd, quality=quality)


def test_the_aop_text_gives_the_hsd_in_mm_withheld_or_why_not(model, images):
    prediction = app.run_segment(model, str(images[0]), False, 1)[-1].prediction
    assert "HSD 23.4 mm" in app.aop_markdown(with_hsd(prediction, 23.43))
    flagged = app.aop_markdown(with_hsd(prediction, 23.43, trusted=False))
    assert "HSD:** withheld with the AoP" in flagged and "23.4 mm" in flagged and "HSD 23.4 mm" not in flagged
    # A trusted AoP comes with what the check cannot see; a flagged one with its reasons instead.
    assert app.PASSED_CHECK_CAVEAT in app.aop_markdown(with_hsd(prediction, 23.43))
    assert app.PASSED_CHECK_CAVEAT not in flagged and "a made-up reason" in flagged.lower()
    no_spacing = app.aop_markdown(with_hsd(prediction, None))
    assert "needs a pixel spacing" in no_spacing and "DICOM with Pixel Spacing" in no_spacing
    unmeasured = dataclasses.replace(prediction, hsd=HSDMeasurement(None, reason="no fetal head found"))
    assert "HSD):** not measured (no fetal head found)" in app.aop_markdown(unmeasured)


def test_the_overlay_draws_the_hsd_line(model, images):
    *_, analysis = app.run_segment(model, str(images[0]), False, 1)
    analysis.prediction = dataclasses.replace(analysis.prediction, hsd=HSDMeasurement(None, reason="no head"))
    without = app.overlay_picture(analysis)
    analysis.prediction = with_hsd(analysis.prediction, 4.6)
    drawn = app.overlay_picture(analysis)
    assert not np.all(without == HSD_COLOUR, axis=-1).any()
    line = np.all(drawn[:512] == HSD_COLOUR, axis=-1)  # the picture above the legend: 2x the frame
    rows, cols = np.nonzero(line)
    # From (100, 120) to (120, 120) in the frame: near y = 240 and from x = 200 on in the picture
    # (the end dots and the "HSD 4.6 mm" label past the skull point widen it a little).
    assert 240 - 12 <= rows.min() and rows.max() <= 240 + 12 and cols.min() >= 200 - 8
    assert line[238:244, 220].any() and line[238:244, 230].any()  # the line itself, between the dots


def test_a_dicom_with_pixel_spacing_gives_the_hsd_in_mm(embedded, dicoms):
    label_png, label_mha, aop, report, analysis = app.run_segment(embedded, str(dicoms["single"]), False, 1)
    prediction = analysis.prediction
    assert prediction.spacing_mm == fx.PIXEL_SPACING_MM and prediction.trusted
    assert prediction.hsd.distance_mm is not None
    assert f"HSD {prediction.hsd.distance_mm:.1f} mm" in app.show_result(analysis)[1]
    assert report["hsd_mm"] == pytest.approx(prediction.hsd.distance_mm)


def test_a_dicom_that_is_not_ultrasound_runs_with_a_note(model, dicoms):
    note = "ct.dcm: modality 'CT', not ultrasound (US)"
    preview, status = app.describe_upload(str(dicoms["ct"]))
    assert preview.shape == (256, 256) and note in status
    *_, analysis = app.run_segment(model, str(dicoms["ct"]), False, 1)
    assert analysis.prediction.label_map.shape == (256, 256)
    status = app.show_result(analysis)[6]
    assert "Done" in status and note in status and "Reading it anyway" in status
    assert str(dicoms["ct"].parent) not in status  # the server's path is cut to the file name
    # An ultrasound DICOM gets no such note.
    assert "not ultrasound" not in app.describe_upload(str(dicoms["single"]))[1]


def test_notes_of_concurrent_readers_reach_their_own_request(dicoms):
    """Readers at once each get their own file's note (made from the file's header, not by
    catching process-wide warnings, which other requests' threads would disturb)."""
    paths = [dicoms["ct"], dicoms["single"]] * 4
    start = threading.Barrier(len(paths))

    def describe(path):
        start.wait()
        return app.describe_upload(str(path))[1]

    with ThreadPoolExecutor(len(paths)) as pool:
        statuses = list(pool.map(describe, paths))
    for path, status in zip(paths, statuses):
        assert status.count("not ultrasound") == (1 if path == dicoms["ct"] else 0)


@pytest.mark.parametrize("name, message", [
    ("no_pixels", "no_pixels.dcm: the DICOM file has no pixel data"),
    ("truncated", "truncated.dcm: the DICOM file is truncated"),
    ("text", "text.dcm: not a DICOM file"),
    ("cine", "cine.dcm: a cine clip (a multi-frame DICOM or a video): analyse it in the Cine clip tab"),
])
def test_a_broken_dicom_or_a_clip_in_the_single_frame_tab_is_explained(model, dicoms, name, message):
    preview, status = app.describe_upload(str(dicoms[name]))
    assert preview is None and status.startswith(f"\N{WARNING SIGN} {message}")
    with pytest.raises(gr.Error) as refused:
        app.run_segment(model, str(dicoms[name]), False, 1)
    assert refused.value.message.startswith(message)
    assert str(dicoms[name].parent) not in refused.value.message


# ------------------------------------------------------------------------------- cine clips


class ProgressRecorder:
    """A progress callback that, like gr.Progress, has a length of 0 until something is tracked
    (so `progress or default` would throw it away); it keeps its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, progress, desc=None, **kwargs):
        self.calls.append((progress, desc))

    def __len__(self):
        return 0


def test_the_handlers_tell_the_progress_bar(model, images):
    progress = ProgressRecorder()
    app.run_segment(model, str(images[0]), False, 1, progress)
    assert [desc for _, desc in progress.calls][:2] == ["Reading the image", "Segmenting with 1 fold(s) (fold_0)"]


def test_a_clip_is_run_summarised_and_scrubbed(model, dicoms):
    progress = ProgressRecorder()
    frames_csv, summary, view = app.run_clip(model, str(dicoms["cine"]), True, progress)
    # The fast mode: one fold, no flip; the progress bar told after every frame.
    assert view.result.folds == model.folds[:1] and view.result.tta is False and view.fast
    assert progress.calls == [(0.0, "Reading the clip")] + [
        ((done, 3), "Segmenting the frames") for done in (1, 2, 3)]
    with open(frames_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["frame"] for row in rows] == ["0", "1", "2"] and tuple(rows[0]) == FRAME_COLUMNS
    assert [float(row["time_s"]) for row in rows] == pytest.approx([0.0, 0.04, 0.08])
    folder = Path(frames_csv).parent
    assert json.loads((folder / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["frames"] == 3 and summary["pixel_spacing_mm"] == list(fx.PIXEL_SPACING_MM)
    with zipfile.ZipFile(folder / "label_maps.zip") as archive:
        assert sorted(archive.namelist()) == ["cine_f0000.png", "cine_f0001.png", "cine_f0002.png"]
    # Each frame's label map is the single-image prediction's.
    for index in range(3):
        alone = model.predict(fx.cine_frames(3)[index], folds=model.folds[:1], tta=False)
        np.testing.assert_array_equal(view.result.label_maps[index], alone.label_map)

    curve, text, slider, overlay, frame_text, files, status = app.show_clip(view)
    assert curve.count("<svg") == 1 and "AoP (deg)" in curve and "time (s)" in curve
    flagged = summary["frames_flagged"]
    assert curve.count("<title>frame") == len(flagged)  # the tiny model's frames are flagged, and marked
    assert f"{len(flagged)} frame(s) left out of the curve" in text
    assert "s per frame" in text and "fast mode" in text and "(fold_0)" in text
    assert slider.maximum == 2 and slider.interactive and status == "Done: **3 frames**."
    assert overlay.shape[1] == 512 and frame_text.startswith(f"**Frame {slider.value}**")
    assert [Path(file).name for file in files] == ["summary.json", "aop_curve.svg", "label_maps.zip"]
    assert Path(files[1]).read_text() in curve

    # Scrubbing draws the kept frames: each its own picture and numbers; no model pass.
    pictures = []
    for index in range(3):
        picture, words = app.frame_view(view, index)
        pictures.append(picture)
        assert words.startswith(f"**Frame {index}** of 0\N{EN DASH}2 ({0.04 * index:.2f} s)")
    assert not np.array_equal(pictures[0], pictures[1]) and not np.array_equal(pictures[1], pictures[2])
    np.testing.assert_array_equal(app.frame_view(view, 7)[0], pictures[2])  # clamped to the last frame
    assert app.frame_view(None, 1) == (None, "")


def test_the_full_mode_uses_every_fold_and_the_flip(model, dicoms):
    _, summary, view = app.run_clip(model, str(dicoms["cine"]), False)
    assert summary["folds"] == model.folds and summary["tta"] == model.default_tta
    assert "the fast mode runs one adapter instead of one per fold" in app.clip_markdown(view)


def test_a_clip_with_trusted_frames_gives_its_maximum_and_hsd(embedded, dicoms):
    _, summary, view = app.run_clip(embedded, str(dicoms["cine"]), True)
    rows = view.result.rows
    curve = [row for row in rows if row["in_curve"]]
    assert curve, "the embedded package's AoPs on the example frames pass the check"
    top = max(curve, key=lambda row: row["aop_deg"])
    assert summary["max_aop_frame"] == top["frame"] and summary["max_aop_deg"] == top["aop_deg"]
    curve_html, text, slider, overlay, frame_text, *_ = app.show_clip(view)
    assert (f"Maximum AoP: {top['aop_deg']:.1f}\N{DEGREE SIGN} at frame {top['frame']} "
            f"({top['time_s']:.2f} s)") in text
    assert f"HSD at that frame: {top['hsd_mm']:.1f} mm" in text
    assert "<polyline" in curve_html and f"max {top['aop_deg']:.1f}" in curve_html
    assert slider.value == top["frame"] and "the clip's maximum" in frame_text
    assert f"AoP {top['aop_deg']:.1f}\N{DEGREE SIGN}. HSD {top['hsd_mm']:.1f} mm." in frame_text
    assert np.all(overlay[:512] == HSD_COLOUR, axis=-1).any()  # the HSD line is drawn


def test_a_video_clip_runs_without_a_spacing(model, dicoms):
    _, summary, view = app.run_clip(model, str(dicoms["video"]), True)
    assert summary["frames"] == 3 and summary["pixel_spacing_mm"] is None
    assert summary["source"].startswith("video:")
    assert [row["time_s"] for row in view.result.rows] == pytest.approx([0.0, 0.04, 0.08])
    assert "a video; its frames are read when you press" in app.describe_clip(str(dicoms["video"]))


def test_a_clip_that_is_not_ultrasound_runs_with_a_note(model, dicoms):
    _, summary, view = app.run_clip(model, str(dicoms["ct_cine"]), True)
    assert summary["frames"] == 3 and "CT" in summary["source"]
    text = app.clip_markdown(view)
    assert "ct_cine.dcm: modality 'CT', not ultrasound (US)" in text and str(dicoms["ct_cine"].parent) not in text


def test_the_clip_summary_lists_flagged_frames_and_the_maximum():
    """A hand-made result: two trusted frames, one flagged, one unmeasured; no spacing."""
    def row(frame, aop, measured, check="ok"):
        return {"frame": frame, "name": f"c_f{frame:04d}", "time_s": frame * 0.5, "aop_deg": aop,
                "aop_deg_measured": measured, "in_curve": aop is not None, "check": check, "hsd_mm": None}

    rows = [row(0, 110.0, 110.0), row(1, None, 150.0, "check this result: a made-up reason"),
            row(2, 125.5, 125.5), row(3, None, None)]
    result = ClipResult(rows=rows, label_maps=[np.zeros((16, 16), np.uint8)] * 4, source="test", spacing_mm=None,
                        folds=["fold_0"], tta=False, seconds=2.0)
    text = app.clip_markdown(app.ClipView([np.zeros((16, 16), np.uint8)] * 4, result, fast=True))
    assert "Maximum AoP: 125.5\N{DEGREE SIGN} at frame 2 (1.00 s)" in text
    assert "needs a pixel spacing" in text and "2 in the AoP curve" in text
    assert "- frame 1 (0.50 s): check this result: a made-up reason" in text
    assert "- frame 3 (1.50 s): the AoP could not be measured" in text
    assert "**0.50 s per frame**" in text
    rows[0]["in_curve"] = rows[2]["in_curve"] = False
    assert "Maximum AoP: none" in app.clip_markdown(app.ClipView([np.zeros((16, 16), np.uint8)] * 4, result))


@pytest.mark.parametrize("name, message", [
    ("no_pixels", "no_pixels.dcm: the DICOM file has no pixel data"),
    ("truncated", "truncated.dcm: the DICOM file is truncated"),
    ("text", "text.dcm: not a DICOM file"),
    ("single", "single.dcm: a single-frame DICOM (one image, not a clip): use the Single frame tab"),
    ("png", "frame.png: not a clip: upload a multi-frame DICOM or a video"),
])
def test_what_is_no_clip_is_refused_by_name(model, dicoms, name, message):
    assert app.describe_clip(str(dicoms[name])).startswith(f"\N{WARNING SIGN} {message}")
    with pytest.raises(gr.Error) as refused:
        app.run_clip(model, str(dicoms[name]), True)
    assert refused.value.message.startswith(message)
    assert str(dicoms[name].parent) not in refused.value.message
    if name == "png":
        assert "A folder of frames cannot be uploaded" in refused.value.message


def test_a_missing_clip_is_asked_for(model):
    with pytest.raises(gr.Error, match="Upload a clip first"):
        app.run_clip(model, None, True)
    with pytest.raises(gr.Error, match="No clip result"):
        app.show_clip(None)
    assert app.describe_clip(None) == ""


def test_the_api_reports_progress_frame_by_frame(client, model, dicoms, monkeypatch):
    predict = model.predict

    def slow_predict(*args, **kwargs):  # time for the client to see each frame's progress
        time.sleep(0.4)
        return predict(*args, **kwargs)

    monkeypatch.setattr(model, "predict", slow_predict)  # the server runs in this process, on this model
    job = client.submit(handle_file(dicoms["cine"]), True, api_name="/clip")
    seen = set()
    while not job.done():
        for unit in job.status().progress_data or []:
            seen.add((unit.desc, unit.index, unit.length))
        time.sleep(0.05)
    assert job.result(timeout=60)[1]["frames"] == 3
    assert {("Segmenting the frames", done, 3) for done in (1, 2)} <= seen


def test_the_api_analyses_a_clip_and_refuses_a_broken_one(client, model, dicoms):
    frames_csv, summary = client.predict(clip=handle_file(dicoms["cine"]), fast=True, api_name="/clip")
    with open(frames_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and summary["frames"] == 3 and summary["folds"] == model.folds[:1]
    expected = model.predict(fx.cine_frames(3)[1], folds=model.folds[:1], tta=False)
    assert rows[1]["check"] == ("ok" if expected.trusted else
                                "check this result: " + "; ".join(expected.quality.reasons))
    with pytest.raises(AppError, match="no_pixels.dcm: the DICOM file has no pixel data") as refused:
        client.predict(clip=handle_file(dicoms["no_pixels"]), fast=True, api_name="/clip")
    assert "/tmp/" not in str(refused.value)
    with pytest.raises(AppError, match="use the Single frame tab"):
        client.predict(clip=handle_file(dicoms["single"]), fast=True, api_name="/clip")
    # The app keeps serving, both endpoints.
    assert client.predict(clip=handle_file(dicoms["cine"]), fast=True, api_name="/clip")[1]["frames"] == 3
    result = client.predict(handle_file(dicoms["single"]), False, 1, api_name="/segment")
    assert result[3]["pixel_spacing_mm"] == list(fx.PIXEL_SPACING_MM)
