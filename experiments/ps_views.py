"""Issue 25, levers b and c: the pubic symphysis seen through more views, fused for the PS only.

For each out-of-fold frame, its held-out fold adapter (the model that never trained on it) sees
extra views of the frame: small rotations (lever b, within the training augmentation's range) and
zoomed crops centred on the predicted PS (lever c: the PS's outline at 1.25x and 1.6x the pixels).
Each view's class probabilities are warped back onto the frame (bilinear, with the view's coverage)
and averaged with the kept members of the plain and flipped views (experiments.cache_members); the
fused map's PS (its largest component) replaces the shipped PS, the head stays the shipped one. The
AoP is psfh.measure.aop's on that label map; errors are scored by psfh.measure.aop_error_sources and
compared with the shipped construction per exam block (psfh.measure.compare).

The views' probabilities are kept (float16, $PSFH_CACHE/members/<package key>/views_<mode>/) so a
stopped run resumes and fusions can be re-read without the encoder. Cost: one encoder pass per view.

    python -m experiments.ps_views --ids-file docs/splits/oof_every8th_ids.txt --out docs/results/ps_axis/views_oof
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from experiments.common import BAD_AOP_ERROR_DEG, DEFAULT_DATA, DEFAULT_PACKAGE, kept_samples, load_members, members_folder
from psfh.core.files import atomic_target, write_csv_atomic, write_text_atomic
from psfh.core.labels import PS, largest_component
from psfh.io.dataset import find_samples, read_ids_file
from psfh.io.images import load_image, load_label_map
from psfh.measure.aop import measure_aop
from psfh.measure.aop_error_sources import combine_structures, error_sources
from psfh.measure.compare import exam_of, paired_difference
from psfh.model import inference
from psfh.model.package import read_fold_assignment
from psfh.model.psfh_model import PSFHModel

# name -> (rotation in degrees, zoom factor): zoomed views are centred on the predicted PS.
VIEWS = {"rotate_+8": (8.0, 1.0), "rotate_-8": (-8.0, 1.0), "zoom_1.25": (0.0, 1.25), "zoom_1.6": (0.0, 1.6)}
# Which views each fusion adds to the kept plain + flipped members.
FUSIONS = {"rotations": ("rotate_+8", "rotate_-8"), "zoom_1.25": ("zoom_1.25",), "zoom_1.6": ("zoom_1.6",),
           "zooms": ("zoom_1.25", "zoom_1.6"), "all_views": tuple(VIEWS)}


def view_affine(rotation_deg: float, zoom: float, centre: np.ndarray) -> torch.Tensor:
    """2 x 3 affine (normalized coordinates, align_corners=False) that maps a view's output grid to
    the frame: view(u) = frame(A u + t). ``centre``: the zoom's centre (x, y) in [-1, 1], kept so
    that the crop stays inside the frame."""
    angle = math.radians(rotation_deg)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    reach = 1.0 - 1.0 / zoom
    shift = torch.tensor(np.clip(centre, -reach, reach), dtype=torch.float32) if zoom > 1 else torch.zeros(2)
    return torch.cat([rotation / zoom, shift[:, None]], dim=1)


def inverse_affine(affine: torch.Tensor) -> torch.Tensor:
    inverse = torch.linalg.inv(affine[:, :2])
    return torch.cat([inverse, -(inverse @ affine[:, 2:])], dim=1)


def warp(values: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """C x H x W -> C x H x W sampled at affine(grid) (bilinear, zeros outside)."""
    grid = F.affine_grid(affine[None], [1, *values.shape], align_corners=False)
    return F.grid_sample(values[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def normalized_centre(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    return np.array([(cols.mean() + 0.5) / width * 2 - 1, (rows.mean() + 0.5) / height * 2 - 1])


def compute_views(model: PSFHModel, pixels: np.ndarray, fold: str, ps_centre: np.ndarray, name: str) -> dict:
    """{view: 3 x H x W probabilities warped back onto the frame, and view + "_coverage": 1 x H x W}."""
    frame = torch.from_numpy(inference.scale_to_unit(pixels.astype(np.float32)))[None]
    kept = {}
    for view, (rotation, zoom) in VIEWS.items():
        affine = view_affine(rotation, zoom, ps_centre)
        seen = warp(frame, affine)[0].numpy()
        # The frame's range, not the view's: min-max of a zoomed crop would brighten it.
        pixel_values = inference.normalize(torch.from_numpy(seen)[None, None].clamp(0, 1),
                                           model.config.pixel_mean, model.config.pixel_std)
        if tuple(pixel_values.shape[-2:]) != (model.config.input_size,) * 2:
            raise SystemExit(f"{name}: this experiment needs frames at the model's input size")
        probabilities = model.fold_probabilities(pixel_values.to(model.device), [fold], tta=False)[0, 0]
        back = inverse_affine(affine)
        kept[view] = warp(probabilities, back).half()
        kept[view + "_coverage"] = warp(torch.ones(1, *pixels.shape), back).half()
    return kept


def fused_ps_label_map(members: torch.Tensor, views: dict, names: tuple, shipped: np.ndarray) -> np.ndarray:
    """The shipped label map with its PS replaced by the largest PS component of the mean of the
    kept members (M x 3 x H x W) and the named views (each weighted by its coverage)."""
    total = members.float().sum(0)
    weight = torch.full(total.shape[-2:], float(len(members)))
    for name in names:
        coverage = views[name + "_coverage"].float()[0]
        total = total + views[name].float() * coverage
        weight = weight + coverage
    fused = (total / weight).argmax(0).numpy()
    ps = largest_component(fused == PS)
    return combine_structures(np.where(ps, PS, 0), shipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    parser.add_argument("--ids-file", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    members_dir = members_folder(args.package, "oof")
    views_dir = members_folder(args.package, "views_oof")
    views_dir.mkdir(parents=True, exist_ok=True)
    samples = kept_samples(args.data, members_dir, read_ids_file(args.ids_file))
    fold_of = read_fold_assignment(args.package)
    exams = exam_of([s.id for s in find_samples(args.data)])
    model = None
    rows, seconds = [], []
    for index, sample in enumerate(samples):
        members, _ = load_members(members_dir, sample.id)
        label = load_label_map(sample.label_path)
        shipped, _ = inference.to_label_map(inference.ensemble(members.flatten(0, 1))[0], label.shape)
        path = views_dir / f"{sample.id}.safetensors"
        if not path.is_file():
            model = model or PSFHModel.from_pretrained(args.package, device="cpu")
            if not (shipped == PS).any():
                continue
            start = time.perf_counter()
            views = compute_views(model, load_image(sample.image_path).pixels, fold_of[sample.id],
                                  normalized_centre(shipped == PS), sample.id)
            seconds.append(time.perf_counter() - start)
            with atomic_target(path) as temporary:
                save_file({k: v.contiguous() for k, v in views.items()}, str(temporary))
            print(f"{index + 1}/{len(samples)} {np.mean(seconds):.1f} s/frame for {len(VIEWS)} views", flush=True)
        views = load_file(str(path))
        row = {"id": sample.id, "aop_true": measure_aop(label).angle_deg}
        for fusion, names in {"shipped": (), **FUSIONS}.items():
            fused = fused_ps_label_map(members.flatten(0, 1), views, names, shipped)
            sources, predicted = error_sources(fused, label), measure_aop(fused).angle_deg
            row[f"{fusion}_aop_error"] = None if predicted is None or row["aop_true"] is None else abs(predicted - row["aop_true"])
            row[f"{fusion}_axis_error"] = sources["ps_axis_error_deg"]
        rows.append(row)

    summary = {"frames": len(rows), "views": {k: list(v) for k, v in VIEWS.items()},
               "seconds_per_frame_all_views": float(np.mean(seconds)) if seconds else None, "fusions": {}}
    for fusion in ("shipped", *FUSIONS):
        errors = {r["id"]: r[f"{fusion}_aop_error"] for r in rows}
        axis = {r["id"]: r[f"{fusion}_axis_error"] for r in rows}
        measured = np.array([e for e in errors.values() if e is not None])
        axis_measured = np.array([e for e in axis.values() if e is not None])
        entry = {"aop_error_mean": float(measured.mean()), "aop_error_median": float(np.median(measured)),
                 "aop_over_15": float((measured > BAD_AOP_ERROR_DEG).mean()),
                 "axis_error_mean": float(axis_measured.mean()), "axis_error_median": float(np.median(axis_measured)),
                 "extra_encoder_passes": len(FUSIONS.get(fusion, ()))}
        if fusion != "shipped":
            entry["aop_vs_shipped"] = str(paired_difference(errors, {r["id"]: r["shipped_aop_error"] for r in rows}, exams))
            entry["axis_vs_shipped"] = str(paired_difference(axis, {r["id"]: r["shipped_axis_error"] for r in rows}, exams))
        summary["fusions"][fusion] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(args.out / "per_frame.csv", list(rows[0]), rows)
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"{len(rows)} frames")
    print("| fusion | extra passes | AoP error mean | median | > 15 deg | PS axis error mean | median | AoP vs shipped | axis vs shipped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fusion, e in summary["fusions"].items():
        print(f"| {fusion} | {e['extra_encoder_passes']} | {e['aop_error_mean']:.2f} | {e['aop_error_median']:.2f} | "
              f"{e['aop_over_15']:.1%} | {e['axis_error_mean']:.2f} | {e['axis_error_median']:.2f} | "
              f"{e.get('aop_vs_shipped', '-')} | {e.get('axis_vs_shipped', '-')} |")


if __name__ == "__main__":
    main()
