"""Would a head-shape prior fix the AoP? (issues 10 and 12; measured, not adopted.)

Experts outline the fetal head as a near-ellipse even where the skull is not visible; the model
follows the visible edge. Here each fused label map's FH is replaced, before the AoP is measured, by:
``ellipse`` (the least-squares ellipse of its outer contour), ``union`` (the FH and that ellipse),
``thr0.3`` / ``thr0.2`` (the FH grown into background pixels whose FH probability exceeds 0.3 / 0.2,
largest component kept). Mean AoP error and FH Dice out of fold and on the test frames, from the
members kept by scripts/cache_members.py.

Then the same priors as quality-check candidates (issue 12): how far each variant moves the AoP,
and how far the predicted FH is from its ellipse (1 - IoU), each ranked against the AoP error
(Spearman) and with its worst 5 % flagged (how many of the AoPs off by over 15 deg that catches).

    python scripts/fh_shape_priors.py > docs/results/quality/fh_shape_priors.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from skimage.measure import EllipseModel, find_contours  # noqa: E402

from cache_members import KEPT_SETS, fused_label_map, kept_frames  # noqa: E402
from calibrate_quality import BAD_AOP_ERROR_DEG, rank_candidate  # noqa: E402
from psfh.measure.aop import measure_aop  # noqa: E402
from psfh.io.images import load_label_map  # noqa: E402
from psfh.core.labels import FH, PS, largest_component  # noqa: E402
from psfh.model.prompts import fuse  # noqa: E402


def ellipse_mask(mask: np.ndarray) -> np.ndarray | None:
    """The filled least-squares ellipse of the mask's longest contour (H x W bool), or None."""
    contours = find_contours(mask.astype(float), 0.5)
    if not contours:
        return None
    points = max(contours, key=len)[:, ::-1]  # (x, y)
    model = EllipseModel.from_estimate(points)
    if not model:
        return None
    (xc, yc), (a, b), theta = model.center, model.axis_lengths, model.theta
    rows, cols = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    u = (cols - xc) * np.cos(theta) + (rows - yc) * np.sin(theta)
    v = -(cols - xc) * np.sin(theta) + (rows - yc) * np.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def with_head(label_map: np.ndarray, head: np.ndarray) -> np.ndarray:
    """The label map with its FH replaced by ``head`` (the PS keeps its pixels)."""
    return fuse(label_map, {FH: head & (label_map != PS)})


def variants(label_map: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    head = label_map == FH
    out = {"as predicted": label_map}
    ellipse = ellipse_mask(head)
    if ellipse is not None:
        out["ellipse"] = with_head(label_map, ellipse)
        out["union"] = with_head(label_map, ellipse | head)
    for threshold in (0.3, 0.2):
        grown = head | ((probabilities[FH] > threshold) & (label_map == 0))
        out[f"thr{threshold}"] = with_head(label_map, largest_component(grown))
    return out


def ellipse_misfit(head: np.ndarray) -> float:
    """1 - IoU of the FH mask (H x W bool) and its least-squares ellipse; 1 where none fits."""
    ellipse = ellipse_mask(head)
    if ellipse is None:
        return 1.0
    return float(1 - (head & ellipse).sum() / (head | ellipse).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "psfhs")
    parser.add_argument("--package", type=Path, default=ROOT / "models" / "psfh-lite-medsam")
    args = parser.parse_args()
    for title, kept_set in KEPT_SETS.items():
        errors, dice = {}, {}
        candidates: dict[str, list[float]] = {}
        candidate_errors: list[float] = []
        expert_misfits: list[float] = []
        for sample, members in kept_frames(args.data, args.package, *kept_set):
            expert = load_label_map(sample.label_path)
            label_map, probabilities = fused_label_map(members, expert.shape)
            truth = measure_aop(expert).angle_deg
            angles = {}
            for name, candidate in variants(label_map, probabilities).items():
                angle = angles[name] = measure_aop(candidate).angle_deg
                if truth is not None and angle is not None:
                    errors.setdefault(name, []).append(abs(angle - truth))
                head, expert_head = candidate == FH, expert == FH
                dice.setdefault(name, []).append(2 * (head & expert_head).sum() / (head.sum() + expert_head.sum()))
            predicted = angles["as predicted"]
            if truth is None or predicted is None:
                continue
            candidate_errors.append(abs(predicted - truth))
            expert_misfits.append(ellipse_misfit(expert == FH))
            candidates.setdefault("FH ellipse misfit", []).append(ellipse_misfit(label_map == FH))
            for name in ("ellipse", "union", "thr0.3", "thr0.2"):
                moved = angles.get(name)
                # a variant that loses the AoP moves it as far as can be, as in the stability check
                candidates.setdefault(f"AoP moved by {name}", []).append(90.0 if moved is None else abs(moved - predicted))
        print(f"{title}:")
        for name in errors:
            print(f"  {name:13s} AoP error mean {np.mean(errors[name]):.2f} / median {np.median(errors[name]):.2f} deg "
                  f"({len(errors[name])} frames), FH Dice {np.mean(dice[name]):.3f}")
        for name, values in candidates.items():
            print(f"  check {name:22s} {rank_candidate(np.asarray(values), np.asarray(candidate_errors))}")
        misfit, bad = np.asarray(candidates["FH ellipse misfit"]), np.asarray(candidate_errors) > BAD_AOP_ERROR_DEG
        print(f"  FH ellipse misfit, median: predicted {np.median(misfit):.3f} (bad AoPs {np.median(misfit[bad]):.3f}), "
              f"experts {np.median(expert_misfits):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
