"""The fold soup against the fold ensemble, on the same frames, paired, with exam-block intervals.

Out of fold, honestly: a frame held out by fold k is predicted by the soup of the OTHER folds
(leave-one-fold-out soups, exact: none of them saw it), beside fold k itself (the package's own
out-of-fold answer, kept by experiments.cache_members --mode oof). On the 100 test frames the
package's soup (as it ships) is set against the full ensemble (5 folds x flip) and fold_0 x flip, as
psfh-evaluate scored them (the committed docs/results/test_gpu_paper*/per_image.csv). Each soup
variant is fused by psfh's own functions (experiments.common.fused_label_map) and scored by
psfh.measure.metrics, as psfh-evaluate scores; differences are paired per frame, with 95 %
intervals from resampling whole exams (psfh.measure.compare).

    python -m experiments.soup_check cache --set oof      # the soups' members (2 encoder passes a frame)
    python -m experiments.soup_check cache --set test
    python -m experiments.soup_check table > docs/results/soup/summary.md
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from experiments.common import (DEFAULT_DATA, DEFAULT_PACKAGE, OOF_IDS_FILE, ROOT, TEST_IDS_FILE, fused_label_map,
                                kept_samples, load_members, members_folder)
from psfh.core.files import atomic_target, write_csv_atomic
from psfh.io.dataset import find_samples, read_ids_file, select_samples
from psfh.io.images import load_image, load_label_map
from psfh.measure.compare import exam_of, paired_difference
from psfh.measure.metrics import SCORE_COLUMNS, score_label_map
from psfh.model.package import read_fold_assignment
from psfh.model.psfh_model import PSFHModel
from psfh.model.soup import SOUP

SETS = {"oof": OOF_IDS_FILE, "test": TEST_IDS_FILE}
OUT = ROOT / "docs" / "results" / "soup"
METRICS = ("dice_ps", "dice_fh", "dice_all", "hd_all", "aop_error", "aop_challenge_error")
REFERENCE = {"oof": "held-out fold x flip", "test": "ensemble (5 folds x flip)"}


def soup_folder(package: Path, which: str) -> Path:
    return members_folder(package, f"soup_{which}")


def cache(args) -> None:
    """Keep the soups' members (1 x 2 x 3 x S x S: the soup on both views) of every frame of the set."""
    model = PSFHModel.from_pretrained(args.package, device="cpu")
    out = soup_folder(args.package, args.set)
    out.mkdir(parents=True, exist_ok=True)
    samples = select_samples(find_samples(args.data), read_ids_file(ROOT / SETS[args.set]))
    fold_of = read_fold_assignment(args.package)
    # Out of fold, one soup per held-out fold (the other folds'); on the test frames the soup of all.
    groups = ({fold: [s for s in samples if fold_of[s.id] == fold] for fold in model.folds} if args.set == "oof"
              else {None: samples})
    start, done = time.perf_counter(), 0
    for held_out, group in groups.items():
        todo = [s for s in group if not (out / f"{s.id}.safetensors").is_file()]
        if not todo:
            continue
        if held_out is not None:
            model.add_soup([fold for fold in model.folds if fold != held_out])
        elif model.soup is None:  # the test frames: the package's own soup, as it ships, else one made here
            model.add_soup()
        for sample in todo:
            pixels = model.preprocess(load_image(sample.image_path).pixels, sample.id)
            members = model.fold_probabilities(pixels, [SOUP], tta=True)
            with atomic_target(out / f"{sample.id}.safetensors") as temporary:
                save_file({SOUP: members[0].half().contiguous()}, str(temporary))
            done += 1
            if done % 10 == 0:
                print(f"{done} frames, {(time.perf_counter() - start) / done:.1f} s/frame", flush=True)
    print(f"done: {out} ({done} computed)", flush=True)


# The test frames' rows of the shipped ensemble and of fold_0 x flip, as psfh-evaluate wrote them
# (`psfh-evaluate --data ... --ids-file docs/splits/test_ids.txt [--folds fold_0]`).
EVALUATED = {REFERENCE["test"]: ROOT / "docs" / "results" / "test_gpu_paper" / "per_image.csv",
             "fold_0 x flip": ROOT / "docs" / "results" / "test_gpu_paper_fold0" / "per_image.csv"}


def variants(which: str, soup, members=None) -> dict:
    """{variant: F x V x 3 x S x S members} of one frame (out of fold, ``members`` is the held-out fold's 1 x 2)."""
    if which == "oof":
        return {REFERENCE["oof"]: members, "held-out fold, identity view": members[:, :1],
                "leave-one-fold-out soup x flip": soup, "leave-one-fold-out soup, identity view": soup[:, :1]}
    return {"soup x flip": soup, "soup, identity view": soup[:, :1]}


def evaluated_rows(ids: set[str]) -> list[dict]:
    """The committed psfh-evaluate rows (:data:`EVALUATED`) of ``ids``, numbers as floats."""
    rows = []
    for name, path in EVALUATED.items():
        with open(path, newline="") as file:
            for row in csv.DictReader(file):
                if row["id"] in ids:
                    numbers = {k: (float(v) if v else None) for k, v in row.items() if k != "id"}
                    rows.append({"variant": name, "id": row["id"], **numbers})
    return rows


def score(args, which: str) -> list[dict]:
    rows = []
    soups = soup_folder(args.package, which)
    samples = kept_samples(args.data, soups, read_ids_file(ROOT / SETS[which]))
    for sample in samples:
        soup, _ = load_members(soups, sample.id)
        members = load_members(members_folder(args.package, "oof"), sample.id)[0] if which == "oof" else None
        expert = load_label_map(sample.label_path)
        for name, chosen in variants(which, soup, members).items():
            label_map, _ = fused_label_map(chosen, expert.shape)
            rows.append({"variant": name, **score_label_map(sample.id, label_map, expert)})
    if which == "test":
        rows = evaluated_rows({sample.id for sample in samples}) + rows
    write_csv_atomic(OUT / which / "per_image.csv", ["variant", *SCORE_COLUMNS], rows)
    return rows


def table(args) -> None:
    print("# The fold soup against the fold ensemble\n")
    print("`python -m experiments.soup_check table` (from the members kept by its `cache` step); "
          "paired differences against the reference row, 95 % exam-block bootstrap intervals.\n")
    for which in SETS:
        rows = score(args, which)
        if not rows:
            print(f"## {which}: no soup members kept yet (`python -m experiments.soup_check cache --set {which}`)\n")
            continue
        ids = sorted({row["id"] for row in rows})
        every_exam = exam_of(sample.id for sample in find_samples(args.data))
        exams = {i: every_exam[i] for i in ids}
        by_variant = {}
        for row in rows:
            by_variant.setdefault(row["variant"], {})[row["id"]] = row
        reference = by_variant[REFERENCE[which]]
        title = "Out of fold" if which == "oof" else "Test"
        print(f"## {title}: {len(ids)} frames, {len(set(exams.values()))} exams\n")
        print("| variant | " + " | ".join(METRICS) + " | frames AoP > 15 deg |")
        print("|---|" + "---|" * (len(METRICS) + 1))
        for name, per_id in by_variant.items():
            means = [np.nanmean([np.nan if r[m] is None else r[m] for r in per_id.values()]) for m in METRICS]
            bad = sum(1 for r in per_id.values() if r["aop_error"] is not None and r["aop_error"] > 15)
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in means) + f" | {bad} |")
        print(f"\nDifference from '{REFERENCE[which]}' (variant - reference):\n")
        print("| variant | " + " | ".join(METRICS) + " |")
        print("|---|" + "---|" * len(METRICS))
        for name, per_id in by_variant.items():
            if name == REFERENCE[which]:
                continue
            cells = [str(paired_difference({i: r[m] for i, r in per_id.items()},
                                           {i: r[m] for i, r in reference.items()}, exams)) for m in METRICS]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print("\nAoP error (clinical) per exam, mean deg:\n")
        names = list(by_variant)
        print("| exam (first id) | frames | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for exam in sorted(set(exams.values())):
            members_ids = [i for i in ids if exams[i] == exam]
            cells = [np.nanmean([np.nan if by_variant[n][i]["aop_error"] is None else by_variant[n][i]["aop_error"]
                                 for i in members_ids]) for n in names]
            print(f"| {members_ids[0]} | {len(members_ids)} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
        print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("cache", "table"))
    parser.add_argument("--set", choices=tuple(SETS), default="oof")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    args = parser.parse_args()
    cache(args) if args.step == "cache" else table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
