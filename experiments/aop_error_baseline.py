"""Issue 25, part 1: where the AoP error comes from, as shipped, out of fold and on the test frames, per exam.

Scores kept ensemble members (experiments.cache_members, experiments.soup_check) fused by psfh's own
functions (experiments.common.fused_label_map), exactly as psfh-evaluate scores a prediction
(psfh.measure.metrics.score_label_map, with the error sources of psfh.measure.aop_error_sources:
PS axis error, inferior-apex distance, AoP error with the expert's PS or head). Writes, per set,
per_image.csv, summary.json (psfh.measure.metrics.summarize) and per_exam.csv (exams: the blocks of
consecutive ids of psfh.measure.compare.exam_of), and prints a markdown table.

Sets (members folder, ids):
    oof        the held-out fold x flip of every 4th cross-validation frame (the package's own
               out-of-fold answer)
    oof_soup   the soup of the four other folds x flip, same frames (the default mode, out of fold)
    test_soup  the shipped soup x flip (the default) on the 100 test frames

    python -m experiments.aop_error_baseline --out docs/results/ps_axis/baseline
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from experiments.common import DEFAULT_DATA, DEFAULT_PACKAGE, OOF_IDS_FILE, ROOT, TEST_IDS_FILE, fused_label_map, kept_samples, load_members, members_folder
from psfh.core.files import write_csv_atomic, write_text_atomic
from psfh.io.dataset import find_samples, read_ids_file
from psfh.io.images import load_label_map
from psfh.measure.aop_error_sources import ERROR_SOURCE_COLUMNS
from psfh.measure.compare import exam_of
from psfh.measure.metrics import SCORE_COLUMNS, score_label_map, summarize

SETS = {"oof": ("oof", OOF_IDS_FILE), "oof_soup": ("soup_oof", OOF_IDS_FILE), "test_soup": ("soup_test", TEST_IDS_FILE)}
EXAM_COLUMNS = ("exam", "first_id", "frames", "aop_error_mean", *(f"{key}_mean" for key in ERROR_SOURCE_COLUMNS))


def per_exam(rows: list[dict], exams: dict[str, int]) -> list[dict]:
    """Means of the AoP error and its sources per exam (None where no frame of it measures one)."""
    grouped = defaultdict(list)
    for row in rows:
        grouped[exams[row["id"]]].append(row)
    table = []
    for exam, members in sorted(grouped.items()):
        entry = {"exam": exam, "first_id": members[0]["id"], "frames": len(members)}
        for key in ("aop_error", *ERROR_SOURCE_COLUMNS):
            values = [row[key] for row in members if row[key] is not None]
            entry[f"{key}_mean"] = round(float(np.mean(values)), 3) if values else None
        table.append(entry)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    parser.add_argument("--sets", nargs="+", choices=tuple(SETS), default=list(SETS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    exams = exam_of([s.id for s in find_samples(args.data)])
    print("| set | frames | exams | AoP error mean | median | > 15 deg | PS axis error mean | median | p90 | "
          "apex distance px | AoP error, expert PS | AoP error, expert head |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.sets:
        mode, ids_file = SETS[name]
        folder = members_folder(args.package, mode)
        samples = kept_samples(args.data, folder, read_ids_file(ROOT / ids_file))
        rows = []
        for sample in samples:
            label = load_label_map(sample.label_path)
            label_map, _ = fused_label_map(load_members(folder, sample.id)[0], label.shape)
            rows.append(score_label_map(sample.id, label_map, label))
        summary = summarize(rows)
        exam_rows = per_exam(rows, exams)
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(out / "per_image.csv", SCORE_COLUMNS, rows)
        write_csv_atomic(out / "per_exam.csv", EXAM_COLUMNS, exam_rows)
        write_text_atomic(out / "summary.json", json.dumps({**summary, "members": mode, "ids_file": ids_file}, indent=1) + "\n")
        s = summary
        print(f"| {name} | {s['n']} | {len(exam_rows)} | {s['aop_error_mean']:.2f} | {s['aop_error_median']:.2f} | "
              f"{s['aop_error_over_15']:.1%} | {s['ps_axis_error_deg_mean']:.2f} | {s['ps_axis_error_deg_median']:.2f} | "
              f"{s['ps_axis_error_deg_p90']:.2f} | {s['ps_apex_distance_px_mean']:.2f} | "
              f"{s['aop_error_expert_ps_mean']:.2f} | {s['aop_error_expert_fh_mean']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
