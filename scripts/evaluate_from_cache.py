"""Out-of-fold results and ensemble ablations from cached encoder embeddings.

For packages whose adapters leave the image encoder frozen (the CPU recipe), the ensemble only
re-runs the decoder per fold, so evaluating many images and configurations is cheap once their
embeddings are cached (psfh.training.embedding_cache). The decoder path is PSFHModel's own
(``fold_probabilities_from_embeddings``, the same code ``predict`` runs after its encoder pass),
followed by the same ensemble, largest-component and AoP steps, and psfh.metrics.

    # out-of-fold: each image predicted only by the fold that did not train on it
    python scripts/evaluate_from_cache.py --model runs/cpu --cache cache/psfhs-lite-medsam \\
        --data ../shared/data/psfhs --oof --out docs/results/previous/oof
    # ablations on held-out images: 5 folds vs each single fold, TTA on / off
    python scripts/evaluate_from_cache.py --model runs/cpu --cache cache/psfhs-lite-medsam \\
        --data ../shared/data/psfhs --ids-file docs/splits/test_ids.txt --out docs/results/previous/test_ablations
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from psfh import inference  # noqa: E402
from psfh.aop import measure_aop  # noqa: E402
from psfh.data import find_samples  # noqa: E402
from psfh.data import read_ids_file, select_samples  # noqa: E402
from psfh.io import load_label_map  # noqa: E402
from psfh.metrics import aop_error, segmentation_metrics, summarize  # noqa: E402
from psfh.model import PSFHModel  # noqa: E402
from psfh.training.embedding_cache import VIEWS, load_embeddings  # noqa: E402

import torch  # noqa: E402


def score(model, embeddings, label, folds, tta) -> dict:
    members = model.fold_probabilities_from_embeddings(embeddings, folds, tta)
    mean, _ = inference.ensemble(members.flatten(0, 1))
    prediction, _ = inference.to_label_map(mean, label.shape)
    row = segmentation_metrics(prediction, label)
    predicted, truth = measure_aop(prediction).angle_deg, measure_aop(label).angle_deg
    row.update(aop_pred=predicted, aop_true=truth, aop_error=aop_error(predicted, truth))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--ids-file", type=Path)
    parser.add_argument("--oof", action="store_true", help="each image by its own held-out fold only")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model = PSFHModel.from_pretrained(args.model, device="cpu")
    samples = find_samples(args.data)
    if args.oof:
        fold_of = json.loads((Path(args.model) / "folds.json").read_text())["fold_of_id"]
        samples = [s for s in samples if s.id in fold_of]
        configs = {"oof_tta": None}
    else:
        samples = select_samples(samples, read_ids_file(args.ids_file) if args.ids_file else None)
        first = model.folds[0]  # 1 fold vs all, each with and without TTA
        configs = {"all_folds_tta": (model.folds, True), "all_folds_no_tta": (model.folds, False),
                   f"{first}_tta": ([first], True), f"{first}_no_tta": ([first], False)}
    rows = {name: [] for name in configs}
    for sample in tqdm(samples, desc="evaluating", unit="image"):
        embeddings = torch.cat([load_embeddings(args.cache, [sample.id], view) for view in VIEWS]).float()
        label = load_label_map(sample.label_path)
        for name, config in configs.items():
            folds, tta = ([fold_of[sample.id]], name == "oof_tta") if args.oof else config
            rows[name].append({"id": sample.id, **score(model, embeddings, label, folds, tta)})

    args.out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for name, table in rows.items():
        summaries[name] = summarize(table)
        with open(args.out / f"{name}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    (args.out / "summary.json").write_text(json.dumps(summaries, indent=1))
    keys = ("dice_ps", "dice_fh", "dice_all", "hd_ps", "hd_fh", "hd_all", "asd_all", "aop_error_mean",
            "aop_error_median", "score")
    print("| configuration | n | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name, summary in summaries.items():
        n = summary.get("n", len(samples))
        print(f"| {name} | {n:.0f} | " + " | ".join(f"{summary[k]:.3f}" if summary.get(k) is not None else "-"
                                              for k in keys) + " |")


if __name__ == "__main__":
    main()
