"""app.py: the Gradio demo's API ("/segment"), its handlers, concurrency and bad input.

The app is launched once on a free localhost port around a tiny-random package (garbage but
deterministic predictions) and called with gradio_client, as a user of the API would.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import types
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from psfh.aop import AoPMeasurement
from psfh.io import as_uint8, load_image, load_label_map
from psfh.model import PSFHModel

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "image_mha"


# ------------------------------------------------------------------------------- fixtures


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


pytestmark = pytest.mark.usefixtures("app_outputs")


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def server(model):
    """The app on localhost, 4 requests at a time so that concurrent requests really overlap."""
    demo = app.build_demo(model, concurrency_limit=4)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **app.launch_options())
    yield f"http://127.0.0.1:{port}/"
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


def predict_alone(model, path, folds, tta):
    return model.predict(path, folds=model.folds[:folds], tta=tta)


def assert_api_result_matches(result, expected):
    """An API result (label PNG, label MHA, AoP, report) equals a Prediction made alone."""
    label_png, label_mha, aop, report = result
    np.testing.assert_array_equal(load_label_map(label_png), expected.label_map)
    np.testing.assert_array_equal(load_label_map(label_mha), expected.label_map)
    angle = expected.reported_aop_deg
    assert aop == (None if angle is None else round(angle, 1))
    wanted = expected.report()
    for key in ("name", "image_size", "aop", "aop_reported_deg", "quality", "fold_aop_deg", "view_aop_deg",
                "area_pixels", "mean_disagreement", "folds", "tta"):
        assert report[key] == wanted[key], key


# ------------------------------------------------------------------------------- the API


def test_api_has_the_segment_endpoint(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert list(endpoints) == ["/segment", "/correct"]  # the page's other events are private
    segment = endpoints["/segment"]
    assert [p["parameter_name"] for p in segment["parameters"]] == ["image", "tta", "n_folds"]
    assert [r["component"] for r in segment["returns"]] == ["File", "File", "Number", "Json"]


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
    alone = [predict_alone(model, images[i], folds, tta) for i, folds, tta in requests]
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
        assert result.fold_aop == expected.fold_aop


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
    assert timing.startswith("**Time:**") and "3 fold(s), flip TTA on" in timing
    assert json.loads(Path(report_file).read_text()) == json.loads(json.dumps(prediction.report()))
    assert "Done" in status and correction == ""


def test_fold_spread_and_unmeasured_aop_texts():
    prediction = types.SimpleNamespace(
        fold_aop={"fold_0": AoPMeasurement(100.0), "fold_1": AoPMeasurement(110.0),
                  "fold_2": AoPMeasurement(None, "no fetal head found")},
        aop=AoPMeasurement(None, "no pubic symphysis found"), view_aop={}, quality=None)
    table = app.fold_markdown(prediction)
    assert "100.0\N{DEGREE SIGN} to 110.0\N{DEGREE SIGN}" in table and "SD 7.1\N{DEGREE SIGN}" in table
    assert "not measured (no fetal head found)" in table and "mirror image" not in table
    # With flip views: each fold's AoP on the frame and its mirror image, and their mean gap.
    prediction.view_aop = {"fold_0": [98.0, 102.0], "fold_1": [105.0, 115.0], "fold_2": [None, None]}
    prediction.quality = types.SimpleNamespace(measures={"flip_aop_gap": 7.0})
    table = app.fold_markdown(prediction)
    assert "| fold_1 | 110.0\N{DEGREE SIGN} | 105.0\N{DEGREE SIGN} | 115.0\N{DEGREE SIGN} |" in table
    assert "| fold_2 | not measured (no fetal head found) | - | - |" in table
    assert "7.0\N{DEGREE SIGN} apart on average" in table
    text = app.aop_markdown(prediction)
    assert "not measured\nNo pubic symphysis found." in text


# ------------------------------------------------------------------------------- startup


def test_model_source_is_argument_then_env_then_embedded(model, monkeypatch):
    asked = []

    def from_pretrained(source=None):
        asked.append(source)
        return model

    monkeypatch.setattr(app.PSFHModel, "from_pretrained", staticmethod(from_pretrained))
    monkeypatch.delenv("PSFH_MODEL", raising=False)
    assert isinstance(app.create_app(), gr.Blocks)
    monkeypatch.setenv("PSFH_MODEL", "org/psfh-model")
    app.create_app()
    app.create_app("some/folder")
    assert asked == [None, "org/psfh-model", "some/folder"]


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


def test_the_embedded_package_starts(monkeypatch, images):
    """The default app (no PSFH_MODEL) starts offline; until its folds are trained it says so."""
    monkeypatch.delenv("PSFH_MODEL", raising=False)
    embedded = PSFHModel.from_pretrained(device="cpu")
    assert isinstance(app.build_demo(embedded), gr.Blocks)
    if embedded.folds:
        *_, analysis = app.run_segment(embedded, str(images[0]), False, 1)
        assert analysis.prediction.label_map.shape == (256, 256)
    else:
        with pytest.raises(gr.Error, match="base model only"):
            app.run_segment(embedded, str(images[0]), False, 1)
