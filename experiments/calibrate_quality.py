"""Calibrate and check psfh.measure.quality (issue 12): the measures' range on data the model was not
tested on, the bounds' flag rates, and on the test frames whether flags pick out bad AoPs.

Calibration uses the ground truth of the cross-validation frames (the package's folds.json) and
the package's out-of-fold predictions: a per_image.csv with psfh.batch.evaluate's quality columns
(``python -m experiments.measure_views --mode oof``, or ``python -m psfh.evaluate --out-of-fold``). The
flags are judged again from the rows' measures with the bounds of psfh.measure.quality as they are now,
so a changed bound needs no new inference. For the model's self-agreement (ps_view_dice,
flip_aop_gap) it tabulates candidate bounds: flagged fraction and the AoP error of flagged vs
unflagged frames.
The test frames are only scored, after the bounds are fixed.

    python -m experiments.calibrate_quality --oof docs/results/views/oof/both --test docs/results/views/test/both \\
        --out docs/results/quality
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from experiments.common import BAD_AOP_ERROR_DEG, DEFAULT_DATA, DEFAULT_PACKAGE, checks_from_rows
from psfh.core.files import write_text_atomic
from psfh.io.images import as_uint8, load_image, load_label_map
from psfh.measure import quality
from psfh.model.package import read_fold_assignment

# Candidate bounds of the self-agreement checks (None: that check off), tabulated together.
DICE_CANDIDATES = (None, 0.78, 0.80, 0.82, 0.84, 0.86)
GAP_CANDIDATES = (None, 12, 16, 20, 25, 30)


def image(data: Path, sample_id: str) -> np.ndarray:
    return as_uint8(load_image(data / "image_mha" / f"{sample_id}.mha"))


def ground_truth_checks(data: Path, ids) -> list[quality.QualityCheck]:
    """The image and anatomy checks of each id on its ground-truth label map."""
    return [quality.check(image(data, i), load_label_map(data / "label_mha" / f"{i}.mha")) for i in ids]


def ranges(checks: list[quality.QualityCheck]) -> dict:
    out = {}
    for key in quality.MEASURES:
        values = np.array([c.measures[key] for c in checks if key in c.measures])
        if len(values):
            out[key] = {"min": float(values.min()), "p1": float(np.percentile(values, 1)),
                        "p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
                        "max": float(values.max())}
    return out


def aop_errors(rows: list[dict]) -> np.ndarray:
    return np.array([float(r["aop_error"] or "nan") for r in rows])


def flag_summary(checks, errors=None) -> dict:
    flagged = np.array([not c.trusted for c in checks])
    summary = {"n": len(checks), "flagged": int(flagged.sum()), "flagged_fraction": float(flagged.mean()),
               "reasons": sorted({r.split(" (")[0].split(":")[0] for c in checks for r in c.reasons})}
    if errors is not None:
        summary.update(split_errors(flagged, errors))
    return summary


def split_errors(flagged: np.ndarray, errors: np.ndarray) -> dict:
    """AoP error (degrees) of the flagged and the unflagged frames."""
    out = {}
    for name, rows in (("flagged", flagged), ("unflagged", ~flagged)):
        values = errors[rows & ~np.isnan(errors)]
        out[f"aop_error_{name}_mean"] = float(values.mean()) if len(values) else None
        out[f"aop_error_{name}_median"] = float(np.median(values)) if len(values) else None
        out[f"aop_error_over_{BAD_AOP_ERROR_DEG:.0f}deg_{name}"] = int((values > BAD_AOP_ERROR_DEG).sum())
    return out


def self_agreement_table(checks, errors: np.ndarray) -> list[dict]:
    """For each pair of candidate bounds (ps_view_dice below, flip_aop_gap above), the model's
    self-agreement checks alone: how many frames they flag and those frames' AoP error."""
    dice = np.array([c.measures.get("ps_view_dice", np.nan) for c in checks])
    gaps = np.array([c.measures.get("flip_aop_gap", np.nan) for c in checks])
    table = []
    for low in DICE_CANDIDATES:
        for high in GAP_CANDIDATES:
            flagged = np.zeros(len(checks), bool)
            if low is not None:
                flagged |= np.nan_to_num(dice, nan=1.0) < low
            if high is not None:
                flagged |= np.nan_to_num(gaps, nan=0.0) > high
            table.append({"min_ps_view_dice": low, "max_flip_aop_gap": high, "flagged": int(flagged.sum()),
                          "flagged_fraction": float(flagged.mean()), **split_errors(flagged, errors)})
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    parser.add_argument("--oof", type=Path, required=True, help="folder with the out-of-fold per_image.csv")
    parser.add_argument("--test", type=Path, default=None, help="folder with the test frames' per_image.csv")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    cv_ids = sorted(read_fold_assignment(args.package))
    ground_truth = ground_truth_checks(args.data, cv_ids)
    oof_rows = list(csv.DictReader(open(args.oof / "per_image.csv")))
    oof = checks_from_rows(oof_rows)
    bounds = ("MIN_GREY_LEVELS", "MIN_DARK_FRACTION", "MIN_FH_SOLIDITY", "MIN_PS_SOLIDITY", "PS_TO_FH_AREA",
              "MAX_BORDER_PIXELS", "MIN_PS_FH_GAP", "MAX_PS_ELEVATION", "MAX_FLIP_AOP_GAP", "MIN_PS_VIEW_DICE",
              "MAX_STABILITY_GAP")
    report = {"bounds": {k: getattr(quality, k) for k in bounds},
              "ground_truth": {"ranges": ranges(ground_truth), **flag_summary(ground_truth)},
              "out_of_fold": {"source": str(args.oof), "ranges": ranges(oof),
                              **flag_summary(oof, aop_errors(oof_rows)),
                              "self_agreement_bounds": self_agreement_table(oof, aop_errors(oof_rows))}}
    if args.test is not None:
        test_rows = list(csv.DictReader(open(args.test / "per_image.csv")))
        test = checks_from_rows(test_rows)
        report["test"] = {"source": str(args.test), **flag_summary(test, aop_errors(test_rows)),
                          "self_agreement_bounds": self_agreement_table(test, aop_errors(test_rows)),
                          "flagged_ids": {r["id"]: c.reasons for r, c in zip(test_rows, test) if not c.trusted}}
    write_text_atomic(args.out / "calibration.json", json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "ranges"} if isinstance(v, dict) else v
                      for k, v in report.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
