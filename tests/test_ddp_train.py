"""train.py under ``accelerate launch`` with 2 processes (DDP over gloo, on CPU): each fold trains
data-parallel and ends with the adapters a single process trains on the same batches (so the
gradients are averaged across processes and the LR schedule is the same), and the package loads and
predicts. Also the parts: each process's share of an epoch, the schedule's ticks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, ROOT
from safetensors.torch import load_file

from psfh.model.psfh_model import PSFHModel
from psfh.training.loop import WarmupLinearDecay, shard_indices


def test_every_process_gets_as_many_samples_and_together_all_of_them():
    order = torch.arange(9)
    shares = [shard_indices(order, rank, 2) for rank in range(2)]
    assert [len(share) for share in shares] == [5, 5]  # equal: no process waits for a batch that never comes
    assert set(torch.cat(shares).tolist()) == set(range(9))
    assert torch.equal(shard_indices(order, 0, 1), order)
    assert [len(shard_indices(torch.arange(2), rank, 4)) for rank in range(4)] == [1, 1, 1, 1]


def test_the_schedule_counts_one_step_per_optimiser_step_on_any_number_of_processes():
    one, two = WarmupLinearDecay(10, 2), WarmupLinearDecay(10, 2, ticks_per_step=2)
    assert [two(tick) for tick in range(0, 20, 2)] == [one(step) for step in range(10)]
    assert two(3) == one(1)  # between two optimiser steps the rate holds


def tiny_training(data: Path, out: Path) -> list[str]:
    """The tiny config of test_train, without augmentation: the same batches on 1 or 2 processes."""
    return ["--data", str(data), "--out", str(out), "--base", "tiny-random", "--n-folds", "2", "--block-size", "2",
            "--epochs", "3", "--batch-size", "4", "--no-augment", "--soup", "none", "--device", "cpu", "--no-progress"]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # trains twice
def test_two_process_training_matches_one_process_and_gives_a_package(small_dataset, tmp_path):
    # --multi_gpu starts the processes with torchrun; on a machine without GPUs accelerate makes
    # them MULTI_CPU with gloo. (accelerate 1.15's --cpu starts several processes only via mpirun.)
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    launched = _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                     str(ROOT / "train.py"), *tiny_training(small_dataset, ddp)])
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "data-parallel training on 2 processes (MULTI_CPU, cpu)" in launched.stdout
    alone = _run([sys.executable, str(ROOT / "train.py"), *tiny_training(small_dataset, single)])
    assert alone.returncode == 0, alone.stderr[-3000:]

    for fold in ("fold_0", "fold_1"):
        weights = load_file(str(ddp / fold / "adapter_model.safetensors"))
        reference = load_file(str(single / fold / "adapter_model.safetensors"))
        assert weights.keys() == reference.keys()
        moved = max(value.abs().max().item() for key, value in reference.items() if "lora_B" in key)
        assert moved > 1e-5, "training moved the LoRA B matrices from their zero start"
        for key in reference:
            torch.testing.assert_close(weights[key], reference[key], rtol=0, atol=1e-6)
        histories = [json.loads((out / fold / "metrics.json").read_text())["history"] for out in (ddp, single)]
        assert [h["lr_last_step"] for h in histories[0]] == pytest.approx([h["lr_last_step"] for h in histories[1]])
        assert histories[0][-1]["lr_last_step"] == pytest.approx(5e-5)  # the decay, not one twice as fast

    model = PSFHModel.from_pretrained(ddp, device="cpu")
    assert model.folds == ["fold_0", "fold_1"]
    label_map = model.predict(EXAMPLES / "image_mha" / "03811.mha").label_map
    assert label_map.shape == (256, 256) and set(np.unique(label_map)) <= {0, 1, 2}
