"""Calibrate and check psfh.quality (issue 12): the measures' range on data the model was not
tested on, the bounds' flag rates, and on the test frames whether flags pick out bad AoPs.

Calibration uses the ground truth of the cross-validation frames (the package's folds.json) and
the package's out-of-fold label maps (``python -m psfh.evaluate --out-of-fold --save-label-maps``).
The test frames are only scored, after the bounds are fixed: flagged fraction and AoP error of
flagged vs unflagged frames (their label maps from ``python -m psfh.evaluate --save-label-maps``).

    python scripts/calibrate_quality.py --oof runs/eval/gpu2-paper-oof4 --test runs/eval/gpu2-paper-test \\
        --out docs/results/quality
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from psfh import quality  # noqa: E402
from psfh.files import write_text_atomic  # noqa: E402
from psfh.io import as_uint8, load_image, load_label_map  # noqa: E402
from psfh.package import read_fold_assignment  # noqa: E402

MEASURES = ("grey_levels", "dark_fraction", "fh_solidity", "ps_solidity", "ps_to_fh_area", "border_pixels")


def image(data: Path, sample_id: str) -> np.ndarray:
    return as_uint8(load_image(data / "image_mha" / f"{sample_id}.mha"))


def checked(data: Path, ids, maps: Path | None) -> list[quality.QualityCheck]:
    """The checks of each id: on its ground truth (maps None) or on a label map written for it."""
    results = []
    for sample_id in ids:
        labels = (load_label_map(data / "label_mha" / f"{sample_id}.mha") if maps is None
                  else load_label_map(maps / f"{sample_id}.png"))
        results.append(quality.check(image(data, sample_id), labels))
    return results


def ranges(checks: list[quality.QualityCheck]) -> dict:
    out = {}
    for key in MEASURES:
        values = np.array([c.measures[key] for c in checks])
        out[key] = {"min": float(values.min()), "p1": float(np.percentile(values, 1)),
                    "p99": float(np.percentile(values, 99)), "max": float(values.max())}
    return out


def flag_summary(checks, errors=None) -> dict:
    flagged = np.array([not c.trusted for c in checks])
    summary = {"n": len(checks), "flagged": int(flagged.sum()), "flagged_fraction": float(flagged.mean()),
               "reasons": sorted({r.split(" (")[0].split(":")[0] for c in checks for r in c.reasons})}
    if errors is not None:
        errors = np.array(errors, float)
        for name, rows in (("flagged", flagged), ("unflagged", ~flagged)):
            values = errors[rows & ~np.isnan(errors)]
            summary[f"aop_error_{name}_mean"] = float(values.mean()) if len(values) else None
            summary[f"aop_error_{name}_median"] = float(np.median(values)) if len(values) else None
            summary[f"aop_error_over_15deg_{name}"] = int((values > 15).sum())
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "psfhs")
    parser.add_argument("--package", type=Path, default=ROOT / "models" / "psfh-lite-medsam")
    parser.add_argument("--oof", type=Path, required=True, help="evaluate --out-of-fold output with label_maps/")
    parser.add_argument("--test", type=Path, default=None, help="evaluate output on the test frames, label_maps/")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    cv_ids = sorted(read_fold_assignment(args.package))
    oof_rows = list(csv.DictReader(open(args.oof / "per_image.csv")))
    ground_truth = checked(args.data, cv_ids, None)
    oof = checked(args.data, [r["id"] for r in oof_rows], args.oof / "label_maps")
    report = {"bounds": {k: getattr(quality, k) for k in ("MIN_GREY_LEVELS", "MIN_DARK_FRACTION", "MIN_FH_SOLIDITY",
                                                          "MIN_PS_SOLIDITY", "PS_TO_FH_AREA", "MAX_BORDER_PIXELS")},
              "ground_truth": {"ranges": ranges(ground_truth), **flag_summary(ground_truth)},
              "out_of_fold": {"ranges": ranges(oof),
                              **flag_summary(oof, [float(r["aop_error"] or "nan") for r in oof_rows])}}
    if args.test is not None:
        test_rows = list(csv.DictReader(open(args.test / "per_image.csv")))
        test = checked(args.data, [r["id"] for r in test_rows], args.test / "label_maps")
        report["test"] = flag_summary(test, [float(r["aop_error"] or "nan") for r in test_rows])
        report["test"]["flagged_ids"] = {r["id"]: c.reasons for r, c in zip(test_rows, test) if not c.trusted}
    write_text_atomic(args.out / "calibration.json", json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "ranges"} if isinstance(v, dict) else v
                      for k, v in report.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
