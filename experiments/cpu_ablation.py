"""The CPU-recipe ablation (issue 10): decoder-side variants trained on one fold from cached embeddings.

Every variant trains fold ``--fold`` of the shipped package's split (its folds.json: the same
978 cross-validation frames, the 100 test frames never seen) on the frozen LiteMedSAM base's
cached embeddings (psfh.training.embedding_cache), keeps the best epoch on the fold's validation
frames (early stopping with ``--patience``), then predicts those frames exactly as
``PSFHModel.predict`` does after its encoder pass (both flip views, soft ensemble, largest
components) and scores them with psfh.batch.evaluate's scoring (Dice, HD, ASD, both AoP definitions).

    python -m experiments.cpu_ablation --data ../shared/data/psfhs --variant a_decoder_lora \\
        --out docs/results/ablation
    python -m experiments.cpu_ablation --table docs/results/ablation     # the markdown table

Variants (VARIANTS below): a) the former CPU recipe (decoder LoRA) to convergence; b) the whole
mask decoder trainable (the CPU recipe now); c) a) plus shifts of embedding and label together on the embedding grid;
d) a) plus a loss that weighs the PS (class weights); cd) c) and d) together; e) b) plus the PS
second-moment (orientation) loss of psfh.training.loss (issue 25, lever d).

Issue 25 ran b) and e) on a smaller budget, the same for both (every 8th training frame, fold_0's
every-4th out-of-fold frames for validation and scoring):

    python -m experiments.cpu_ablation --variant b_whole_decoder --train-stride 8 --val-ids docs/splits/oof_every4th_ids.txt \
        --epochs 10 --out docs/results/ps_axis/moment_loss
    python -m experiments.cpu_ablation --variant e_ps_moments --train-stride 8 --val-ids docs/splits/oof_every4th_ids.txt \
        --epochs 10 --out docs/results/ps_axis/moment_loss
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from experiments.common import DEFAULT_DATA, DEFAULT_PACKAGE, ROOT
from psfh.core.files import cache_root, write_csv_atomic, write_text_atomic
from psfh.io.dataset import find_samples, id_sort_key, load_arrays, read_ids_file
from psfh.measure.metrics import SCORE_COLUMNS, score_label_map, summarize
from psfh.model.lora import make_lora_config
from psfh.model.package import fold_name, read_fold_assignment
from psfh.model.psfh_model import PSFHModel
from psfh.training.embedding_cache import EmbeddingCache
from psfh.training.loop import train_fold
from psfh.training.recipe import preset
from psfh.training.sources import CachedEmbeddingSource

# name -> (what it is, recipe overrides). The decoder-LoRA variants keep the learning rate they
# were run with (5e-4, the CPU preset's before b won).
LORA = {"decoder": "lora", "learning_rate": 5e-4}
VARIANTS = {
    "a_decoder_lora": ("decoder LoRA r16 + output tokens, flips (the CPU recipe before b)", LORA),
    "b_whole_decoder": ("the whole mask decoder trainable (SAMed-style), flips: the CPU recipe now",
                        {"decoder": "whole", "learning_rate": 1e-4}),
    "c_grid_shift": ("a) + shifts of embedding and label together (up to 4 cells = 16 px)",
                     {**LORA, "shift_cells": 4}),
    "d_class_weights": ("a) + class weights 1 / 3 / 1 (background / PS / FH) in Dice and CE",
                        {**LORA, "class_weights": (1.0, 3.0, 1.0)}),
    "cd_shift_and_weights": ("c) and d) together", {**LORA, "shift_cells": 4, "class_weights": (1.0, 3.0, 1.0)}),
    "e_ps_moments": ("b) + the PS second-moment (orientation) loss, weight 0.5",
                     {"decoder": "whole", "learning_rate": 1e-4, "ps_moment_weight": 0.5}),
}
TABLE_KEYS = ("dice_ps", "dice_fh", "dice_all", "hd_all", "asd_all", "aop_error_mean", "aop_challenge_error_mean")


def run_variant(args) -> None:
    description, overrides = VARIANTS[args.variant]
    out = args.out / args.variant
    folds = read_fold_assignment(args.package)
    held_out = fold_name(args.fold)
    # Training frames: every --train-stride-th of the other folds (neighbouring frames of an exam
    # are near-duplicates, and each frame costs an encoder pass per view); validation: all of the fold.
    training = set(sorted((i for i in folds if folds[i] != held_out), key=id_sort_key)[:: args.train_stride])
    validation = {i for i in folds if folds[i] == held_out}
    if args.val_ids is not None:  # a subset of the fold's frames, e.g. the every-4th out-of-fold frames
        validation &= set(read_ids_file(args.val_ids))
    samples = [s for s in find_samples(args.data) if s.id in validation or s.id in training]
    ids, images, labels = load_arrays(samples, progress=False)

    torch.manual_seed(0)
    config = preset("cpu", epochs=args.epochs, patience=args.patience, **overrides)
    lora = make_lora_config(0, 16, decoder=config.decoder)
    model = PSFHModel.from_base("lite-medsam", [held_out], lora, device="cpu", base_folder=args.package)
    start = time.perf_counter()  # the adapters leave the encoder alone: the model's base serves the cache
    embeddings = EmbeddingCache(model).build(ids, list(images))
    cache_seconds = time.perf_counter() - start
    source = CachedEmbeddingSource(embeddings, torch.as_tensor(labels), shift_cells=config.shift_cells)
    train = torch.tensor([n for n, i in enumerate(ids) if folds[i] != held_out])
    val = torch.tensor([n for n, i in enumerate(ids) if i in validation])
    result = train_fold(model.network, held_out, args.fold, source, train, val, config, model.config.input_size,
                        cache_root() / "ablation" / f"{args.variant}-stride{args.train_stride}-{args.epochs}ep" / held_out, Accelerator(cpu=True), resume=True, progress=False)

    rows = []
    for n in val.tolist():
        views = torch.stack([embeddings[view][n] for view in embeddings]).float()
        members = model.fold_probabilities_from_embeddings(views, [held_out], tta=True)
        prediction = model.prediction_from_members(members, labels[n].shape, [held_out], True, name=ids[n])
        rows.append(score_label_map(ids[n], prediction.label_map, labels[n]))
    write_csv_atomic(out / "per_image.csv", SCORE_COLUMNS, rows)
    summary = {**summarize(rows), "variant": args.variant, "description": description, "fold": held_out,
               "recipe": config.to_dict(), "best_epoch": result.best_epoch,
               "epochs_run": len(result.history), "history": result.history,
               "seconds_per_epoch": sum(h["seconds"] for h in result.history) / len(result.history),
               "train_frames": len(train), "train_stride": args.train_stride, "val_frames": len(val),
               "cache_seconds": cache_seconds,
               "threads": torch.get_num_threads()}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in (*TABLE_KEYS, "best_epoch", "epochs_run", "seconds_per_epoch")}))


def table(folder: Path) -> str:
    lines = ["| variant | " + " | ".join(TABLE_KEYS) + " | best / run epochs | min per epoch |",
             "|---|" + "---|" * (len(TABLE_KEYS) + 2)]
    for name in VARIANTS:
        path = folder / name / "summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        cells = [f"{s[k]:.3f}" if s.get(k) is not None else "-" for k in TABLE_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['best_epoch']} / {s['epochs_run']} | "
                     f"{s['seconds_per_epoch'] / 60:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--train-stride", type=int, default=2, help="train on every N-th frame of the other folds")
    parser.add_argument("--val-ids", type=Path, default=None,
                        help="validate and score only the fold's frames listed here (default: all of the fold)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "ablation")
    parser.add_argument("--table", type=Path, default=None, help="print the table of the variants in this folder")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return 0
    if not args.variant:
        parser.error("give --variant or --table")
    run_variant(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
