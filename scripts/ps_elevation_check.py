"""A candidate check (issue 12): is the predicted pubic symphysis' long axis steeper than experts draw it?

The PS long axis's elevation is its angle with the image rows, folded into 0-90 deg so that
mirrored exams and the axis's direction do not matter. Its distribution on the expert outlines of
the 978 cross-validation frames is the anatomy; on the package's predictions (out of fold, and the
100 test frames) a steep axis may be a tilted, wrong PS, which is where most out-of-fold AoP error
comes from (scripts/aop_error_sources.py). For each bound: how many frames the shipped checks plus
"elevation above the bound" flag, their AoP error against the rest's, and how many of the frames
with errors over 15 deg they catch; and the share of expert outlines the bound alone would flag.

    python scripts/ps_elevation_check.py > docs/results/quality/ps_elevation.txt
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from cache_members import fused_label_map, load_members, members_folder  # noqa: E402
from psfh.aop import measure_aop  # noqa: E402
from psfh.data import find_samples, read_ids_file  # noqa: E402
from psfh.io import load_label_map  # noqa: E402

BOUNDS_DEG = (30, 32, 34, 36, 38, 40, 45, 50)
BAD_DEG = 15.0
# The rows scripts/measure_views.py wrote: the AoP error and the shipped checks' verdict per frame.
SETS = {"out of fold": ("oof", "docs/results/views/oof/both/per_image.csv"),
        "test": ("all", "docs/results/views/test/both/per_image.csv")}


def ps_elevation(label_map: np.ndarray) -> float | None:
    """Angle in degrees (0-90) between the PS long axis (as the AoP measures it) and the image rows."""
    measurement = measure_aop(label_map)
    if measurement.ps_superior is None:
        return None
    dx, dy = np.subtract(measurement.ps_inferior, measurement.ps_superior)
    return float(np.degrees(np.arctan2(abs(dy), abs(dx))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "psfhs")
    parser.add_argument("--package", type=Path, default=ROOT / "models" / "psfh-lite-medsam")
    args = parser.parse_args()
    test_ids = set(read_ids_file(ROOT / "docs/splits/test_ids.txt"))
    expert = np.array([e for e in (ps_elevation(load_label_map(s.label_path))
                                   for s in find_samples(args.data) if s.id not in test_ids) if e is not None])
    print(f"expert outlines ({len(expert)} cross-validation frames): PS elevation percentiles "
          f"1/5/50/95/99/max = {' / '.join(f'{v:.1f}' for v in np.percentile(expert, [1, 5, 50, 95, 99, 100]))} deg")
    frames = {}
    for title, (mode, rows_file) in SETS.items():
        folder = members_folder(args.package, mode)
        found = []
        for row in csv.DictReader(open(ROOT / rows_file)):
            if row["aop_error"] == "":
                continue
            members, _ = load_members(folder, row["id"])
            label_map, _ = fused_label_map(members, (256, 256))
            elevation = ps_elevation(label_map)
            found.append((float(row["aop_error"]), row["trusted"] != "True", np.nan if elevation is None else elevation))
        frames[title] = np.array(found, dtype=float)
    print(f"shipped checks plus 'PS elevation above the bound'; AoP error over {BAD_DEG:.0f} deg = bad")
    for bound in BOUNDS_DEG:
        cells = [f"bound {bound} deg: experts {100 * (expert > bound).mean():4.1f} %"]
        for title, table in frames.items():
            error, shipped, elevation = table.T
            flagged, bad = (shipped > 0) | (elevation > bound), error > BAD_DEG
            added = int(((elevation > bound) & (shipped == 0)).sum())
            cells.append(f"{title}: {int(flagged.sum())}/{len(error)} flagged (+{added}), error "
                         f"{error[flagged].mean():.1f} / {error[~flagged].mean():.1f} deg, "
                         f"{int((flagged & bad).sum())} of {int(bad.sum())} bad caught")
        print(" | ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
