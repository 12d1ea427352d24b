"""Which TTA views to fuse, and how the model's self-agreement tracks its errors (issues 10, 12).

From the members kept by ``python -m experiments.cache_members`` (no encoder pass here), each frame is
finished as :meth:`PSFHModel.prediction_from_members` does with three view choices: ``both`` (the package's flip
TTA, the product today), ``identity`` (the frame as given) and ``flip`` (the mirror image only);
each label map is scored against the ground truth (:func:`psfh.measure.metrics.score_label_map`) and
carries the quality check's cells of psfh.batch.evaluate (the self-agreement measures, flip_aop_gap and
ps_view_dice, are always the two views').

    python -m experiments.measure_views --mode oof --out docs/results/views/oof
    python -m experiments.measure_views --mode all --ids-file docs/splits/test_ids.txt --out docs/results/views/test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from experiments.common import DEFAULT_DATA, DEFAULT_PACKAGE, kept_samples, load_members, members_folder
from psfh.batch.evaluate import ROW_COLUMNS, quality_cells
from psfh.core.files import write_csv_atomic, write_text_atomic
from psfh.io.dataset import read_ids_file
from psfh.io.images import as_uint8, load_image, load_label_map
from psfh.measure import quality
from psfh.measure.metrics import score_label_map, summarize
from psfh.model.psfh_model import PSFHModel

VIEW_CHOICES = {"both": [0, 1], "identity": [0], "flip": [1]}
SELF_AGREEMENT = ("flip_aop_gap", "ps_view_dice")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    parser.add_argument("--mode", choices=("oof", "all"), required=True)
    parser.add_argument("--ids-file", type=Path, default=None, help="default: every frame with kept members")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model = PSFHModel.from_pretrained(args.package, device="cpu", folds=[])
    folder = members_folder(args.package, args.mode)
    wanted = read_ids_file(args.ids_file) if args.ids_file else sorted(p.stem for p in folder.glob("*.safetensors"))
    samples = kept_samples(args.data, folder, wanted)
    rows = {choice: [] for choice in VIEW_CHOICES}
    for sample in samples:
        members, folds = load_members(folder, sample.id)
        image = as_uint8(load_image(sample.image_path))
        target = load_label_map(sample.label_path)
        both = model.prediction_from_members(members, image.shape[:2], folds, True, image=image)
        for choice, views in VIEW_CHOICES.items():
            prediction = both if choice == "both" else model.prediction_from_members(
                members[:, views], image.shape[:2], folds, False, image=image)
            # The model's self-agreement is the two views' (both's), whichever views are fused.
            measures = {**quality.measure(image, prediction.label_map, aop=prediction.aop),
                        **{k: both.quality.measures[k] for k in SELF_AGREEMENT if k in both.quality.measures}}
            checked = quality.QualityCheck(reasons=quality.judge(measures), measures=measures)
            rows[choice].append({**score_label_map(sample.id, prediction.label_map, target),
                                 **quality_cells(checked)})
    summary = {}
    for choice, choice_rows in rows.items():
        write_csv_atomic(args.out / choice / "per_image.csv", ROW_COLUMNS, choice_rows)
        summary[choice] = summarize(choice_rows)
    summary["frames"] = len(samples)
    summary["members"] = str(folder)
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=1) + "\n")
    keys = ("dice_ps", "dice_fh", "dice_all", "hd_all", "aop_error_mean", "aop_challenge_error_mean")
    for choice in VIEW_CHOICES:
        print(choice, {k: None if summary[choice][k] is None else round(summary[choice][k], 3) for k in keys})
    gap = np.array([float(r["flip_aop_gap"] if r["flip_aop_gap"] is not None else "nan") for r in rows["both"]])
    print("flip_aop_gap median", float(np.nanmedian(gap)), "p95", float(np.nanpercentile(gap, 95)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
