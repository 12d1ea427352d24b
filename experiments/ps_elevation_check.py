"""How the PS-elevation check's bound was chosen (issue 12; psfh.measure.quality.MAX_PS_ELEVATION): is the
predicted pubic symphysis' long axis steeper than experts draw it?

The PS long axis's elevation (psfh.measure.quality.ps_elevation) is its angle with the image
rows, folded into 0-90 deg so that mirrored exams and the axis's direction do not matter. Its
distribution on the expert outlines of the 978 cross-validation frames is the anatomy; on the
package's predictions (out of fold, and the 100 test frames) a steep axis may be a tilted, wrong
PS, which is where most out-of-fold AoP error comes from (docs/results/quality/aop_error_sources.txt).
For each bound: how many frames the other checks (judged again from the rows' measures) plus
"elevation above the bound" flag, their AoP error against the rest's, and how many of the bad
AoPs (experiments.common.BAD_AOP_ERROR_DEG) they catch; and the share of expert outlines the
bound alone would flag. The rows are experiments.measure_views's (both views).

    python -m experiments.ps_elevation_check > docs/results/quality/ps_elevation.txt
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from experiments.common import BAD_AOP_ERROR_DEG, DEFAULT_DATA, ROOT, TEST_IDS_FILE, VIEW_ROWS, checks_from_rows
from psfh.io.dataset import find_samples, read_ids_file
from psfh.io.images import load_label_map
from psfh.measure import quality

BOUNDS_DEG = (30, 32, 34, 36, 38, 40, 45, 50)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    test_ids = set(read_ids_file(ROOT / TEST_IDS_FILE))
    expert = np.array([e for e in (quality.ps_elevation(load_label_map(s.label_path))
                                   for s in find_samples(args.data) if s.id not in test_ids) if e is not None])
    print(f"expert outlines ({len(expert)} cross-validation frames): PS elevation percentiles "
          f"1/5/50/95/99/max = {' / '.join(f'{v:.1f}' for v in np.percentile(expert, [1, 5, 50, 95, 99, 100]))} deg")
    frames = {}
    for title, rows_file in VIEW_ROWS.items():
        rows = [row for row in csv.DictReader(open(ROOT / rows_file)) if row["aop_error"] != ""]
        # The other checks: the rows judged again without their elevation.
        others = checks_from_rows([{**row, "ps_elevation": ""} for row in rows])
        frames[title] = np.array([(float(row["aop_error"]), not check.trusted, float(row["ps_elevation"] or "nan"))
                                  for row, check in zip(rows, others)])
    print(f"the other checks plus 'PS elevation above the bound'; AoP error over {BAD_AOP_ERROR_DEG:.0f} deg = bad")
    for bound in BOUNDS_DEG:
        cells = [f"bound {bound} deg: experts {100 * (expert > bound).mean():4.1f} %"]
        for title, table in frames.items():
            error, others, elevation = table.T
            flagged, bad = (others > 0) | (elevation > bound), error > BAD_AOP_ERROR_DEG
            added = int(((elevation > bound) & (others == 0)).sum())
            cells.append(f"{title}: {int(flagged.sum())}/{len(error)} flagged (+{added}), error "
                         f"{error[flagged].mean():.1f} / {error[~flagged].mean():.1f} deg, "
                         f"{int((flagged & bad).sum())} of {int(bad.sum())} bad caught")
        print(" | ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
