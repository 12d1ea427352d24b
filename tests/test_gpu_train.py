"""scripts/gpu_train.sh: the one-call GPU job, dry-run on the CPU so it cannot rot.

The same script a lent GPU runs (unpack, every fold of every variant side by side, the student,
pack the results into at most 8 files), with a tiny setting: 2 folds, 1 epoch, 2 real frames
from a lossy WebP pack like the one the device gets, the paper variants warm-started from the
shipped package's folds, batched augmentation, and a student distilled from the paper folds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

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
    # The device's Python: the bundle's transformers and peft first, and no MONAI (a stand-in that fails to import).
    bundle = root / "bundle"
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])  # `python`: this one
    subprocess.run([str(ROOT / "scripts" / "gpu_bundle.sh"), "--site-only"], check=True, capture_output=True,
                   env={**os.environ, "GPU_BUNDLE_DIR": str(bundle), "PATH": path}, timeout=300)
    (root / "no_monai" / "monai").mkdir(parents=True)
    (root / "no_monai" / "monai" / "__init__.py").write_text("raise ImportError('no MONAI on the GPU machine')\n")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",  # two processes at once, one core each
           "PSFH_GPU_SITE": str(bundle / "site.tar.xz"),
           "PYTHONPATH": os.pathsep.join(p for p in [str(root / "no_monai"), os.environ.get("PYTHONPATH")] if p)}
    result = subprocess.run(
        [str(SCRIPT), "--pack", str(data), "--out", str(out), "--work", str(root / "work"), "--device", "cpu",
         "--n-folds", "2", "--epochs", "1", "--limit", "2", "--block-size", "1", "--batch-size", "2",
         "--parallel", "2", "--init-adapters", str(EMBEDDED), "--student", "0.05"],
        capture_output=True, text=True, env=env, timeout=900)
    return result, out


@pytest.mark.slow  # the dry run trains every variant (minutes on 2 cores)
def test_dry_run_trains_every_variant_and_packs_at_most_8_files(dry_run):
    result, out = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "psfh-site" in result.stdout.splitlines()[0], "transformers came from the bundle"
    files = sorted(p.name for p in out.iterdir())
    assert files == ["last_stage.tar.gz", "logs.tar.gz", "paper.tar.gz", "paper_ps_moments.tar.gz", "student.tar.gz",
                     "summary.json"]
    assert all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["exit_codes"].values()) == {0} and len(summary["exit_codes"]) == 6
    assert summary["augment_on"] == "device" and summary["warm_start"] == str(EMBEDDED)
    for variant in ("paper", "last_stage", "paper_ps_moments"):
        folds = summary["variants"][variant]
        assert sorted(folds) == ["fold_0", "fold_1"]
        assert all(f["epochs"] == 1 and f["best_epoch"] in (0, 1) for f in folds.values())
        # the variants of the shipped adapters' form start from its folds (validated first); last_stage from scratch
        assert all(("start_val_score" in f) == (variant != "last_stage") for f in folds.values()), variant
    student = summary["student"]
    assert student["packed"] and student["exit_code"] == 0 and student["epochs"] == 1
    assert student["variant"] == "paper" and student["teacher_folds"] == ["fold_0", "fold_1"]


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
    # the merged package keeps every fold's record, not the first run's only (the first draw kept fold_0's)
    assert sorted(model.config.training["seconds_per_fold"]) == ["fold_0", "fold_1"]
    if variant != "last_stage":
        assert sorted(model.config.training["warm_start"]) == ["fold_0", "fold_1"]
    result = model.predict(EXAMPLES / "image_mha" / "03811.mha", folds=["fold_1"], tta=False)
    assert result.label_map.shape == (256, 256)


@pytest.mark.slow  # the dry run trains every variant and the student (minutes on 2 cores)
def test_the_packed_student_installs_as_a_one_adapter_package_that_predicts(dry_run, tmp_path):
    _, out = dry_run
    from psfh.model.psfh_model import PSFHModel

    folder = load_script_module().install_package(out / "student.tar.gz", tmp_path / "student", EMBEDDED)
    model = PSFHModel.from_pretrained(folder, device="cpu")
    assert model.folds == ["student"] and model.default_adapters == ["student"]
    assert model.config.training["student"]["teacher_adapters"] == ["fold_0", "fold_1"]
    assert model.config.training["warm_start"]["student"]["adapter"] == "fold_0", "it starts from the teacher's fold_0"
    assert model.config.training["recipe"]["augment_on"] == "device"
    assert model.predict(EXAMPLES / "image_mha" / "03811.mha").label_map.shape == (256, 256)


def test_unknown_variant_and_missing_pack_are_refused(tmp_path):
    module = load_script_module()
    assert module.main(["--pack", str(tmp_path / "none.zip"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "p.zip").write_bytes(b"")
    assert module.main(["--pack", str(tmp_path / "p.zip"), "--out", str(tmp_path / "o"), "--variants", "huge"]) == 2


def test_bad_warm_start_and_student_options_are_refused(tmp_path, capsys):
    module = load_script_module()
    (tmp_path / "p.zip").write_bytes(b"")
    pack = ["--pack", str(tmp_path / "p.zip"), "--out", str(tmp_path / "o")]
    assert module.main([*pack, "--init-adapters", str(tmp_path)]) == 2
    assert "not a psfh model package" in capsys.readouterr().err
    assert module.main([*pack, "--student", "0"]) == 2
    assert module.main([*pack, "--student", "1", "--distil-weight", "2"]) == 2
    assert capsys.readouterr().err.count("error: ") == 2


def test_the_fold_commands_carry_the_draws_options(tmp_path):
    module = load_script_module()
    args = module.parse_args(["--pack", "x.zip", "--out", "o", "--init-adapters", str(EMBEDDED), "--lr-scaling", "sqrt",
                              "--batch-size", "32", "--channels-last"])
    paper = module.train_command(args, "paper", 0, tmp_path / "r")
    last_stage = module.train_command(args, "last_stage", 0, tmp_path / "r")
    assert paper[paper.index("--init-adapters") + 1] == str(EMBEDDED)
    assert "--init-adapters" not in last_stage, "the shipped adapters have another form than last_stage's"
    for command in (paper, last_stage):
        assert command[command.index("--augment-on") + 1] == "device"
        assert command[command.index("--lr-scaling") + 1] == "sqrt" and "--channels-last" in command
        assert command[command.index("--mixed-precision") + 1] == "bf16" and "--compile" not in command


@pytest.mark.slow  # builds the bundle's site (about 20 s)
def test_the_bundle_refuses_what_a_device_call_could_not_carry(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "psfhs-cv-lossless.zip").write_bytes(b"\0" * 12_000_000)  # 12 MB beside a ~56 MB tree: over 64 MiB
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    result = subprocess.run([str(ROOT / "scripts" / "gpu_bundle.sh"), "--site-only"], capture_output=True, text=True,
                            env={**os.environ, "GPU_BUNDLE_DIR": str(bundle), "PATH": path}, timeout=300)
    assert result.returncode == 1 and "error: over the 64 MiB a device call may carry" in result.stderr
    carried = int(result.stdout.split(" = ")[1].split()[0])
    assert carried > 67_108_864 and (bundle / "site.tar.xz").stat().st_size < 2_500_000
