"""Measure calipers (issue 29): the AoP re-measured from a user's points of its construction, on the
100 test frames.

The user's points are the expert's own construction (:func:`psfh.measure.aop.measure_aop` on the
ground truth: the two ends of the symphysis' long axis and the point where the tangent touches the
skull), each coordinate moved by a random integer in [-jitter, +jitter] pixels (seeded), as a click
would be. They go through the product's path, :meth:`Prediction.adjusted` (no model call), on the
automatic result, and on the box-corrected one: ``PSFHModel.decode(embeddings, boxes=...)`` with both
structures boxed exactly as experiments.measure_correction boxes them (the same seed and jitter
draw the same boxes, so its "both_boxes" AoP error is reproduced here). A point the product
refuses (say, the expert's tangent point more than 2 px inside the model's head outline) is not
used: that frame keeps the AoP it had without it, as the demo does, and the refusals are counted.
The clicks' own error is measured too: the AoP of the three jittered points themselves (the expert's
construction with the clicks' noise, no model), the floor no outline can lower.

The automatic result is fused from the shipped package's members kept under $PSFH_CACHE by
``experiments.cache_members`` (``--automatic ensemble``: 5 folds x flip, the result of
docs/results/test_gpu_paper/per_image.csv, whose AoP errors this run reproduces and whose 20 frames
off by more than 15 deg are the "bad" subset) or by ``experiments.soup_check cache --set test``
(``--automatic soup``: the fold soup x flip, the package's default), with psfh's own functions.

    python -m experiments.cache_members --ids-file docs/splits/test_ids.txt --mode all
    python -m experiments.measure_calipers --automatic ensemble --out docs/results/calipers/ensemble
    python -m experiments.measure_calipers --automatic soup --out docs/results/calipers/soup
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from experiments.common import (BAD_AOP_ERROR_DEG, DEFAULT_DATA, DEFAULT_PACKAGE, ROOT, TEST_IDS_FILE,
                                fused_label_map, load_members, members_folder)
from experiments.measure_correction import jittered_box
from psfh.core.errors import PSFHInputError
from psfh.core.files import write_csv_atomic, write_text_atomic
from psfh.core.labels import FH, PS
from psfh.io.dataset import find_samples, read_ids_file, select_samples
from psfh.io.images import as_uint8, load_image, load_label_map
from psfh.measure.aop import angle_at_apex, mask_points, measure_aop, order_ends
from psfh.model.psfh_model import ImageEmbeddings, PSFHModel
from psfh.model.prediction import Prediction

# Which kept members make the automatic result, and the psfh-evaluate rows it must reproduce.
AUTOMATIC = {"ensemble": ("all", ROOT / "docs" / "results" / "test_gpu_paper" / "per_image.csv"),
             "soup": ("soup_test", ROOT / "docs" / "results" / "test_soup" / "per_image.csv")}
# The user's points per condition (names of Prediction.adjusted's arguments).
POINTS = {"none": (), "ps_ends": ("ps_ends",), "tangent_point": ("tangent_point",),
          "three_points": ("ps_ends", "tangent_point")}
BOXES = {"no_box": (), "both_boxes": ("ps", "fh")}
COLUMNS = ("id", "aop_true", "aop_pred", "aop_error", "refused")


def jittered(point, jitter: int, rng: np.random.Generator) -> tuple[float, float]:
    """A click near ``point`` (x, y): each coordinate moved by an integer in [-jitter, jitter]."""
    return tuple((np.asarray(point, float) + rng.integers(-jitter, jitter + 1, 2)).tolist())


def summarise(rows: list[dict], bad: set[str]) -> dict:
    """Mean and median AoP error over all frames and over the bad ones, and the refusals."""
    errors = np.array([row["aop_error"] for row in rows])
    bad_errors = np.array([row["aop_error"] for row in rows if row["id"] in bad])
    return {"aop_error_mean": float(errors.mean()), "aop_error_median": float(np.median(errors)),
            "bad_aop_error_mean": float(bad_errors.mean()) if len(bad_errors) else None,
            "bad_aop_error_median": float(np.median(bad_errors)) if len(bad_errors) else None,
            "refused": sum(bool(row["refused"]) for row in rows),
            "refused_bad": sum(bool(row["refused"]) for row in rows if row["id"] in bad),
            "n": len(rows), "n_bad": len(bad_errors)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--ids-file", type=Path, default=ROOT / TEST_IDS_FILE)
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    parser.add_argument("--automatic", choices=tuple(AUTOMATIC), default="ensemble")
    parser.add_argument("--jitter", type=int, default=3, help="a click's error in pixels, each coordinate")
    parser.add_argument("--box-jitter", type=int, default=5, help="as experiments.measure_correction's --jitter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    members_mode, evaluated = AUTOMATIC[args.automatic]
    folder = members_folder(args.package, members_mode)
    samples = select_samples(find_samples(args.data), read_ids_file(args.ids_file))
    missing = [s.id for s in samples if not (folder / f"{s.id}.safetensors").is_file()]
    if missing:
        print(f"{len(missing)} frames have no kept members in {folder} (first: {missing[0]}); keep them first "
              "(the commands in this script's help)", file=sys.stderr)
        return 2
    with open(evaluated, newline="") as handle:
        evaluated_aop = {row["id"]: float(row["aop_pred"]) for row in csv.DictReader(handle)}

    # The base alone serves the box correction (as experiments.measure_correction runs it).
    model = PSFHModel.from_pretrained(args.package, device="cpu", folds=[])
    box_rng = np.random.default_rng(args.seed)  # drawn as measure_correction draws: the same boxes
    click_rng = np.random.default_rng([args.seed, 29])
    rows = {(boxes, points): [] for boxes in BOXES for points in POINTS}
    adjust_seconds, reproduced, click_rows = [], [], []
    for sample in samples:
        expert = load_label_map(sample.label_path)
        truth = measure_aop(expert)
        boxes = {"ps": jittered_box(expert, PS, args.box_jitter, box_rng),
                 "fh": jittered_box(expert, FH, args.box_jitter, box_rng)}
        clicks = {"ps_ends": (jittered(truth.ps_inferior, args.jitter, click_rng),
                              jittered(truth.ps_superior, args.jitter, click_rng)),
                  "tangent_point": jittered(truth.tangent_point, args.jitter, click_rng)}
        # The clicks alone: the angle the three jittered points make (inferior end told by the
        # expert's head, as Prediction.adjusted tells it by the result's head).
        superior, inferior = order_ends(*(np.array(end) for end in clicks["ps_ends"]),
                                        mask_points(expert == FH).mean(axis=0))
        clicked = angle_at_apex(inferior, superior, np.array(clicks["tangent_point"]))
        click_rows.append({"id": sample.id, "aop_true": truth.angle_deg, "aop_pred": clicked,
                           "aop_error": abs(clicked - truth.angle_deg), "refused": ""})
        members, _ = load_members(folder, sample.id)
        automatic_map, _ = fused_label_map(members, expert.shape)
        automatic = Prediction.from_label_map(automatic_map, name=sample.id)
        reproduced.append(abs(automatic.aop.angle_deg - evaluated_aop[sample.id]))
        loaded = load_image(sample.image_path)
        with torch.inference_mode():
            base = model.base_model.get_image_embeddings(model.preprocess(loaded.pixels, sample.id))
        embeddings = ImageEmbeddings(image=as_uint8(loaded), name=sample.id, folds=[], tta=True, precision="fp32",
                                     per_fold={}, base=base, automatic=automatic)
        for box_name, structures in BOXES.items():
            corrected = model.decode(embeddings, boxes={s: boxes[s] for s in structures} or None)
            for point_name, given in POINTS.items():
                prediction, refused = corrected, ""
                if given:
                    start = time.perf_counter()
                    try:
                        prediction = corrected.adjusted(**{name: clicks[name] for name in given})
                    except PSFHInputError as error:
                        refused = str(error)
                    adjust_seconds.append(time.perf_counter() - start)
                angle = prediction.aop.angle_deg
                rows[box_name, point_name].append({
                    "id": sample.id, "aop_true": truth.angle_deg, "aop_pred": angle,
                    "aop_error": abs(angle - truth.angle_deg), "refused": refused})

    automatic_rows = rows["no_box", "none"]
    bad = {row["id"] for row in automatic_rows if row["aop_error"] > BAD_AOP_ERROR_DEG}
    summaries = {f"{b}+{p}": summarise(table, bad) for (b, p), table in rows.items()}
    for (box_name, point_name), table in rows.items():
        write_csv_atomic(args.out / f"{box_name}+{point_name}.csv", COLUMNS, table)
    write_csv_atomic(args.out / "clicks_alone.csv", COLUMNS, click_rows)
    summary = {"automatic": args.automatic, "members": str(folder.relative_to(folder.parents[2])),
               "frames": len(samples), "bad_frames": sorted(bad), "bad_threshold_deg": BAD_AOP_ERROR_DEG,
               "jitter_px": args.jitter, "box_jitter_px": args.box_jitter, "seed": args.seed,
               "automatic_vs_evaluated_max_abs_deg": float(max(reproduced)),
               "adjust_ms_median": 1000 * float(np.median(adjust_seconds)),
               "adjust_ms_p95": 1000 * float(np.percentile(adjust_seconds, 95)),
               "threads": torch.get_num_threads(), "conditions": summaries,
               "clicks_alone": summarise(click_rows, bad)}
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=1) + "\n")
    table = markdown_table(summary)
    write_text_atomic(args.out / "table.md", table)
    print(table, end="")
    return 0


def markdown_table(summary: dict) -> str:
    """The summary as the model card's table: AoP error per condition, all frames and the bad ones."""
    bad = len(summary["bad_frames"])
    lines = [f"| boxes | points placed | AoP error mean / median, {summary['frames']} frames | "
             f"mean / median, the {bad} frames off by > {summary['bad_threshold_deg']:g} deg | points refused "
             f"(of them, on the {bad}) |",
             "|---|---|---|---|---|"]
    for name, s in summary["conditions"].items():
        boxes, points = name.split("+")
        lines.append(f"| {boxes.replace('_', ' ')} | {points.replace('_', ' ')} | {s['aop_error_mean']:.2f} / "
                     f"{s['aop_error_median']:.2f} | {s['bad_aop_error_mean']:.2f} / {s['bad_aop_error_median']:.2f} | "
                     f"{s['refused']} ({s['refused_bad']}) |")
    s = summary["clicks_alone"]
    lines.append(f"| (the clicks alone: the jittered expert points' own angle) | three points | "
                 f"{s['aop_error_mean']:.2f} / {s['aop_error_median']:.2f} | {s['bad_aop_error_mean']:.2f} / "
                 f"{s['bad_aop_error_median']:.2f} | - |")
    lines.append(f"\nAutomatic result: {summary['automatic']} (members {summary['members']}), its AoPs within "
                 f"{summary['automatic_vs_evaluated_max_abs_deg']:.3f} deg of psfh-evaluate's; clicks: expert points "
                 f"+- {summary['jitter_px']} px, boxes +- {summary['box_jitter_px']} px, seed {summary['seed']}; "
                 f"Prediction.adjusted: median {summary['adjust_ms_median']:.1f} ms, 95th percentile "
                 f"{summary['adjust_ms_p95']:.1f} ms ({summary['threads']} threads).\n")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
