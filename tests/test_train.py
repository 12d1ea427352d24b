"""train.py: a tiny 2-fold run, resume after a kill, bad data, and over-fitting real images."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EMBEDDED, EXAMPLES, ROOT, tiny_train_args
from safetensors.torch import load_file

import train
from psfh.model import prompts
from psfh.model.onnx_export import export_onnx
from psfh.model.psfh_model import PSFHModel


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    return tiny_train_args(data, out, "--epochs", "2", *extra)


@pytest.mark.slow  # trains
def test_two_fold_tiny_run_writes_a_package_that_loads_and_predicts(small_dataset, tmp_path):
    out = tmp_path / "package"
    assert train.main(tiny_args(small_dataset, out, "--recipe", "paper")) == 0
    model = PSFHModel.from_pretrained(out, device="cpu")
    assert model.folds == ["fold_0", "fold_1"]
    result = model.predict(EXAMPLES / "image_mha" / "03811.mha")
    assert result.label_map.shape == (256, 256) and set(np.unique(result.label_map)) <= {0, 1, 2}
    folds = json.loads((out / "folds.json").read_text())["fold_of_id"]
    assert len(folds) == 8 and set(folds.values()) == {"fold_0", "fold_1"}
    for fold in model.folds:
        metrics = json.loads((out / fold / "metrics.json").read_text())
        assert [h["epoch"] for h in metrics["history"]] == [1, 2]
        assert 1 <= metrics["best_epoch"] <= 2
        assert (out / fold / "metrics.csv").read_text().startswith("epoch,")
        assert (out / fold / "adapter_model.safetensors").stat().st_size < 10e6
    assert not (out / "checkpoints").exists(), "checkpoints are removed once every fold is done"


def test_the_cpu_preset_trains_the_whole_decoder():
    from psfh.training.recipe import preset

    assert preset("cpu").decoder == "whole" and preset("cpu").learning_rate == pytest.approx(1e-4)


def test_a_decoder_lora_rank_with_the_cpu_recipe_is_refused_before_any_work(small_dataset, tmp_path):
    # A LoRA rank for a decoder without LoRA is refused before any work (exit status 2).
    assert train.main(tiny_args(small_dataset, tmp_path / "never", "--recipe", "cpu", "--decoder-rank", "8")) == 2
    assert not (tmp_path / "never").exists()


# The CPU recipe (ablation variant b): every decoder weight trains, a full copy per fold, and the
# package still loads onto one base, hot-swaps its folds and keeps the base for box prompts. One
# run (module-scoped) serves the tests below.


@pytest.fixture(scope="module")
def cpu_run(small_dataset, tmp_path_factory) -> Path:
    """The CPU recipe trained once on the 8 examples: the package folder."""
    root = tmp_path_factory.mktemp("cpu_recipe")
    out = root / "cpu"
    assert train.main(tiny_args(small_dataset, out, "--recipe", "cpu", "--cache-dir", str(root / "cache"))) == 0
    return out


@pytest.fixture(scope="module")
def cpu_model(cpu_run):
    """The CPU-recipe package loaded. Two epochs on 8 frames barely move the tiny model's outputs:
    fold_1's own decoder copy (peft's ModulesToSaveWrapper) is pushed further, so that a fold
    running another fold's copy would show."""
    model = PSFHModel.from_pretrained(cpu_run, device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in model.base_model.mask_decoder.modules_to_save["fold_1"].parameters():
            weight.add_(torch.randn_like(weight))
    return model


@pytest.fixture(scope="module")
def cpu_fold_probabilities(cpu_model):
    """Each fold's probabilities (one view) on one example frame."""
    image = EXAMPLES / "image_mha" / "03811.mha"
    return {fold: cpu_model.predict(image, folds=[fold], tta=False).probabilities for fold in cpu_model.folds}


@pytest.mark.slow  # the module's CPU-recipe training run
def test_the_cpu_recipe_package_records_a_whole_decoder_over_a_frozen_encoder(cpu_run):
    config = json.loads((cpu_run / "psfh_config.json").read_text())
    assert config["training"]["recipe"]["decoder"] == "whole"
    assert config["trained"]["mask_decoder"].startswith("every weight") and config["trained"]["image_encoder"] == "frozen"


@pytest.mark.slow  # the module's CPU-recipe training run
def test_the_cpu_recipe_stores_every_decoder_weight_per_fold_and_training_moved_them(cpu_run):
    base = PSFHModel.from_pretrained(cpu_run, device="cpu", folds=[]).network.state_dict()
    adapters = {fold: _adapter(cpu_run, fold) for fold in ("fold_0", "fold_1")}
    for fold, weights in adapters.items():
        decoder = {k: v for k, v in weights.items() if "mask_decoder" in k}
        # Every decoder weight is stored (no LoRA factors there), and training moved them.
        assert decoder and not any("lora_" in k for k in decoder)
        stored = {k.split("mask_decoder.", 1)[1]: v for k, v in decoder.items()}
        original = {k.split("mask_decoder.", 1)[1]: v for k, v in base.items() if k.startswith("mask_decoder.")}
        assert stored.keys() == original.keys()
        assert any(not torch.equal(stored[k], original[k]) for k in stored), fold


@pytest.mark.slow  # the module's CPU-recipe training run
def test_each_cpu_recipe_fold_runs_its_own_decoder_copy(cpu_fold_probabilities):
    folds = cpu_fold_probabilities
    assert np.abs(folds["fold_0"] - folds["fold_1"]).max() > 0.02, "each fold runs its own decoder copy"


@pytest.mark.slow  # the module's CPU-recipe training run
def test_the_onnx_export_merges_each_cpu_recipe_folds_decoder_copy(cpu_run, cpu_model, cpu_fold_probabilities, tmp_path):
    # The ONNX export merges each fold's copy into its decoder file: the same probabilities.
    image = EXAMPLES / "image_mha" / "03811.mha"
    export_onnx(cpu_model, tmp_path / "onnx", cpu_model.adapters, progress=False)  # with the soup: it loads with them
    exported = PSFHModel.from_pretrained(cpu_run, device="cpu", backend="onnxruntime", export_dir=tmp_path / "onnx")
    for fold, reference in cpu_fold_probabilities.items():
        assert np.abs(exported.predict(image, folds=[fold], tta=False).probabilities - reference).max() <= 1e-3, fold


@pytest.mark.slow  # the module's CPU-recipe training run
def test_box_prompts_of_the_cpu_recipe_package_run_the_bases_decoder(cpu_run, cpu_model):
    # Box prompts run the base's decoder, not a fold's copy: the same logits as the base alone.
    embeddings = cpu_model.embed(EXAMPLES / "image_mha" / "03811.mha", for_prompts=True)
    box = prompts.box_to_input((60, 60, 200, 220), embeddings.size, cpu_model.config.input_size)
    with cpu_model._adapters_off():
        from_package = prompts.box_mask_logits(cpu_model.base_model, embeddings.base, box)
    base_alone = PSFHModel.from_pretrained(cpu_run, device="cpu", folds=[])
    assert torch.allclose(from_package, prompts.box_mask_logits(base_alone.base_model, embeddings.base, box))


@pytest.mark.slow  # the module's CPU-recipe training run
def test_a_box_correction_on_the_cpu_recipe_package_gives_a_label_map(cpu_model):
    embeddings = cpu_model.embed(EXAMPLES / "image_mha" / "03811.mha", for_prompts=True)
    assert cpu_model.decode(embeddings, boxes={"fh": (60, 60, 200, 220)}).label_map.shape == (256, 256)


@pytest.mark.slow  # trains
def test_training_one_fold_only(small_dataset, tmp_path):
    out = tmp_path / "one"
    assert train.main(tiny_args(small_dataset, out, "--fold", "1", "--epochs", "1")) == 0
    assert PSFHModel.from_pretrained(out, device="cpu").folds == ["fold_1"]


def _run_train(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


def _adapter(out: Path, fold: str = "fold_0") -> dict[str, torch.Tensor]:
    return load_file(str(out / fold / "adapter_model.safetensors"))


@pytest.mark.slow  # trains
def test_a_killed_and_resumed_run_ends_with_the_same_adapters(small_dataset, tmp_path):
    args = ["--fold", "0", "--epochs", "6", "--recipe", "paper"]
    straight = tmp_path / "straight"
    assert _run_train(tiny_args(small_dataset, straight, *args)).wait(timeout=600) == 0

    resumed = tmp_path / "resumed"
    process = _run_train(tiny_args(small_dataset, resumed, *args))
    state = resumed / "checkpoints" / "fold_0" / "state.json"
    deadline = time.time() + 600
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # mid-run: after epoch 1's checkpoint, before the end
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    epochs_done = json.loads(state.read_text())["epoch"]
    assert 1 <= epochs_done < 6
    assert not (resumed / "fold_0" / "adapter_model.safetensors").exists()

    assert _run_train(tiny_args(small_dataset, resumed, *args, "--resume")).wait(timeout=600) == 0
    expected, got = _adapter(straight), _adapter(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
    # and the comparison is not vacuous: training moved the adapters away from their start
    assert any(v.abs().max() > 0 for k, v in expected.items() if "lora_B" in k)


def _broken_copy(small_dataset: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "broken"
    shutil.copytree(small_dataset, broken)
    return broken


def test_unpaired_file_stops_the_run_naming_it(small_dataset, tmp_path, capsys):
    broken = _broken_copy(small_dataset, tmp_path)
    lonely = sorted((broken / "label_mha").glob("*.mha"))[0]
    lonely.unlink()
    assert train.main(tiny_args(broken, tmp_path / "out")) == 2  # bad input: exit status 2, as every CLI
    assert re.search(rf"^error: .*{lonely.stem}", capsys.readouterr().err, re.M)


def test_label_values_outside_0_1_2_stop_the_run_naming_the_file(small_dataset, tmp_path, capsys):
    import SimpleITK as sitk

    broken = _broken_copy(small_dataset, tmp_path)
    path = sorted((broken / "label_mha").glob("*.mha"))[3]
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    label[0, 0] = 7
    sitk.WriteImage(sitk.GetImageFromArray(label), str(path))
    assert train.main(tiny_args(broken, tmp_path / "out")) == 2
    assert re.search(rf"{path.stem}.*7|7.*{path.stem}", capsys.readouterr().err)
    assert not (tmp_path / "out" / "psfh_config.json").exists()


@pytest.mark.slow  # trains
def test_overfitting_four_real_images_reaches_dice_above_0_9(tmp_path):
    """Training on cached embeddings (frozen LiteMedSAM encoder; decoder in its LoRA form) can fit 4 real images."""
    from accelerate import Accelerator

    from psfh.io.dataset import find_samples, load_arrays
    from psfh.model.lora import make_lora_config
    from psfh.training.embedding_cache import EmbeddingCache
    from psfh.training.loop import train_fold
    from psfh.training.recipe import preset
    from psfh.training.sources import CachedEmbeddingSource

    samples = find_samples(EXAMPLES)[:4]
    ids, images, labels = load_arrays(samples, progress=False)
    torch.manual_seed(0)
    model = PSFHModel.from_base("lite-medsam", ["fold_0"], make_lora_config(0, 16), device="cpu",
                                base_folder=EMBEDDED)
    embeddings = EmbeddingCache(model, tmp_path / "cache").build(ids, list(images), progress=False)
    source = CachedEmbeddingSource(embeddings, torch.as_tensor(labels))
    config = preset("cpu", epochs=80, batch_size=4, learning_rate=3e-3, augment=False, warmup_fraction=0.05)
    everything = torch.arange(4)
    result = train_fold(model.network, "fold_0", 0, source, everything, everything, config, 256,
                        tmp_path / "checkpoints", Accelerator(cpu=True), progress=False)
    best = result.history[result.best_epoch - 1]
    assert best["val_dice_ps"] > 0.9 and best["val_dice_fh"] > 0.9, best
    assert result.history[0]["val_score"] < best["val_score"]


@pytest.mark.slow  # trains
def test_a_time_budget_fits_the_epochs_after_the_first_and_records_them(small_dataset, tmp_path, capsys):
    out = tmp_path / "budget"
    # 0.0001 minutes: whatever the first epoch takes, only that one fits; --epochs 5 is the cap only.
    assert train.main(tiny_args(small_dataset, out, "--fold", "0", "--epochs", "5", "--time-budget", "0.0001")) == 0
    metrics = json.loads((out / "fold_0" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1]
    config = json.loads((out / "psfh_config.json").read_text())
    assert config["training"]["recipe"]["time_budget_minutes"] == 0.0001
    assert train.main(tiny_args(small_dataset, tmp_path / "never", "--time-budget", "0")) == 2
    assert "--time-budget must be a positive number of minutes" in capsys.readouterr().err


def test_epochs_within_budget_and_the_refitted_schedule():
    from psfh.training.loop import WarmupLinearDecay, epochs_within_budget

    assert epochs_within_budget(100, 9.0, 400) == 11
    assert epochs_within_budget(100, 200.0, 400) == 1
    assert epochs_within_budget(1e6, 1.0, 30) == 30
    schedule = WarmupLinearDecay(total_steps=1000, warmup_steps=10)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    schedule.total_steps = 110  # shortened after the first epoch: the decay ends there
    assert schedule(60) == pytest.approx(0.5) and schedule(110) == 0.0


def test_training_leaves_the_shared_base_batchnorm_statistics_alone(lite_medsam_base):
    """BatchNorm of the frozen, shared encoder stays in eval mode: no batch statistics, no drift."""
    from psfh.training.loop import keep_frozen_statistics

    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    before = network[1].running_mean.clone()
    network.train()
    keep_frozen_statistics(network)
    network(torch.randn(2, 3, 8, 8) * 5 + 3)
    assert not network[1].training and network[0].training
    torch.testing.assert_close(network[1].running_mean, before, rtol=0, atol=0)
    lite_medsam_base.train()
    keep_frozen_statistics(lite_medsam_base)
    norms = [m for m in lite_medsam_base.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    lite_medsam_base.eval()


@pytest.mark.slow  # trains
def test_every_training_epoch_puts_the_frozen_statistics_back(small_dataset, tmp_path, monkeypatch):
    import psfh.training.loop as loop

    calls = []
    original = loop.keep_frozen_statistics
    monkeypatch.setattr(loop, "keep_frozen_statistics", lambda network: calls.append(network.training) or original(network))
    assert train.main(tiny_args(small_dataset, tmp_path / "out", "--fold", "0", "--epochs", "2")) == 0
    assert calls == [True, True], "called once per epoch, right after network.train()"


def test_device_augmentation_and_a_scaled_learning_rate_are_used_and_recorded(small_dataset, tmp_path, monkeypatch):
    from psfh.training import batch_augment

    calls = []
    original = batch_augment.BatchAugmentation.__call__
    monkeypatch.setattr(batch_augment.BatchAugmentation, "__call__",
                        lambda self, *a, **k: calls.append(len(a[0])) or original(self, *a, **k))
    out = tmp_path / "device"
    assert train.main(tiny_args(small_dataset, out, "--fold", "0", "--epochs", "1", "--augment-on", "device",
                                "--lr", "1e-3", "--lr-scaling", "sqrt", "--lr-reference-batch", "1",
                                "--channels-last")) == 0
    assert calls == [4], "the 4 training frames of fold 0, one batch, augmented on the device"
    recipe = json.loads((out / "psfh_config.json").read_text())["training"]["recipe"]
    assert recipe["augment_on"] == "device" and recipe["channels_last"] is True and recipe["compile"] is False
    # batch 4 from a rate chosen for batch 1, square-root rule: 1e-3 * sqrt(4)
    assert recipe["learning_rate"] == pytest.approx(2e-3) and recipe["base_learning_rate"] == pytest.approx(1e-3)
    history = json.loads((out / "fold_0" / "metrics.json").read_text())["history"]
    assert history[0]["lr_last_step"] > 0


def test_scaled_learning_rate_rules():
    from psfh.training.recipe import scaled_learning_rate

    assert scaled_learning_rate(5e-4, 32, 8, "linear") == pytest.approx(2e-3)
    assert scaled_learning_rate(5e-4, 32, 8, "sqrt") == pytest.approx(1e-3)
    assert scaled_learning_rate(5e-4, 32, 8, "none") == pytest.approx(5e-4)


@pytest.mark.parametrize("extra", [["--augment-on", "gpu"], ["--lr-scaling", "cubic"],
                                   ["--recipe", "cpu", "--augment-on", "device"], ["--lr-reference-batch", "0"]])
def test_bad_training_options_end_with_an_error_and_status_2(small_dataset, tmp_path, extra, capsys):
    with pytest.raises(SystemExit) as exit_info:
        code = train.main(tiny_args(small_dataset, tmp_path / "never", *extra))
        raise SystemExit(code)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_compile_wraps_the_training_forward_only(small_dataset, tmp_path, monkeypatch):
    # torch.compile itself is not run here (minutes of Inductor on 2 cores, and untimed on a GPU):
    # the option must hand the training forward, and only it, to torch.compile.
    compiled, forwards = [], []

    def fake_compile(module):
        compiled.append(module)

        def forward(*args, **kwargs):
            forwards.append(1)
            return module(*args, **kwargs)

        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    assert train.main(tiny_args(small_dataset, tmp_path / "c", "--fold", "0", "--epochs", "1", "--compile")) == 0
    assert len(compiled) == 1 and len(forwards) == 1, "one compiled module, used by the one training batch"
    assert json.loads((tmp_path / "c" / "psfh_config.json").read_text())["training"]["recipe"]["compile"] is True
