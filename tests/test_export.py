"""ONNX export (psfh.model.onnx_export) and the ONNX backends (psfh.model.onnx_backends, PSFHModel(backend=...)).

The tiny package's ViT encoder is adapted with no shared prefix (one encoder file per fold);
the embedded LiteMedSAM package shares its first TinyViT stage (encoder_shared.onnx) and adapts
the rest: both layouts are exported here and checked against the torch model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from psfh.core.errors import PSFHInputError
from psfh.model.onnx_backends import OnnxEnsemble, read_manifest

# Every test here exports (ONNX tracing: tens of seconds each on 2 cores, minutes for the real
# base): the full suite's, not the quick tier's.
pytestmark = pytest.mark.slow
from psfh.model.onnx_export import PROBABILITY_TOLERANCE, export_onnx
from psfh.model.psfh_model import PSFHModel

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TWO_FOLDS = ["fold_0", "fold_1"]


@pytest.fixture(scope="module")
def tiny_export(tiny_package, tmp_path_factory):
    """Two folds of the tiny package exported once for this module."""
    torch.set_num_threads(1)
    model = PSFHModel.from_pretrained(tiny_package, device="cpu", folds=TWO_FOLDS)
    folder = tmp_path_factory.mktemp("tiny_onnx")
    manifest = export_onnx(model, folder, progress=False)
    return folder, manifest


def test_the_export_writes_a_manifest_and_one_encoder_and_decoder_per_fold(tiny_export):
    folder, manifest = tiny_export
    assert read_manifest(folder) == manifest
    assert manifest["folds"] == TWO_FOLDS and manifest["encoder_scope"] == "all"
    assert sorted(manifest["files"]) == ["decoder_fold_0", "decoder_fold_1", "encoder_fold_0", "encoder_fold_1"]
    for entry in manifest["files"].values():
        assert (folder / entry["file"]).stat().st_size > 10_000 and len(entry["sha256"]) == 64
    check = manifest["check"]
    assert check["passed"] and check["max_probability_difference"] <= PROBABILITY_TOLERANCE
    assert check["label_map_differences_not_ties"] == 0 and check["label_map_agreement"] >= 0.999
    # the merged folds really differ (each file got its own fold's weights)
    assert manifest["files"]["encoder_fold_0"]["sha256"] != manifest["files"]["encoder_fold_1"]["sha256"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_an_onnx_backend_predicts_what_torch_predicts(tiny_package, tiny_export, example_images, backend,
                                                      one_torch_thread):
    folder, _ = tiny_export
    reference = PSFHModel.from_pretrained(tiny_package, device="cpu", folds=TWO_FOLDS)
    model = PSFHModel.from_pretrained(tiny_package, device="cpu", folds=TWO_FOLDS, backend=backend,
                                      export_dir=folder)
    assert model.backend == backend and reference.backend == "torch"
    assert model.predict(example_images[0]).report()["backend"] == backend
    for image in example_images[:2]:
        expected, got = reference.predict(image), model.predict(image)
        # the bound for an exact backend (the random tiny model has float ties)
        assert (expected.label_map == got.label_map).mean() >= 0.999
        assert np.abs(expected.probabilities - got.probabilities).max() <= PROBABILITY_TOLERANCE
        if expected.aop.angle_deg is not None:
            assert abs(expected.aop.angle_deg - got.aop.angle_deg) <= 0.1
        assert list(expected.fold_aop_deg.values()) == pytest.approx(list(got.fold_aop_deg.values()), abs=0.1)
    # embed once, decode many: box prompts still run (the base's torch decoder)
    embeddings = model.embed(example_images[0], for_prompts=True)
    corrected = model.decode(embeddings, boxes={"fh": (40, 60, 200, 220)})
    assert corrected.corrected == {"fetal_head": [40, 60, 200, 220]}


def test_from_pretrained_makes_the_export_once_and_reuses_it(tiny_package, tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setenv("PSFH_CACHE", str(tmp_path / "cache"))
    model = PSFHModel.from_pretrained(tiny_package, folds=["fold_2"], backend="onnxruntime")
    assert model.device.type == "cpu"  # the ONNX backends load on the CPU by default, GPU or not
    exports = list((tmp_path / "cache" / "onnx").iterdir())
    assert len(exports) == 1 and read_manifest(exports[0])["folds"] == ["fold_2"]
    assert model.export_folder == exports[0]

    import psfh.model.onnx_export

    def no_second_export(*args, **kwargs):
        raise AssertionError("the cached export should have been reused")

    monkeypatch.setattr(psfh.model.onnx_export, "export_onnx", no_second_export)
    again = PSFHModel.from_pretrained(tiny_package, device="cpu", folds=["fold_2"], backend="openvino")
    assert again.export_folder == exports[0] and again.backend == "openvino"


def test_bad_backend_requests_get_clear_errors(tiny_package, tiny_export, tmp_path, one_torch_thread):
    folder, _ = tiny_export
    with pytest.raises(PSFHInputError, match="backend must be one of"):
        PSFHModel.from_pretrained(tiny_package, device="cpu", backend="tensorrt")
    with pytest.raises(PSFHInputError, match="no manifest.json"):
        OnnxEnsemble(tmp_path, "onnxruntime")
    # an export of two folds cannot serve all three
    with pytest.raises(PSFHInputError, match="the export holds folds"):
        PSFHModel.from_pretrained(tiny_package, device="cpu", backend="onnxruntime", export_dir=folder)
    model = PSFHModel.from_pretrained(tiny_package, device="cpu", folds=TWO_FOLDS, backend="onnxruntime",
                                      export_dir=folder)
    with pytest.raises(PSFHInputError, match="fp32 only"):
        model.predict(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64), precision="bf16")
    cut = tmp_path / "cut"
    shutil.copytree(folder, cut)
    (cut / "decoder_fold_1.onnx").write_bytes((folder / "decoder_fold_1.onnx").read_bytes()[:1000])
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(PSFHInputError, match="decoder_fold_1.onnx: .* cannot load it"):
            OnnxEnsemble(cut, backend)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(PSFHInputError, match="unreadable manifest"):
        read_manifest(broken)


@pytest.mark.slow  # exports in a subprocess (~1 min on 2 cores); the tests above export in process
def test_the_export_command_line_writes_and_checks_an_export(tiny_package, tmp_path):
    out = tmp_path / "onnx"
    run = subprocess.run([sys.executable, "-m", "psfh.export", "--model", str(tiny_package), "--out", str(out),
                          "--folds", "fold_1"], capture_output=True, text=True, cwd=ROOT,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["check"]["passed"] and report["files"] == ["decoder_fold_1.onnx", "encoder_fold_1.onnx"]
    assert read_manifest(out)["folds"] == ["fold_1"]
    bad = subprocess.run([sys.executable, "-m", "psfh.export", "--model", str(tiny_package), "--out", str(out),
                          "--folds", "fold_9"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "unknown folds" in bad.stderr
    # bad arguments are refused before minutes of export, and nothing the user gave is replaced
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("mine")
    for extra, message in ((["--out", str(not_a_folder)], "is not a folder"),
                           (["--out", str(tmp_path / "new"), "--check-images", str(tmp_path / "missing.png")],
                            "missing.png")):
        refused = subprocess.run([sys.executable, "-m", "psfh.export", "--model", str(tiny_package), *extra],
                                 capture_output=True, text=True, cwd=ROOT)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr[-1000:]
    assert not_a_folder.read_text() == "mine" and not (tmp_path / "new" / "manifest.json").exists()


@pytest.mark.slow  # exports the real base (minutes on 2 cores)
def test_the_shipped_package_exports_exactly(embedded, tmp_path, example_images):
    """The real LiteMedSAM package (shared TinyViT stage 0, each fold's stages 1-3 and decoder): one
    fold exported and run by onnxruntime gives the torch label maps and probabilities within 1e-3."""
    torch.set_num_threads(2)
    model = embedded  # every fold loaded; fold_0 alone is exported and compared
    manifest = export_onnx(model, tmp_path, ["fold_0"], progress=False, check_images=example_images[:2])
    assert sorted(manifest["files"]) == ["decoder_fold_0", "encoder_fold_0", "encoder_shared"]
    assert manifest["shared_encoder_stages"] == 1 and manifest["encoder_scope"] == "all"
    assert manifest["check"]["passed"], manifest["check"]
    fast = PSFHModel.from_pretrained(device="cpu", folds=["fold_0"], backend="onnxruntime", export_dir=tmp_path)
    expected, got = model.predict(example_images[2], folds=["fold_0"]), fast.predict(example_images[2])
    assert (expected.label_map == got.label_map).mean() >= 0.999
    assert abs(expected.aop.angle_deg - got.aop.angle_deg) <= 0.1

    # The files alone, as the README shows them: onnxruntime and the manifest, no psfh runtime.
    import onnxruntime as ort

    from psfh.io.images import load_image
    from psfh.model import inference

    files = manifest["files"]
    run = lambda name, x: ort.InferenceSession(str(tmp_path / files[name]["file"])).run(  # noqa: E731
        None, {files[name]["input"]: x})[0]
    pixels = model.preprocess(load_image(example_images[2]).pixels)
    views = inference.tta_views(pixels, True).numpy()
    members = run("decoder_fold_0", run("encoder_fold_0", run("encoder_shared", views)))
    reference = model.fold_probabilities(pixels, ["fold_0"], True)[0]       # V x 3 x S x S, image orientation
    assert np.abs(inference.undo_tta(torch.from_numpy(members), True)[:, 0] - reference).max() <= PROBABILITY_TOLERANCE


@pytest.mark.slow  # exports in a subprocess (~1 min on 2 cores); the tests above export in process
def test_the_batch_command_line_runs_on_an_onnx_backend(tiny_package, tmp_path, example_images):
    """`python -m psfh.predict --backend onnxruntime`: the export is made once into the cache, and
    the label maps and AoPs match the torch backend's."""
    import csv
    import os

    inputs = tmp_path / "in"
    inputs.mkdir()
    for image in example_images[:2]:
        shutil.copy(image, inputs / image.name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PSFH_CACHE": str(tmp_path / "cache")}
    results = {}
    for backend in ("torch", "onnxruntime"):
        run = subprocess.run([sys.executable, "-m", "psfh.predict", str(inputs), "--out", str(tmp_path / backend),
                              "--model", str(tiny_package), "--backend", backend], capture_output=True, text=True,
                             cwd=ROOT, env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        with open(tmp_path / backend / "aop.csv") as handle:
            results[backend] = {row["name"]: row for row in csv.DictReader(handle)}
    assert "exporting the package to ONNX once" in run.stderr
    assert len(list((tmp_path / "cache" / "onnx").iterdir())) == 1
    for name, row in results["torch"].items():
        other = results["onnxruntime"][name]
        assert (row["aop_deg"] == "") == (other["aop_deg"] == "")
        if row["aop_deg"]:
            assert abs(float(row["aop_deg"]) - float(other["aop_deg"])) <= 0.1
