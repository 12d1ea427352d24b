"""Does SAM's own box-prompted decoder agree with the ensemble? A candidate uncertainty (issue 12).

For each frame, the ensemble's PS and FH boxes (its label map's bounding boxes, padded by
``--pad`` px) prompt the base's box-prompted decoder (adapters off; LiteMedSAM's own, as in
the correction path, policy "sam": the box's mask replaces the structure); the measures are the
Dice of each structure between the ensemble and the cascade and the AoP difference between the
two label maps. Ranked against the ensemble's AoP error as scripts/rank_uncertainty_measures.py
ranks the other candidates.

    python scripts/cascade_agreement.py --automatic runs/eval/gpu2-paper-oof4 \\
        --ids-file docs/splits/oof_every4th_ids.txt --out docs/results/quality/cascade_oof.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from psfh.measure.aop import measure_aop  # noqa: E402
from psfh.io.dataset import find_samples, read_ids_file, select_samples  # noqa: E402
from psfh.core.files import write_csv_atomic  # noqa: E402
from psfh.io.images import as_uint8, load_image, load_label_map  # noqa: E402
from psfh.core.labels import FH, PS  # noqa: E402
from psfh.model.psfh_model import ImageEmbeddings, Prediction, PSFHModel  # noqa: E402

COLUMNS = ("id", "aop_error", "aop_auto", "aop_cascade", "aop_gap", "dice_ps", "dice_fh")


def padded_box(mask: np.ndarray, pad: int) -> tuple[float, ...] | None:
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    h, w = mask.shape
    return (max(cols.min() - pad, 0), max(rows.min() - pad, 0), min(cols.max() + pad, w - 1),
            min(rows.max() + pad, h - 1))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "psfhs")
    parser.add_argument("--ids-file", type=Path, required=True)
    parser.add_argument("--automatic", type=Path, required=True, help="evaluate output: per_image.csv + label_maps/")
    parser.add_argument("--pad", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model = PSFHModel.from_pretrained(device="cpu", folds=[])
    errors = {r["id"]: r["aop_error"] for r in csv.DictReader(open(args.automatic / "per_image.csv"))}
    rows = []
    for sample in select_samples(find_samples(args.data), read_ids_file(args.ids_file)):
        automatic_map = load_label_map(args.automatic / "label_maps" / f"{sample.id}.png")
        loaded = load_image(sample.image_path)
        with torch.inference_mode():
            base = model.base_model.get_image_embeddings(model.preprocess(loaded.pixels, sample.id))
        automatic = Prediction(label_map=automatic_map, probabilities=np.zeros(0), disagreement=np.zeros(0),
                               aop=measure_aop(automatic_map), fold_aop={}, folds=[], tta=True)
        embeddings = ImageEmbeddings(image=as_uint8(loaded), name=sample.id, folds=[], tta=True, precision="fp32",
                                     per_fold={}, base=base, automatic=automatic)
        boxes = {key: padded_box(automatic_map == value, args.pad) for key, value in (("ps", PS), ("fh", FH))}
        boxes = {k: v for k, v in boxes.items() if v is not None}
        cascade = model.decode(embeddings, boxes=boxes or None, box_policy="sam").label_map
        a, c = automatic.aop.angle_deg, measure_aop(cascade).angle_deg
        rows.append({"id": sample.id, "aop_error": errors.get(sample.id) or None, "aop_auto": a, "aop_cascade": c,
                     "aop_gap": abs(a - c) if a is not None and c is not None else 90.0,
                     "dice_ps": dice(automatic_map == PS, cascade == PS), "dice_fh": dice(automatic_map == FH, cascade == FH)})
    write_csv_atomic(args.out, COLUMNS, rows)
    err = np.array([float(r["aop_error"] or "nan") for r in rows])
    ok, bad = ~np.isnan(err), err > 15
    for key, sign in (("aop_gap", 1), ("dice_ps", -1), ("dice_fh", -1)):
        x = sign * np.array([r[key] for r in rows], float)
        flagged = x > np.percentile(x, 95)
        print(f"{key}: Spearman {spearmanr(x[ok], err[ok]).correlation:+.2f}; worst 5 %: {flagged.sum()} frames, "
              f"mean AoP error {np.nanmean(err[flagged]):.1f} vs {np.nanmean(err[~flagged]):.1f}, "
              f"{int((flagged & bad).sum())} of {int(bad.sum())} over 15 deg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
