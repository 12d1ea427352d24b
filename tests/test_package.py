"""The model package: save / load, one shared base, safetensors only, hub loading offline."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EMBEDDED, ROOT

from psfh.core.errors import PSFHInputError
from psfh.model.bases import build_tiny_random, count_parameters
from psfh.model.lora import make_lora_config
from psfh.model.package import PackageConfig
from psfh.model.psfh_model import PSFHModel

IMAGE = (np.random.default_rng(0).random((48, 56)) * 255).astype(np.uint8)


def test_save_and_load_round_trip_gives_identical_predictions(tiny_package, tmp_path):
    model = PSFHModel.from_pretrained(tiny_package, device="cpu")
    again_folder = model.save_pretrained(tmp_path / "copy")
    again = PSFHModel.from_pretrained(again_folder, device="cpu")
    pixels = model.preprocess(IMAGE.astype(np.float32))
    assert torch.equal(model.fold_probabilities(pixels), again.fold_probabilities(pixels))
    config = json.loads((again_folder / "psfh_config.json").read_text())
    assert config["folds"] == ["fold_0", "fold_1", "fold_2"] and config["base"] == "tiny-random"
    for fold in config["folds"]:
        assert (again_folder / fold / "adapter_config.json").is_file()
        assert (again_folder / fold / "adapter_model.safetensors").is_file()
    assert not list(again_folder.rglob("*.bin"))


def test_folds_differ_and_share_one_base_in_memory(tiny_package):
    model = PSFHModel.from_pretrained(tiny_package, device="cpu")
    probabilities = model.fold_probabilities(model.preprocess(IMAGE.astype(np.float32)), tta=False)
    assert (probabilities[0] - probabilities[1]).abs().max() > 1e-5, "the fold adapters must really differ"
    base = model.base_model
    base_parameters = count_parameters(build_tiny_random())  # one copy of the base (tied weights once)
    all_parameters = sum(p.numel() for p in model.network.parameters())
    adapter_parameters = sum(p.numel() for n, p in model.network.named_parameters()
                             if "lora_" in n or ".modules_to_save." in n)
    assert all_parameters == base_parameters + adapter_parameters, "base weights exist once, not once per fold"
    qkv = base.vision_encoder.layers[0].attn.qkv.base_layer.weight
    pointer = qkv.data_ptr()
    for fold in model.folds:
        model.network.set_adapter(fold)
        assert base.vision_encoder.layers[0].attn.qkv.base_layer.weight.data_ptr() == pointer


def test_pickle_weights_are_refused(tiny_package, tmp_path):
    folder = PSFHModel.from_pretrained(tiny_package, device="cpu").save_pretrained(tmp_path / "pkg")
    torch.save({"x": torch.zeros(1)}, folder / "fold_0" / "adapter_model.bin")
    with pytest.raises(PSFHInputError, match="pickle"):
        PSFHModel.from_pretrained(folder)


def test_missing_or_broken_packages_get_clear_errors(tmp_path):
    with pytest.raises(PSFHInputError, match="not a psfh model package"):
        PSFHModel.from_pretrained(tmp_path)
    (tmp_path / "psfh_config.json").write_text("{not json")
    with pytest.raises(PSFHInputError, match="not a valid psfh package config"):
        PSFHModel.from_pretrained(tmp_path)
    with pytest.raises(PSFHInputError, match="no such folder"):
        PSFHModel.from_pretrained(tmp_path / "absent" / "deeper" / "path")


def test_a_base_only_package_says_it_cannot_segment_yet(tmp_path):
    model = PSFHModel.from_base("tiny-random", ["fold_0"], device="cpu")
    model.save_pretrained(tmp_path, folds=[])
    config = PackageConfig.load(tmp_path)
    config.folds = []
    config.save(tmp_path)
    with pytest.raises(PSFHInputError, match="no fold adapters"):
        PSFHModel.from_pretrained(tmp_path).predict(IMAGE)


def test_default_lora_fold_files_fit_the_size_limit(tmp_path):
    """Paper default (encoder qkv rank 4 + decoder) and the CPU recipe: each fold file <= 10 MB."""
    for name, lora in {"paper": make_lora_config(4, 16), "cpu": make_lora_config(0, 16)}.items():
        model = PSFHModel.from_base("lite-medsam", ["fold_0"], lora, device="cpu", base_folder=EMBEDDED)
        folder = model.save_pretrained(tmp_path / name)
        size = (folder / "fold_0" / "adapter_model.safetensors").stat().st_size
        assert 0.2e6 < size <= 10e6, (name, size)
        targets = json.loads((folder / "fold_0" / "adapter_config.json").read_text())["target_modules"]
        assert ("qkv" in targets) == (name == "paper")


def test_push_to_hub_uploads_the_package_with_its_card(tiny_package, monkeypatch, tmp_path):
    import huggingface_hub

    calls = {}

    def fake_create_repo(self, repo_id, **kwargs):
        calls["repo"] = repo_id

    def fake_upload_folder(self, repo_id, folder_path, **kwargs):
        calls["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        calls["card"] = (Path(folder_path) / "README.md").read_text()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
    card = tmp_path / "card.md"
    card.write_text("---\nlicense: apache-2.0\n---\n# card\n")
    PSFHModel.from_pretrained(tiny_package, device="cpu").push_to_hub("someone/psfh-test", model_card=card)
    assert calls["repo"] == "someone/psfh-test"
    assert "fold_2/adapter_model.safetensors" in calls["files"] and "psfh_config.json" in calls["files"]
    assert calls["card"].startswith("---\nlicense")


HUB_SCRIPT = textwrap.dedent('''
    import hashlib, json, sys
    from pathlib import Path
    import numpy as np, torch
    cache = Path(sys.argv[1])

    def snapshot(repo_id):
        folder = cache / ("models--" + repo_id.replace("/", "--"))
        revision = hashlib.sha1(repo_id.encode()).hexdigest()
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(revision)
        target = folder / "snapshots" / revision
        target.mkdir(parents=True, exist_ok=True)
        return target

    from psfh.model.bases import build_tiny_random
    build_tiny_random().save_pretrained(snapshot("facebook/sam-vit-base"))  # stands in for the hub weights

    from psfh.core.errors import PSFHInputError
    from psfh.model.lora import make_lora_config
    from psfh.model.psfh_model import PSFHModel
    model = PSFHModel.from_base("facebook/sam-vit-base", ["fold_0", "fold_1"], make_lora_config(4, 4),
                                device="cpu", input_size=64)
    for name, p in model.network.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    assert model.config.embedded_base is False
    model.save_pretrained(snapshot("psfh-tests/tiny-hub-package"))

    loaded = PSFHModel.from_pretrained("psfh-tests/tiny-hub-package", device="cpu")
    image = (np.random.default_rng(1).random((40, 40)) * 255).astype(np.float32)
    a = model.fold_probabilities(model.preprocess(image))
    b = loaded.fold_probabilities(loaded.preprocess(image))
    print(json.dumps({"max_difference": float((a - b).abs().max()), "folds": loaded.folds,
                      "embedded": loaded.config.embedded_base}))
    try:
        PSFHModel.from_pretrained("psfh-tests/not-in-the-cache")
    except PSFHInputError as error:
        print("ERROR", error)
''')


def test_hub_repo_ids_load_offline_from_the_local_hf_cache(tmp_path):
    """A hub base and a hub package, both from a temporary HF cache with HF_HUB_OFFLINE=1."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(tmp_path / "hub")], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert summary["max_difference"] == 0.0
    assert summary["folds"] == ["fold_0", "fold_1"] and summary["embedded"] is False
    assert "not-in-the-cache" in result.stdout and "local HF cache" in result.stdout


def test_a_package_can_borrow_the_base_of_a_package_beside_it(tiny_package, tmp_path):
    """Two packages shipped side by side share one base file; a saved copy is whole again."""
    lender = tmp_path / "lender"
    shutil.copytree(tiny_package, lender)
    borrower = tmp_path / "borrower"
    shutil.copytree(tiny_package, borrower, ignore=shutil.ignore_patterns("base"))
    config = PackageConfig.load(borrower)
    config.base_package = "../lender"
    config.save(borrower)
    expected = PSFHModel.from_pretrained(lender, device="cpu").predict(IMAGE).label_map
    model = PSFHModel.from_pretrained(borrower, device="cpu")
    np.testing.assert_array_equal(model.predict(IMAGE).label_map, expected)

    copy = model.save_pretrained(tmp_path / "copy")
    assert (copy / "base" / "model.safetensors").is_file()
    assert PackageConfig.load(copy).base_package is None
    assert PackageConfig.load(borrower).base_package == "../lender", "saving a copy leaves the source alone"
    np.testing.assert_array_equal(PSFHModel.from_pretrained(copy, device="cpu").predict(IMAGE).label_map, expected)

    shutil.rmtree(lender / "base")
    with pytest.raises(PSFHInputError, match="borrowed from '../lender', which has no base"):
        PSFHModel.from_pretrained(borrower, device="cpu")
    shutil.rmtree(lender)
    with pytest.raises(PSFHInputError, match="not a hub repo id"):
        PSFHModel.from_pretrained(borrower, device="cpu")


def test_the_shipped_package_predicts_what_it_predicted_when_it_was_made(example_predictions):
    """A refactor must not change the answers: the embedded package's full ensemble on an example
    gives the label map recorded from it (tests/golden, written by `python -m psfh.predict`)."""
    from psfh.io.images import load_label_map

    prediction = example_predictions["03811"]  # PSFHModel.from_pretrained().predict(examples/image_mha/03811.mha)
    recorded = load_label_map(Path(__file__).parent / "golden" / "shipped_package_03811_labels.mha")
    np.testing.assert_array_equal(prediction.label_map, recorded)
    assert prediction.aop.angle_deg == pytest.approx(124.055, abs=1e-3)  # the recorded aop.csv value (run-3 adapters)
