"""Out-of-fold results and ensemble ablations from cached encoder embeddings.

For packages whose adapters leave the image encoder frozen (the CPU recipe), the ensemble only
re-runs the decoder per fold, so evaluating many images and configurations is cheap once their
embeddings are cached (psfh.training.embedding_cache, under $PSFH_CACHE or ~/.cache/psfh; missing
ones are computed). The path after the encoder is PSFHModel's own
(``fold_probabilities_from_embeddings``, then ``prediction_from_members``: the ensemble, largest components and
AoP that ``predict`` runs), scored as psfh.batch.evaluate scores.

    # out-of-fold: each image predicted only by the fold that did not train on it
    python -m experiments.evaluate_from_cache --model runs/cpu --data ../shared/data/psfhs --oof \\
        --out docs/results/previous/oof
    # ablations on held-out images: 5 folds vs each single fold, TTA on / off
    python -m experiments.evaluate_from_cache --model runs/cpu --data ../shared/data/psfhs \\
        --ids-file docs/splits/test_ids.txt --out docs/results/previous/test_ablations
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from experiments.common import DEFAULT_DATA
from psfh.core.files import write_csv_atomic, write_text_atomic
from psfh.io.dataset import find_samples, read_ids_file, select_samples
from psfh.io.images import load_image, load_label_map
from psfh.measure.metrics import SCORE_COLUMNS, score_label_map, summarize
from psfh.model.package import read_fold_assignment
from psfh.model.psfh_model import PSFHModel
from psfh.training.embedding_cache import EmbeddingCache

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: $PSFH_CACHE or ~/.cache/psfh)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--ids-file", type=Path)
    parser.add_argument("--oof", action="store_true", help="each image by its own held-out fold only")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model = PSFHModel.from_pretrained(args.model, device="cpu")
    cache = EmbeddingCache(model, args.cache)
    samples = select_samples(find_samples(args.data), read_ids_file(args.ids_file) if args.ids_file else None)
    if args.oof:
        fold_of = read_fold_assignment(model.source)
        samples = [s for s in samples if s.id in fold_of]
        configs = {"oof_tta": None}
    else:
        first = model.folds[0]  # 1 fold vs all, each with and without TTA
        configs = {"all_folds_tta": (model.folds, True), "all_folds_no_tta": (model.folds, False),
                   f"{first}_tta": ([first], True), f"{first}_no_tta": ([first], False)}
    rows = {name: [] for name in configs}
    for sample in tqdm(samples, desc="evaluating", unit="image"):
        pixels = load_image(sample.image_path).pixels
        embeddings = cache.views(pixels, sample.id)
        label = load_label_map(sample.label_path)
        for name, config in configs.items():
            folds, tta = ([fold_of[sample.id]], True) if args.oof else config
            members = model.fold_probabilities_from_embeddings(embeddings, folds, tta)
            prediction = model.prediction_from_members(members, label.shape, folds, tta, name=sample.id)
            rows[name].append(score_label_map(sample.id, prediction.label_map, label))

    summaries = {}
    for name, table in rows.items():
        summaries[name] = summarize(table)
        write_csv_atomic(args.out / f"{name}.csv", SCORE_COLUMNS, table)
    write_text_atomic(args.out / "summary.json", json.dumps(summaries, indent=1) + "\n")
    keys = ("dice_ps", "dice_fh", "dice_all", "hd_ps", "hd_fh", "hd_all", "asd_all", "aop_error_mean",
            "aop_error_median", "aop_challenge_error_mean", "score")
    print("| configuration | n | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name, summary in summaries.items():
        print(f"| {name} | {summary['n']} | " + " | ".join(f"{summary[k]:.3f}" if summary.get(k) is not None
                                                       else "-" for k in keys) + " |")


if __name__ == "__main__":
    main()
