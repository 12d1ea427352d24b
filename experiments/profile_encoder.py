"""Where a fold's encoder time goes on the CPU (issue 13's profile), and what two changes saved.

1. The torch profiler's table of one fold's adapted encoder part (the TinyViT stages after the
   shared prefix, on the two flip views), with the fold's LoRA merged (psfh.model.merged_folds, the
   default) and with peft's unmerged layers.
2. The window attention with its relative-position bias as a 3-D heads x N x N mask (torch's
   math path) and as a 1 x heads x N x N mask (the CPU flash kernel), at each stage's shapes.
3. The whole 10-member ensemble on an example frame, merged and unmerged, and how far apart the
   answers are.

    python -m experiments.profile_encoder --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from experiments.common import ROOT
from psfh.model.merged_folds import MergedFoldWeights
from psfh.model.psfh_model import PSFHModel
from psfh.model.tiny_vit import TinyViTBlock

def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: first calls pick kernels and allocate
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def peft_unmerged():
    """Context: PSFHModel runs peft's own unmerged LoRA layers (the path before psfh.model.merged_folds)."""
    supports = MergedFoldWeights.supports
    MergedFoldWeights.supports = lambda self, fold: False
    try:
        yield
    finally:
        MergedFoldWeights.supports = supports


def profile_fold_part(model: PSFHModel, fold: str, repeats: int) -> None:
    encoder = model.base_model.vision_encoder
    stage = model._shared_encoder_stages
    views = torch.randn(2, 3, model.config.input_size, model.config.input_size, generator=torch.Generator().manual_seed(0))
    hidden = encoder.forward_prefix(views, stage)
    print(f"shared prefix (patch embedding + {stage} stage(s)), 2 views: "
          f"{median_seconds(lambda: encoder.forward_prefix(views, stage), repeats):.3f} s")
    merged_weights = model._merged_encoder
    print(f"merged weights per fold: {merged_weights.merged_bytes / 2**20:.1f} MiB over "
          f"{len(merged_weights.layers)} LoRA layers")

    def run():
        with model._fold_encoder(fold):
            return encoder.forward_from(hidden, stage).last_hidden_state

    for label, path in (("merged (default)", nullcontext()), ("peft unmerged", peft_unmerged())):
        with path:
            seconds = median_seconds(run, repeats)
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                run()
        print(f"\n{fold}'s adapted part, 2 views, {label}: {seconds:.3f} s")
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


def time_attention_masks(model: PSFHModel, repeats: int) -> None:
    print("window attention, bias as 3-D vs 4-D mask (ms per call, 2 views):")
    for index, layer in enumerate(model.base_model.vision_encoder.layers):
        block = next((m for m in layer.modules() if isinstance(m, TinyViTBlock)), None)
        if block is None:  # a convolutional stage: no attention
            continue
        attention = block.attn
        per_side = -(-block.resolution // block.window)
        batch, heads, tokens = 2 * per_side * per_side, attention.num_heads, block.window ** 2
        generator = torch.Generator().manual_seed(index)
        q, k, v = (torch.randn(batch, heads, tokens, attention.head_dim, generator=generator) for _ in range(3))
        bias = attention.attention_biases[:, attention.attention_bias_idxs].detach()
        three_d = median_seconds(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias), repeats * 5)
        four_d = median_seconds(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None]), repeats * 5)
        difference = (F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
                      - F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])).abs().max().item()
        print(f"  stage {index}: q {tuple(q.shape)}: 3-D {three_d * 1e3:.1f} ms, 4-D {four_d * 1e3:.1f} ms, "
              f"max difference {difference:.1e}")


def time_ensemble(model: PSFHModel, image: Path, repeats: int) -> None:
    results = {}
    for label, path in (("merged", nullcontext()), ("peft unmerged", peft_unmerged())):
        with path:
            seconds = median_seconds(lambda: model.predict(image), repeats)
            results[label] = model.predict(image)
        print(f"ensemble ({len(model.folds)} folds x 2 views) on {image.name}, {label}: {seconds:.2f} s")
    merged, plain = results["merged"], results["peft unmerged"]
    print(f"  max probability difference {np.abs(merged.probabilities - plain.probabilities).max():.1e}, "
          f"label maps identical on {(merged.label_map == plain.label_map).mean():.2%} of pixels, "
          f"AoP {merged.aop.angle_deg:.2f} / {plain.aop.angle_deg:.2f} deg")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="package folder or hub id (default: the embedded package)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "image_mha" / "03811.mha")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = PSFHModel.from_pretrained(args.model, device="cpu")  # None: the embedded package
    if model.encoder_scope == "none":
        print("this package's adapters leave the encoder alone: nothing per fold to profile")
        return 0
    with torch.inference_mode():
        profile_fold_part(model, model.folds[0], args.repeats)
        time_attention_masks(model, args.repeats)
    time_ensemble(model, args.image, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
