"""Issue 25, levers a and e: other ways to take the pubic symphysis's axis from the same ensemble output.

Every lever here re-uses the kept ensemble members (``python -m experiments.cache_members``: for
each out-of-fold frame, the held-out fold's class probabilities on both TTA views), so no encoder
runs. The head, its tangent and the AoP's geometry stay psfh.measure.aop's; only the PS axis (its
direction, then its ends) changes. Per frame and lever: the clinical AoP error and the PS axis error
against the expert's label map (psfh.measure.aop_error_sources); per lever, the paired difference
from the shipped construction with an exam-block bootstrap interval (psfh.measure.compare).

Levers:
    shipped          argmax of the fused probabilities, largest component, area moments (the product)
    soft_moments     probability-weighted moments of P(PS) near the largest component (lever a)
    members_mean     each member's own axis, averaged as lines (doubled angles) (lever a)
    threshold_T      the PS mask is P(PS) > T (not the argmax), then its largest component (lever a)
    no_lcc           every PS pixel of the argmax, not only the largest component (lever a)
    boundary         second moments of the outline's pixels, not of the area (lever e)
    min_rectangle    the long side of the smallest enclosing rectangle (lever e)
    prior_W          the axis angle pulled towards the expert outlines' mean angle, weight W fitted
                     on the other folds' frames and expert outlines (lever e: a learned shape prior)

    python -m experiments.ps_axis_levers --ids-file docs/splits/oof_every4th_ids.txt \\
        --out docs/results/ps_axis/levers_oof
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from tqdm import tqdm

from experiments.common import BAD_AOP_ERROR_DEG, DEFAULT_DATA, DEFAULT_PACKAGE, kept_samples, load_members, members_folder
from psfh.core.files import write_csv_atomic, write_text_atomic
from psfh.core.labels import FH, PS, largest_component, largest_components
from psfh.io.dataset import find_samples, read_ids_file
from psfh.io.images import load_label_map
from psfh.measure.aop import far_tangent_point, inside_convex_hull, mask_points, measure_aop
from psfh.measure.aop_error_sources import line_angle_deg, ps_axis_direction
from psfh.measure.compare import exam_of, paired_difference
from psfh.model import inference
from psfh.model.package import read_fold_assignment

THRESHOLDS = (0.3, 0.4, 0.6, 0.7)
SOFT_FLOOR = 0.05  # P(PS) below this is noise, not outline
SOFT_REACH_PX = 3  # how far around the largest component soft weights count


def axis_angle(direction: np.ndarray) -> float:
    """A line's angle in [0, 180) degrees (x right, y down)."""
    return float(np.degrees(np.arctan2(direction[1], direction[0])) % 180.0)


def direction_of(angle_deg: float) -> np.ndarray:
    return np.array([np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))])


def weighted_axis(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Unit principal direction of weighted points (N x 2, N weights)."""
    centre = (points * weights[:, None]).sum(0) / weights.sum()
    centred = points - centre
    covariance = (centred * weights[:, None]).T @ centred / weights.sum()
    return np.linalg.eigh(covariance)[1][:, -1]


def mean_line_angle(angles_deg: list[float]) -> float:
    """The mean of undirected line angles: average on the doubled angle's circle."""
    doubled = np.radians(2 * np.asarray(angles_deg))
    return float(np.degrees(np.arctan2(np.sin(doubled).mean(), np.cos(doubled).mean())) / 2 % 180.0)


def aop_with_axis(ps: np.ndarray, fh: np.ndarray, direction: np.ndarray | None) -> tuple[float | None, np.ndarray | None]:
    """The AoP when the PS axis has ``direction`` (through the PS mask's centroid; its ends are the
    extreme projections of the mask): psfh.measure.aop's apex rule and far tangent. -> (degrees or None, direction)."""
    if direction is None or not ps.any() or not fh.any():
        return None, direction
    ps_points, fh_points = mask_points(ps), mask_points(fh)
    centre = ps_points.mean(0)
    projections = (ps_points - centre) @ direction
    ends = centre + projections.min() * direction, centre + projections.max() * direction
    head_centre = fh_points.mean(0)
    if np.linalg.norm(ends[0] - head_centre) <= np.linalg.norm(ends[1] - head_centre):
        superior, apex = ends[1], ends[0]
    else:
        superior, apex = ends
    if np.allclose(superior, apex) or inside_convex_hull(apex, fh_points):
        return None, direction
    return far_tangent_point(apex, superior, fh_points)[1], direction


def boundary_axis(ps: np.ndarray) -> np.ndarray | None:
    outline = ps & ~ndimage.binary_erosion(ps)
    return None if outline.sum() < 3 else weighted_axis(mask_points(outline), np.ones(int(outline.sum())))


def min_rectangle_axis(ps: np.ndarray) -> np.ndarray | None:
    """Direction of the long side of the smallest-area enclosing rectangle (rotating calipers over hull edges)."""
    points = mask_points(ps)
    try:
        hull = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        return None
    best = None
    for start, end in zip(hull, np.roll(hull, -1, axis=0)):
        edge = (end - start) / np.linalg.norm(end - start)
        normal = np.array([-edge[1], edge[0]])
        along, across = hull @ edge, hull @ normal
        extent = (np.ptp(along), np.ptp(across))
        if best is None or extent[0] * extent[1] < best[0]:
            best = (extent[0] * extent[1], edge if extent[0] >= extent[1] else normal)
    return best[1]


def lever_axes(members: torch.Tensor, size: tuple[int, int]) -> tuple[dict, np.ndarray, np.ndarray]:
    """-> ({lever: (ps mask, fh mask, direction or None)}, shipped label map, fused probabilities)."""
    labels, probabilities = inference.to_label_map(inference.ensemble(members.flatten(0, 1))[0], size)
    ps, fh = labels == PS, labels == FH
    p_ps = probabilities[PS]
    levers = {"shipped": (ps, fh, ps_axis_direction(labels))}

    near = ndimage.binary_dilation(ps, iterations=SOFT_REACH_PX) & (p_ps > SOFT_FLOOR)
    levers["soft_moments"] = (ps, fh, weighted_axis(mask_points(near), p_ps[near]) if ps.any() else None)

    angles = []
    for member in members.flatten(0, 1):
        member_labels, _ = inference.to_label_map(member, size)
        direction = ps_axis_direction(member_labels)
        if direction is not None:
            angles.append(axis_angle(direction))
    levers["members_mean"] = (ps, fh, direction_of(mean_line_angle(angles)) if angles else None)

    for threshold in THRESHOLDS:
        mask = largest_component(p_ps > threshold)
        levers[f"threshold_{threshold:g}"] = (mask, fh, ps_axis_direction(np.where(mask, PS, 0)) if mask.any() else None)

    raw = probabilities.argmax(0) == PS
    levers["no_lcc"] = (raw, fh, None if not raw.any() else weighted_axis(mask_points(raw), np.ones(int(raw.sum()))))
    levers["boundary"] = (ps, fh, boundary_axis(ps) if ps.any() else None)
    levers["min_rectangle"] = (ps, fh, min_rectangle_axis(ps) if ps.sum() >= 3 else None)
    return levers, labels, probabilities


def fit_prior_weights(rows: list[dict], fold_of: dict[str, str], expert_angles: dict[str, float]) -> dict:
    """For each fold: the weight W in [0, 1] (on the predicted angle; 1 - W on the prior's mean
    angle) that minimises the mean PS axis error on the OTHER folds' frames, and that prior mean from
    the other folds' expert outlines. -> {fold: (W, mean angle)}; under None, fitted on every frame
    (for frames no fold held out: the test frames)."""
    fitted = {}
    for fold in [*sorted(set(fold_of.values())), None]:
        others = [row for row in rows if fold_of.get(row["id"]) != fold and fold_of.get(row["id"]) is not None
                  and row["shipped_angle"] is not None]
        prior = mean_line_angle([angle for i, angle in expert_angles.items() if fold_of.get(i) != fold])
        if not others:  # nothing out of fold to fit on (e.g. only test frames): no prior
            fitted[fold] = (1.0, prior)
            continue
        best = min(np.linspace(0, 1, 21), key=lambda w: np.mean([
            line_angle_deg(direction_of(blend(row["shipped_angle"], prior, w)), direction_of(row["expert_angle"]))
            for row in others]))
        fitted[fold] = (float(best), prior)
    return fitted


def blend(angle: float, prior: float, weight: float) -> float:
    """``weight`` x angle + (1 - weight) x prior, for lines (through the nearer copy of the prior)."""
    difference = (angle - prior + 90.0) % 180.0 - 90.0
    return (prior + weight * difference) % 180.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    parser.add_argument("--ids-file", type=Path, required=True)
    parser.add_argument("--mode", default="oof", help="which kept members (experiments.cache_members --mode)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    folder = members_folder(args.package, args.mode)
    samples = kept_samples(args.data, folder, read_ids_file(args.ids_file))
    fold_of = read_fold_assignment(args.package)
    every_id = [s.id for s in find_samples(args.data)]
    exams = exam_of(every_id)
    expert_angles = {}
    for sample in find_samples(args.data):  # every expert outline the folds trained on: the prior's data
        if sample.id in fold_of:
            direction = ps_axis_direction(load_label_map(sample.label_path))
            if direction is not None:
                expert_angles[sample.id] = axis_angle(direction)

    rows = []
    for sample in tqdm(samples, desc="levers", unit="frame", mininterval=30):
        expert = load_label_map(sample.label_path)
        expert_aop = measure_aop(expert).angle_deg
        expert_direction = ps_axis_direction(expert)
        members, _ = load_members(folder, sample.id)
        levers, _, _ = lever_axes(members, expert.shape)
        row = {"id": sample.id, "fold": fold_of.get(sample.id), "aop_true": expert_aop,
               "expert_angle": axis_angle(expert_direction),
               "shipped_angle": None if levers["shipped"][2] is None else axis_angle(levers["shipped"][2]),
               "_masks": (levers["shipped"][0], levers["shipped"][1])}
        for name, (ps, fh, direction) in levers.items():
            aop, _ = aop_with_axis(ps, fh, direction)
            row[f"{name}_aop_error"] = None if aop is None or expert_aop is None else abs(aop - expert_aop)
            row[f"{name}_axis_error"] = None if direction is None else line_angle_deg(direction, expert_direction)
        # The shipped construction through this script's geometry must be psfh.measure.aop's own.
        shipped_aop = measure_aop(largest_components(np.where(levers["shipped"][0], PS, 0) + np.where(levers["shipped"][1], FH, 0)))
        if shipped_aop.angle_deg is not None and row["shipped_aop_error"] is not None:
            assert abs(abs(shipped_aop.angle_deg - expert_aop) - row["shipped_aop_error"]) < 1e-6, sample.id
        rows.append(row)

    fitted = fit_prior_weights(rows, fold_of, expert_angles)
    for row in rows:
        weight, prior = fitted[row["fold"]]  # fold None: a test frame
        ps, fh = row.pop("_masks")
        direction = None if row["shipped_angle"] is None else direction_of(blend(row["shipped_angle"], prior, weight))
        aop, _ = aop_with_axis(ps, fh, direction)
        row["prior_aop_error"] = None if aop is None or row["aop_true"] is None else abs(aop - row["aop_true"])
        row["prior_axis_error"] = None if direction is None else line_angle_deg(direction, direction_of(row["expert_angle"]))

    lever_names = [key[: -len("_aop_error")] for key in rows[0] if key.endswith("_aop_error")]
    summary = {"frames": len(rows), "members": args.mode, "prior_weights": fitted,
               "expert_axis_angle_spread_deg": float(np.degrees(np.sqrt(-2 * np.log(np.hypot(
                   np.cos(np.radians(2 * np.array(list(expert_angles.values())))).mean(),
                   np.sin(np.radians(2 * np.array(list(expert_angles.values())))).mean())))) / 2),
               "levers": {}}
    for name in lever_names:
        errors = {row["id"]: row[f"{name}_aop_error"] for row in rows}
        axis = {row["id"]: row[f"{name}_axis_error"] for row in rows}
        measured = np.array([e for e in errors.values() if e is not None])
        axis_measured = np.array([e for e in axis.values() if e is not None])
        entry = {"aop_error_mean": float(measured.mean()), "aop_error_median": float(np.median(measured)),
                 "aop_over_15": float((measured > BAD_AOP_ERROR_DEG).mean()), "measured": len(measured),
                 "axis_error_mean": float(axis_measured.mean()), "axis_error_median": float(np.median(axis_measured))}
        if name != "shipped":
            entry["aop_vs_shipped"] = str(paired_difference(errors, {r["id"]: r["shipped_aop_error"] for r in rows}, exams))
            entry["axis_vs_shipped"] = str(paired_difference(axis, {r["id"]: r["shipped_axis_error"] for r in rows}, exams))
        summary["levers"][name] = entry

    args.out.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    write_csv_atomic(args.out / "per_frame.csv", columns, rows)
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"{len(rows)} frames ({args.mode} members); expert PS axis angle spread (circular SD) "
          f"{summary['expert_axis_angle_spread_deg']:.1f} deg; prior weights {fitted}")
    print("| lever | AoP error mean | median | > 15 deg | PS axis error mean | median | AoP vs shipped [95% CI] | axis vs shipped |")
    print("|---|---|---|---|---|---|---|---|")
    for name, entry in summary["levers"].items():
        print(f"| {name} | {entry['aop_error_mean']:.2f} | {entry['aop_error_median']:.2f} | {entry['aop_over_15']:.1%} | "
              f"{entry['axis_error_mean']:.2f} | {entry['axis_error_median']:.2f} | {entry.get('aop_vs_shipped', '-')} | "
              f"{entry.get('axis_vs_shipped', '-')} |")


if __name__ == "__main__":
    main()
