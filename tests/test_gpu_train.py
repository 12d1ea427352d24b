"""scripts/gpu_train.sh: the one-call GPU job, dry-run on the CPU so it cannot rot.

The same script a lent GPU runs (unpack, every fold of both variants side by side, pack the
results into at most 8 files), with a tiny setting: 2 folds, 1 epoch, 4 real frames from a
lossy WebP pack like the one the device gets.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile

import pytest
from conftest import EMBEDDED, EXAMPLES, ROOT

from psfh.io.dataset import pack

SCRIPT = ROOT / "scripts" / "gpu_train.sh"


def load_script_module():
    spec = importlib.util.spec_from_file_location("gpu_train", ROOT / "scripts" / "gpu_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_dry_run")
    data = pack(EXAMPLES, root / "examples-webp85.zip", webp_quality=85, progress=False)
    out = root / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [str(SCRIPT), "--pack", str(data), "--out", str(out), "--work", str(root / "work"), "--device", "cpu",
         "--n-folds", "2", "--epochs", "1", "--limit", "4", "--block-size", "2", "--batch-size", "2"],
        capture_output=True, text=True, env=env, timeout=900)
    return result, out


@pytest.mark.slow  # the dry run trains every variant (minutes on 2 cores)
def test_dry_run_trains_every_variant_and_packs_at_most_8_files(dry_run):
    result, out = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["last_stage.tar.gz", "logs.tar.gz", "paper.tar.gz", "paper_ps_moments.tar.gz", "summary.json"]
    assert all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["exit_codes"].values()) == {0} and len(summary["exit_codes"]) == 6
    for variant in ("paper", "last_stage", "paper_ps_moments"):
        folds = summary["variants"][variant]
        assert sorted(folds) == ["fold_0", "fold_1"]
        assert all(f["epochs"] == 1 and f["best_epoch"] == 1 for f in folds.values())


@pytest.mark.slow  # the dry run trains every variant (minutes on 2 cores)
@pytest.mark.parametrize("variant,scope", [("paper", "all"), ("last_stage", "last_stage"), ("paper_ps_moments", "all")])
def test_packed_variant_installs_as_a_package_that_predicts(dry_run, tmp_path, variant, scope):
    _, out = dry_run
    with tarfile.open(out / f"{variant}.tar.gz") as tar:
        assert not any(name.startswith("base") for name in tar.getnames()), "the shared base does not travel back"
    from psfh.model.psfh_model import PSFHModel

    folder = load_script_module().install_package(out / f"{variant}.tar.gz", tmp_path / variant, EMBEDDED)
    model = PSFHModel.from_pretrained(folder, device="cpu")
    assert model.folds == ["fold_0", "fold_1"]
    assert model.encoder_scope == scope
    assert model.config.training["recipe"]["encoder_scope"] == scope
    assert model.config.training["recipe"]["ps_moment_weight"] == (0.5 if variant == "paper_ps_moments" else 0.0)
    result = model.predict(EXAMPLES / "image_mha" / "03811.mha", folds=["fold_1"], tta=False)
    assert result.label_map.shape == (256, 256)


def test_unknown_variant_and_missing_pack_are_refused(tmp_path):
    module = load_script_module()
    assert module.main(["--pack", str(tmp_path / "none.zip"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "p.zip").write_bytes(b"")
    assert module.main(["--pack", str(tmp_path / "p.zip"), "--out", str(tmp_path / "o"), "--variants", "huge"]) == 2
