"""scripts/adopt_gpu_adapters.py: a GPU run's adapters replace the package's only when they fit it."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from psfh.cli import soup as soup_cli

ROOT = Path(__file__).resolve().parents[1]


def adopt(argv):
    spec = importlib.util.spec_from_file_location("adopt_gpu_adapters", ROOT / "scripts" / "adopt_gpu_adapters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def with_training(folder: Path, record: dict) -> Path:
    path = folder / "psfh_config.json"
    config = json.loads(path.read_text())
    config["training"] = record
    path.write_text(json.dumps(config))
    return folder


@pytest.fixture
def package_and_run(tiny_package, tmp_path):
    package = with_training(Path(shutil.copytree(tiny_package, tmp_path / "package")),
                            {"data": "the frames", "test_ids": "docs/splits/test_ids.txt", "epochs_per_fold": 9})
    run = with_training(Path(shutil.copytree(tiny_package, tmp_path / "run")), {"recipe": {"ps_moment_weight": 0.5}})
    assignment = json.dumps({"fold_of_id": {"a": "fold_0", "b": "fold_1", "c": "fold_2"}})
    for folder in (package, run):
        (folder / "folds.json").write_text(assignment)
    for fold in json.loads((run / "psfh_config.json").read_text())["folds"]:  # the run's own adapters
        weights = run / fold / "adapter_model.safetensors"
        tensors = load_file(str(weights))
        save_file({k: v * 2 for k, v in tensors.items()}, str(weights))
    return package, run


def test_a_run_with_a_soup_replaces_the_adapters_and_keeps_the_old_record(package_and_run, capsys):
    package, run = package_and_run
    shutil.rmtree(run / "soup", ignore_errors=True)
    assert soup_cli.main([str(run), "--default"]) == 0
    assert adopt([str(run), "--into", str(package)]) == 0
    config = json.loads((package / "psfh_config.json").read_text())
    for fold in config["folds"]:
        assert (package / fold / "adapter_model.safetensors").read_bytes() == (run / fold / "adapter_model.safetensors").read_bytes()
    assert (package / "soup" / "adapter_model.safetensors").read_bytes() == (run / "soup" / "adapter_model.safetensors").read_bytes()
    assert config["training"]["previous"]["epochs_per_fold"] == 9 and config["training"]["data"] == "the frames"
    assert config["training"]["recipe"] == {"ps_moment_weight": 0.5}
    assert sorted(config["training"]["warm_start"]) == sorted(config["folds"])


def test_a_run_without_a_soup_or_with_another_base_is_refused(package_and_run, capsys):
    package, run = package_and_run
    before = (package / "fold_0" / "adapter_model.safetensors").read_bytes()
    shutil.rmtree(run / "soup", ignore_errors=True)
    assert adopt([str(run), "--into", str(package)]) == 2
    assert "no soup" in capsys.readouterr().err
    assert soup_cli.main([str(run), "--default"]) == 0
    base = run / "base" / "model.safetensors"
    data = bytearray(base.read_bytes())
    data[-1] ^= 0xFF  # one weight's last byte changed
    base.write_bytes(bytes(data))
    assert adopt([str(run), "--into", str(package)]) == 2
    assert "another base" in capsys.readouterr().err
    (run / "folds.json").unlink()
    assert adopt([str(run), "--into", str(package)]) == 2
    assert "no fold assignment" in capsys.readouterr().err
    assert (package / "fold_0" / "adapter_model.safetensors").read_bytes() == before, "nothing replaced"
