"""Where one training step of the paper recipe spends its time: the data step (batch assembly and
augmentation) against forward + backward + optimiser step, and images/s from both (issue 26).

The paper recipe as train.py builds it (LiteMedSAM base, encoder LoRA rank 4 on every qkv,
decoder LoRA rank 16 + output tokens, 0.2 CE + 0.8 Dice, AdamW) on the 8 real frames of
examples/, at a small batch: the data step is timed with each augmentation placement
(``--augment-on cpu``: MONAI per image; ``device``: psfh.training.batch_augment on the batch), the
training step with each precision (fp32; bf16 autocast). Medians over repeats, after a warm-up.

    OMP_NUM_THREADS=2 flock /tmp/psfh-heavy.lock python -m experiments.profile_train_step \
        --out docs/results/gpu/profile_cpu.txt

On a GPU the same script (``--device cuda``) times what a draw would run; the numbers in
profile_cpu.txt are the CPU's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from experiments.common import ROOT
from psfh.io.dataset import find_samples, load_arrays
from psfh.model.bases import EMBEDDED_PACKAGE_DIR, get_base
from psfh.model.inference import mask_logits
from psfh.model.lora import make_lora_config
from psfh.model.psfh_model import PSFHModel
from psfh.training.augment import paper_augmentations
from psfh.training.batch_augment import BatchAugmentation
from psfh.training.loop import keep_frozen_statistics, trainable_parameters
from psfh.training.loss import segmentation_loss
from psfh.training.sources import ImageSource


def timed(function, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--data-repeats", type=int, default=20, help="timed data steps per placement")
    p.add_argument("--step-repeats", type=int, default=3, help="timed training steps per precision")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--out", type=Path, default=None, help="write the report here too")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    ids, images, labels = load_arrays(find_samples(ROOT / "examples"), progress=False)
    model = PSFHModel.from_base("lite-medsam", ["fold_0"], make_lora_config(
        4, 16, encoder_targets=get_base("lite-medsam").encoder_targets("all")), device=device,
        base_folder=EMBEDDED_PACKAGE_DIR)
    size, config = model.config.input_size, model.config
    sources = {place: ImageSource(images, torch.as_tensor(labels), size, config.pixel_mean, config.pixel_std,
                                  augmentation, ids=ids, device=device)
               for place, augmentation in (("cpu", paper_augmentations()), ("device", BatchAugmentation()))}
    batch = torch.arange(args.batch_size) % len(ids)
    generator = torch.Generator().manual_seed(0)

    data_seconds = {}
    for place, source in sources.items():
        data_seconds[place] = statistics.median(timed(lambda: source.batch(batch, generator, True), args.data_repeats))

    network = model.network
    network.set_adapter("fold_0")
    optimizer = torch.optim.AdamW(trainable_parameters(network).values(), lr=5e-4)
    loss_fn = segmentation_loss()
    inputs, batch_labels = sources["device"].batch(batch, generator, True)
    inputs = {k: v.to(device) for k, v in inputs.items()}

    def step(precision: str):
        network.train()
        keep_frozen_statistics(network)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = mask_logits(network, size, **inputs)
        loss = loss_fn(logits.float(), batch_labels[:, None].to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step_seconds = {precision: statistics.median(timed(lambda: step(precision), args.step_repeats))
                    for precision in ("fp32", "bf16")}

    b = args.batch_size
    lines = ["profile of one paper-recipe training step (experiments/profile_train_step.py)",
             f"command: OMP_NUM_THREADS={args.threads} flock /tmp/psfh-heavy.lock python -m experiments.profile_train_step "
             f"--batch-size {b} --data-repeats {args.data_repeats} --step-repeats {args.step_repeats} --device {args.device}",
             f"device {device}, {args.threads} thread(s), torch {torch.__version__}, batch {b} of examples/ (8 frames, "
             f"256 x 256), LiteMedSAM, encoder LoRA rank 4 (every qkv) + decoder LoRA rank 16; medians",
             "",
             "data step (batch assembly + augmentation), seconds per batch:"]
    lines += [f"  augment on {place:6s} {s:8.4f} s  ({s / b * 1000:.1f} ms per image)" for place, s in data_seconds.items()]
    lines += ["forward + backward + AdamW step, seconds per batch:"]
    lines += [f"  {precision:4s} {s:8.3f} s  ({s / b:.2f} s per image)" for precision, s in step_seconds.items()]
    lines += ["images/s (data step, then training step, one after the other in one process):"]
    for place, data in data_seconds.items():
        for precision, train in step_seconds.items():
            share = data / (data + train)
            lines.append(f"  augment on {place:6s} {precision:4s} {b / (data + train):8.3f} images/s "
                         f"(data step {share:.1%} of the time)")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
