"""Measure the AoP of the fused outline, or average the members' AoPs? (issue 10, a lever for the
AoP error.)

From the members kept by ``scripts/cache_members.py`` (no encoder pass), for each frame: the AoP
of the fused label map (the product today: soft ensemble of every fold and view, then one
measurement), and the mean and median of the AoPs measured on each member's own label map (fold x
view; a member without an AoP is left out). Errors against the ground truth's AoP (psfh.measure.aop), and
the paired difference (member mean - fused) with a 95 % bootstrap interval over the blocks of
consecutive ids that the package's folds keep whole (psfh.io.dataset.id_blocks over its folds.json, and
over the rest of the ids for the test frames), since frames of one exam are correlated.

    python scripts/aop_fusion.py --mode oof --ids-file docs/splits/oof_every4th_ids.txt
    python scripts/aop_fusion.py --mode all --ids-file docs/splits/test_ids.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from cache_members import load_members, members_folder  # noqa: E402
from psfh import inference  # noqa: E402
from psfh.measure.aop import measure_aop  # noqa: E402
from psfh.io.dataset import find_samples, id_blocks, read_ids_file, select_samples  # noqa: E402
from psfh.io.images import load_label_map  # noqa: E402
from psfh.model.package import read_fold_assignment  # noqa: E402


def block_bootstrap(differences: np.ndarray, blocks: np.ndarray, draws: int = 2000, seed: int = 0) -> np.ndarray:
    """2.5th and 97.5th percentiles of the mean difference, resampling whole blocks."""
    rng = np.random.default_rng(seed)
    names = np.unique(blocks)
    members = [np.nonzero(blocks == b)[0] for b in names]
    means = [differences[np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])].mean()
             for _ in range(draws)]
    return np.percentile(means, [2.5, 97.5])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "psfhs")
    parser.add_argument("--package", type=Path, default=ROOT / "models" / "psfh-lite-medsam")
    parser.add_argument("--mode", choices=("oof", "all"), required=True)
    parser.add_argument("--ids-file", type=Path, required=True)
    args = parser.parse_args()

    folder = members_folder(args.package, args.mode)
    samples = find_samples(args.data)
    # Exam-like blocks: the cross-validation frames as the folds cut them, the others (test) alike.
    cross_validation = set(read_fold_assignment(args.package))
    block_of = {i: n for n, block in enumerate(
        id_blocks(sorted(cross_validation)) + id_blocks(sorted(s.id for s in samples if s.id not in cross_validation)))
        for i in block}
    rows = []
    for sample in select_samples(samples, read_ids_file(args.ids_file)):
        members, _ = load_members(folder, sample.id)  # F x V x 3 x S x S
        truth = load_label_map(sample.label_path)
        true_aop = measure_aop(truth).angle_deg
        fused_map, _ = inference.to_label_map(inference.ensemble(members.flatten(0, 1))[0], truth.shape)
        fused = measure_aop(fused_map).angle_deg
        each = [measure_aop(inference.to_label_map(view, truth.shape)[0]).angle_deg for fold in members for view in fold]
        each = [a for a in each if a is not None]
        if true_aop is None or fused is None or not each:
            continue
        rows.append((block_of[sample.id], abs(fused - true_aop), abs(np.mean(each) - true_aop),
                     abs(np.median(each) - true_aop)))
    table = np.array(rows)
    print(f"{args.mode}: {len(table)} frames")
    for column, name in ((1, "fused outline (today)"), (2, "mean of member AoPs"), (3, "median of member AoPs")):
        print(f"  {name}: AoP error mean {table[:, column].mean():.3f}, median {np.median(table[:, column]):.3f} deg")
    blocks = table[:, 0]
    difference = table[:, 2] - table[:, 1]
    low, high = block_bootstrap(difference, blocks)
    print(f"  member mean - fused: {difference.mean():+.3f} deg, 95 % interval over {len(np.unique(blocks))} "
          f"exam blocks [{low:+.3f}, {high:+.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
