"""Measure box correction (issue 12): a user's rough box around PS and/or FH, on the test frames.

For each frame, boxes are the ground-truth structure's bounding box with every coordinate moved
by a random integer in [-jitter, +jitter] pixels (seeded), as a user's two clicks would be. The
correction runs the product's own path, ``PSFHModel.decode(embeddings, boxes=...)``: the base's
box-prompted decoder on the base embedding, fused with the ensemble's automatic label map. The
automatic result is read from label maps the package wrote earlier (``python -m psfh.evaluate
--save-label-maps``; the shipped package's answers are pinned by a golden test), so a run
costs one base encoder pass per frame (float32, as ``embed(..., for_prompts=True)`` makes it)
instead of the full ensemble.

    python -m psfh.evaluate --data ../shared/data/psfhs --ids-file docs/splits/test_ids.txt \\
        --out runs/eval/shipped-test --save-label-maps
    python -m experiments.measure_correction --automatic runs/eval/shipped-test/label_maps \\
        --out docs/results/correction/test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from experiments.common import DEFAULT_DATA, ROOT, TEST_IDS_FILE
from psfh.core.files import write_csv_atomic, write_text_atomic
from psfh.core.labels import FH, PS
from psfh.io.dataset import find_samples, read_ids_file, select_samples
from psfh.io.images import as_uint8, load_image, load_label_map
from psfh.measure.aop import measure_aop
from psfh.measure.metrics import SCORE_COLUMNS, score_label_map, summarize
from psfh.model.psfh_model import ImageEmbeddings, Prediction, PSFHModel

CONDITIONS = {"automatic": (), "ps_box": ("ps",), "fh_box": ("fh",), "both_boxes": ("ps", "fh")}
KEYS = ("dice_ps", "dice_fh", "dice_all", "hd_all", "aop_error_mean", "aop_error_median", "aop_challenge_error_mean")


def jittered_box(label: np.ndarray, value: int, jitter: int, rng: np.random.Generator) -> tuple[float, ...]:
    rows, cols = np.nonzero(label == value)
    box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], float)
    return tuple((box + rng.integers(-jitter, jitter + 1, 4)).tolist())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--ids-file", type=Path, default=ROOT / TEST_IDS_FILE)
    parser.add_argument("--model", default=None, help="the package (default: the embedded one)")
    parser.add_argument("--automatic", type=Path, required=True, help="the package's label maps, <id>.png")
    parser.add_argument("--jitter", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", default=None, help="psfh.model.prompts.box_outline's policy for both structures "
                        "(default: each structure's, psfh.model.prompts.DEFAULT_POLICY)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    # The base alone serves the correction: with the automatic result given, decode runs only the
    # base's box-prompted decoder (adapters off), never a fold adapter.
    model = PSFHModel.from_pretrained(args.model, device="cpu", folds=[])
    samples = select_samples(find_samples(args.data), read_ids_file(args.ids_file))
    rng = np.random.default_rng(args.seed)
    rows = {name: [] for name in CONDITIONS}
    seconds = []
    for sample in samples:
        label = load_label_map(sample.label_path)
        automatic_map = load_label_map(args.automatic / f"{sample.id}.png")
        boxes = {"ps": jittered_box(label, PS, args.jitter, rng), "fh": jittered_box(label, FH, args.jitter, rng)}
        loaded = load_image(sample.image_path)
        with torch.inference_mode():
            base = model.base_model.get_image_embeddings(model.preprocess(loaded.pixels, sample.id))
        automatic = Prediction(label_map=automatic_map, probabilities=np.zeros(0), disagreement=np.zeros(0),
                               aop=measure_aop(automatic_map), fold_aop_deg={}, folds=[], tta=True)
        embeddings = ImageEmbeddings(image=as_uint8(loaded), name=sample.id, folds=[], tta=True,
                                     precision="fp32", per_fold={}, base=base, automatic=automatic)
        for name, structures in CONDITIONS.items():
            start = time.perf_counter()
            prediction = model.decode(embeddings, boxes={s: boxes[s] for s in structures} or None,
                                      box_policy=args.policy)
            if structures:
                seconds.append(time.perf_counter() - start)
            rows[name].append(score_label_map(sample.id, prediction.label_map, label))
    summaries = {name: summarize(table) for name, table in rows.items()}
    for name, table in rows.items():
        write_csv_atomic(args.out / f"{name}.csv", SCORE_COLUMNS, table)
    summary = {"conditions": summaries, "policy": args.policy or "default (per structure)", "jitter_px": args.jitter,
               "seed": args.seed,
               "frames": len(samples),
               "correction_seconds_median": float(np.median(seconds)), "threads": torch.get_num_threads()}
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print("| boxes given | " + " | ".join(KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    for name, s in summaries.items():
        print(f"| {name} | " + " | ".join(f"{s[k]:.3f}" if s.get(k) is not None else "-" for k in KEYS) + " |")
    print(f"correction: median {np.median(seconds):.3f} s per decode ({torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
