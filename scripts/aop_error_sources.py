"""Which structure's outline the AoP errors come from, and whether the tangent point's visibility
tells the bad AoPs apart (issue 12).

From the members kept by scripts/cache_members.py (no encoder pass here), each frame's fused label
map is measured three ways against the expert's AoP: as predicted; with the predicted PS and the
expert's FH; with the expert's PS and the predicted FH. The structure whose swap keeps most of the
error is where it comes from. Then three candidate checks on the far tangent point (where the AoP
line touches the predicted head), ranked against the AoP error as
scripts/rank_uncertainty_measures.py ranks the others: the brightest pixel near it (is the skull
edge visible there?), that brightness over the head's 90th percentile, and the model's FH
probability near it.

    python scripts/aop_error_sources.py > docs/results/quality/aop_error_sources.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from cache_members import KEPT_SETS, fused_label_map, kept_frames  # noqa: E402
from calibrate_quality import BAD_AOP_ERROR_DEG  # noqa: E402
from psfh.measure.aop import measure_aop  # noqa: E402
from psfh.io.images import as_uint8, load_image, load_label_map  # noqa: E402
from psfh.core.labels import FH, PS  # noqa: E402
from psfh.model.prompts import fuse  # noqa: E402


def measure_frame(members, image: np.ndarray, expert: np.ndarray) -> dict | None:
    label_map, probabilities = fused_label_map(members, expert.shape)
    # One structure swapped for the expert's; where they overlap, the predicted one keeps its pixels.
    angles = {"predicted": measure_aop(label_map),
              "predicted PS, expert FH": measure_aop(fuse(label_map, {FH: (expert == FH) & (label_map != PS)})),
              "expert PS, predicted FH": measure_aop(fuse(label_map, {PS: (expert == PS) & (label_map != FH)}))}
    truth = measure_aop(expert).angle_deg
    if truth is None or any(m.angle_deg is None for m in angles.values()):
        return None
    gray = image.mean(axis=-1) if image.ndim == 3 else image.astype(float)
    x, y = (int(round(v)) for v in angles["predicted"].tangent_point)
    near = np.s_[max(0, y - 4):y + 5, max(0, x - 4):x + 5]
    brightest = float(gray[near].max())
    return {**{name: m.angle_deg - truth for name, m in angles.items()},
            "tangent brightness": brightest,
            "tangent brightness / head p90": brightest / max(float(np.percentile(gray[label_map == FH], 90)), 1.0),
            "FH probability at tangent": float(probabilities[FH][near].mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "psfhs")
    parser.add_argument("--package", type=Path, default=ROOT / "models" / "psfh-lite-medsam")
    args = parser.parse_args()
    for title, (mode, ids_file) in KEPT_SETS.items():
        rows, frames = [], 0
        for sample, members in kept_frames(args.data, args.package, mode, ids_file):
            frames += 1
            row = measure_frame(members, as_uint8(load_image(sample.image_path)), load_label_map(sample.label_path))
            if row is not None:
                rows.append({"id": sample.id, **row})
        error = np.abs([r["predicted"] for r in rows])
        bad = error > BAD_AOP_ERROR_DEG
        print(f"{title}: {len(rows)} frames ({frames - len(rows)} without an AoP in one of the three "
              f"measurements left out), {bad.sum()} with an AoP error over {BAD_AOP_ERROR_DEG:.0f} deg")
        print("  mean |AoP error|, all frames / the bad ones:")
        for name in ("predicted", "predicted PS, expert FH", "expert PS, predicted FH"):
            values = np.abs([r[name] for r in rows])
            print(f"    {name:26s} {values.mean():5.2f} / {values[bad].mean():5.2f} deg")
        if mode == "all":
            print("  per exam (20 frames each, ids in order): mean signed error, predicted / PS swap / FH swap")
            for start in range(0, len(rows), 20):
                block = rows[start:start + 20]
                cells = " / ".join(f"{np.mean([r[n] for r in block]):+6.1f}"
                                   for n in ("predicted", "predicted PS, expert FH", "expert PS, predicted FH"))
                print(f"    {block[0]['id']}-{block[-1]['id']}: {cells} deg")
        print("  candidate checks on the tangent point (higher = more doubt), worst 5 % flagged:")
        flagged = max(1, int(0.05 * len(rows)))
        for name in ("tangent brightness", "tangent brightness / head p90", "FH probability at tangent"):
            doubt = -np.array([r[name] for r in rows])
            worst = np.argsort(-doubt)[:flagged]
            print(f"    {name:30s} Spearman {spearmanr(doubt, error)[0]:+.2f}; flagged mean error "
                  f"{error[worst].mean():5.1f} deg, {int(bad[worst].sum())} of {int(bad.sum())} bad ones caught")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
