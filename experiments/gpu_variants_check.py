"""Issue 25's GPU lever: packages trained on a lent GPU against the shipped package, on the same
frames, paired, with exam-block intervals.

Reads per_image.csv of experiments.aop_error_baseline for the shipped package (``--baseline``) and
for each variant (``--variant NAME=FOLDER``), set by set (oof: the held-out fold x flip; oof_soup:
the soup of the other folds x flip; test_soup: the package's soup x flip on the 100 test frames),
and prints a markdown table: means, frames off by more than 15 deg, and the paired differences
against the shipped package with 95 % intervals from resampling whole exams (psfh.measure.compare).

    python -m experiments.gpu_variants_check --baseline docs/results/ps_axis/baseline \
        --variant paper=docs/results/ps_axis/gpu26_paper \
        --variant paper_ps_moments=docs/results/ps_axis/gpu26_paper_ps_moments --baseline-name run2 \
        > docs/results/ps_axis/gpu26.md
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from psfh.measure.compare import exam_of, paired_difference

SETS = ("oof", "oof_soup", "test_soup")
PAIRED = ("aop_error", "ps_axis_error_deg", "dice_ps", "dice_fh")


def read_rows(path: Path) -> dict[str, dict[str, float | None]]:
    """per_image.csv -> {id: {column: float or None}}."""
    with path.open(newline="") as handle:
        return {row["id"]: {k: (float(v) if v not in ("", "None", "nan") else None) for k, v in row.items() if k != "id"}
                for row in csv.DictReader(handle)}


def column(rows: dict, key: str) -> dict[str, float | None]:
    return {i: row.get(key) for i, row in rows.items()}


def describe(rows: dict) -> str:
    aop = np.array([r["aop_error"] for r in rows.values() if r["aop_error"] is not None])
    axis = np.array([r["ps_axis_error_deg"] for r in rows.values() if r["ps_axis_error_deg"] is not None])
    dice = np.array([r["dice_ps"] for r in rows.values() if r["dice_ps"] is not None])
    return (f"{aop.mean():.2f} / {np.median(aop):.2f} | {100 * np.mean(aop > 15):.1f} % | "
            f"{axis.mean():.2f} / {np.median(axis):.2f} | {dice.mean():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--variant", action="append", required=True, help="NAME=FOLDER (aop_error_baseline's --out)")
    parser.add_argument("--baseline-name", default="shipped", help="the baseline's name in the table")
    args = parser.parse_args()
    variants = dict(entry.split("=", 1) for entry in args.variant)
    print("| set | package | frames | AoP error mean / median | > 15 deg | PS axis error mean / median | Dice PS | "
          + " | ".join(f"{key} vs {args.baseline_name}" for key in PAIRED) + " |")
    print("|" + "---|" * (7 + len(PAIRED)))
    for name in SETS:
        base_file = args.baseline / name / "per_image.csv"
        if not base_file.is_file():
            continue
        base = read_rows(base_file)
        exams = exam_of(base)
        print(f"| {name} | {args.baseline_name} | {len(base)} | {describe(base)} |" + " |" * len(PAIRED))
        for variant, folder in variants.items():
            path = Path(folder) / name / "per_image.csv"
            if not path.is_file():
                continue
            rows = read_rows(path)
            if set(rows) != set(base):
                raise SystemExit(f"{path}: not the frames of {base_file}")
            cells = []
            for key in PAIRED:
                d = paired_difference(column(rows, key), column(base, key), exams)
                digits = 4 if key.startswith("dice") else 2
                cells.append(f"{d.mean:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]")
            print(f"| {name} | {variant} | {len(rows)} | {describe(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
