"""The AoP of one frame exported at other sizes and placements, before and after issue 31's framing.

    OMP_NUM_THREADS=1 python docs/results/size_invariance/measure_size_invariance.py sizes \
        --ids-file docs/splits/test_ids.txt --every 10 > docs/results/size_invariance/sizes.txt
    OMP_NUM_THREADS=1 python docs/results/size_invariance/measure_size_invariance.py unchanged \
        --ids-file docs/splits/test_ids.txt > docs/results/size_invariance/unchanged_test.txt
    OMP_NUM_THREADS=1 python docs/results/size_invariance/measure_size_invariance.py unchanged \
        --examples --outputs > docs/results/size_invariance/unchanged_examples.txt
    python docs/results/size_invariance/measure_size_invariance.py resamplers \
        --ids-file docs/splits/test_ids.txt --every 10 > docs/results/size_invariance/resamplers.txt

``sizes``: each frame (256 x 256) is made into the exports of :data:`VARIANTS` (a plain resize with
Pillow, as another machine's export would be; or the frame on a larger black canvas) and segmented
by the shipped package's default (the fold soup x flip), as a user would through
``PSFHModel.predict``; "before" is the preprocessing before issue 31 (the frame min-max scaled and
resized to 256 x 256, stretched when not square; the probabilities resized back the same way),
reproduced here; "after" is psfh's own. For each variant: the AoP minus the 256 x 256 frame's, and
the Dice of each structure between the variant's label map brought back to the frame (nearest
neighbour) and the frame's own. Then, per variant, the mean and largest |AoP difference|.

``resamplers`` (no model): how close each shrinking resizer brings an upscaled export back to
the frame it was made from (the RMS difference, grey levels of 0-255), which chose the framing's
box filter (``mode="area"``).

``unchanged``: the change on frames that are already 256 x 256: which frames' model input differs
(bit for bit) from before, and for those, the label maps and AoPs before and after (the others are
the same computation on the same input).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from psfh.io.images import load_image, load_label_map  # noqa: E402
from psfh.measure.aop import measure_aop  # noqa: E402
from psfh.model import inference  # noqa: E402
from psfh.model.psfh_model import PSFHModel  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "psfhs"


def upscale(frame: np.ndarray, side: int, method=Image.BILINEAR) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize((side, side), method))


def on_canvas(frame: np.ndarray, height: int, width: int, top: int, left: int, side: int | None = None) -> np.ndarray:
    """The frame (resized to side x side first when given) on a black height x width canvas at (top, left)."""
    if side is not None:
        frame = upscale(frame, side)
    canvas = np.zeros((height, width), np.uint8)
    canvas[top:top + frame.shape[0], left:left + frame.shape[1]] = frame
    return canvas


# name: (make the export from the 256 x 256 frame, the frame's box in the export: top, left, side)
VARIANTS = {
    "256x256": (lambda f: f, (0, 0, 256)),
    "512x512": (lambda f: upscale(f, 512), (0, 0, 512)),
    "512x512 nearest": (lambda f: upscale(f, 512, Image.NEAREST), (0, 0, 512)),
    "640x480 padded": (lambda f: on_canvas(f, 480, 640, 0, 80, 480), (0, 80, 480)),
    "800x600 off-centre": (lambda f: on_canvas(f, 600, 800, 0, 37, 600), (0, 37, 600)),
    "1024x768 padded": (lambda f: on_canvas(f, 768, 1024, 0, 128, 768), (0, 128, 768)),
    "2048x2048": (lambda f: upscale(f, 2048), (0, 0, 2048)),
    "shifted on 520x400 canvas": (lambda f: on_canvas(f, 400, 520, 61, 173), (61, 173, 256)),
}


def before_members(model, pixels: np.ndarray) -> torch.Tensor:
    """The members as psfh made them before issue 31: min-max scaled, resized (stretched) to S x S."""
    c = model.config
    unit = torch.from_numpy(inference.scale_to_unit(np.asarray(pixels, np.float32)))[None, None]
    if unit.shape[-2:] != (c.input_size, c.input_size):
        unit = F.interpolate(unit, size=(c.input_size, c.input_size), mode="bilinear", align_corners=False,
                             antialias=True)
    pixel_values = inference.normalize(unit, c.pixel_mean, c.pixel_std)
    return model.fold_probabilities(pixel_values, model.members(), tta=model.default_tta)


def before_label_map(members: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The label map as psfh made it before issue 31: the ensemble resized (stretched) back to H x W."""
    mean = inference.ensemble(members.flatten(0, 1))[0]
    if tuple(mean.shape[-2:]) != tuple(size):
        mean = F.interpolate(mean[None], size=size, mode="bilinear", align_corners=False)[0]
    return inference.largest_components(mean.argmax(dim=0).to(torch.uint8).numpy())


def back_to_frame(labels: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    top, left, side = box
    region = torch.from_numpy(np.ascontiguousarray(labels[top:top + side, left:left + side])).float()[None, None]
    return F.interpolate(region, size=(256, 256), mode="nearest-exact")[0, 0].to(torch.uint8).numpy()


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    a, b = a == value, b == value
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def angle(labels: np.ndarray) -> float | None:
    return measure_aop(labels).angle_deg


def frame_paths(args) -> list[Path]:
    if args.examples:
        return sorted((ROOT / "examples" / "image_mha").glob("*.mha"))
    ids = [line.strip() for line in Path(args.ids_file).read_text().splitlines() if line.strip()]
    return [args.data / "image_mha" / f"{i}.mha" for i in ids[::args.every]]


def fmt(value: float | None) -> str:
    return "  none" if value is None else f"{value:+6.2f}"


def sizes(model, paths: list[Path]) -> None:
    differences = {name: {"before": [], "after": []} for name in VARIANTS}
    for path in paths:
        frame = load_image(path).pixels.astype(np.uint8)
        reference = {}
        for name, (make, box) in VARIANTS.items():
            export = make(frame)
            members = before_members(model, export)
            labels = {"before": before_label_map(members, export.shape),
                      "after": model.predict(export).label_map}
            cells = []
            for when, label_map in labels.items():
                aop = angle(label_map)
                if name == "256x256":
                    reference[when] = (aop, label_map)
                    cells.append(f"{when} AoP {aop:7.2f}")
                    continue
                delta = None if aop is None or reference[when][0] is None else aop - reference[when][0]
                differences[name][when].append(np.inf if delta is None else abs(delta))
                back = back_to_frame(label_map, box)
                cells.append(f"{when} {fmt(delta)} deg, Dice PS {dice(back, reference[when][1], 1):.3f} "
                             f"FH {dice(back, reference[when][1], 2):.3f}")
            print(f"{path.stem} {name:26s} {export.shape[1]:4d} x {export.shape[0]:4d}: " + " | ".join(cells),
                  flush=True)
    print("\n|AoP - AoP at 256 x 256| over the frames, deg: mean (largest); before -> after")
    for name, cells in differences.items():
        if name == "256x256":
            continue
        print(f"  {name:26s} " + " -> ".join(f"{np.mean(v):5.2f} ({np.max(v):5.2f})" for v in cells.values()))
    spread = {when: [max(differences[n][when][i] for n in VARIANTS if n != "256x256") for i in range(len(paths))]
              for when in ("before", "after")}
    print("largest |AoP difference| of a frame over all variants, deg: mean (largest) before "
          f"{np.mean(spread['before']):.2f} ({np.max(spread['before']):.2f}), after "
          f"{np.mean(spread['after']):.2f} ({np.max(spread['after']):.2f})")


def unchanged(model, paths: list[Path], outputs: bool = False) -> None:
    c = model.config
    changed, aops, errors, dices = 0, [], [], []
    for path in paths:
        frame = load_image(path).pixels
        old = inference.normalize(torch.from_numpy(inference.scale_to_unit(frame))[None, None], c.pixel_mean,
                                  c.pixel_std)
        framed = model.framing(frame, path.stem)
        new = model.preprocess(frame, path.stem, framed)
        if torch.equal(old, new):
            if outputs:  # the whole answer, not only the model input
                before = before_label_map(model.fold_probabilities(old, model.members(), tta=model.default_tta),
                                          frame.shape)
                prediction = model.predict(path)
                print(f"{path.stem}: same model input; label maps equal: "
                      f"{np.array_equal(before, prediction.label_map)}; AoP {angle(before):.4f} -> "
                      f"{prediction.aop.angle_deg:.4f}", flush=True)
            continue
        changed += 1
        before = before_label_map(model.fold_probabilities(old, model.members(), tta=model.default_tta), frame.shape)
        after = model.predict(path).label_map
        a, b = angle(before), angle(after)
        aops.append(abs(b - a) if a is not None and b is not None else np.inf)
        truth = path.parent.parent / "label_mha" / path.name
        versus = ""
        if truth.is_file():  # against the expert label map: the AoP error and Dice, before -> after
            expert = load_label_map(truth)
            true_aop = angle(expert)
            errors.append([abs(a - true_aop), abs(b - true_aop)])
            dices.append([(dice(before, expert, 1) + dice(before, expert, 2)) / 2,
                          (dice(after, expert, 1) + dice(after, expert, 2)) / 2])
            versus = (f"; vs expert: |AoP error| {errors[-1][0]:.2f} -> {errors[-1][1]:.2f}, mean Dice "
                      f"{dices[-1][0]:.3f} -> {dices[-1][1]:.3f}")
        print(f"{path.stem}: content box {framed.content} -> grid {framed.grid}; label maps differ on "
              f"{100 * (before != after).mean():.2f} % of pixels; Dice PS {dice(before, after, 1):.3f} FH "
              f"{dice(before, after, 2):.3f}; AoP {a:.2f} -> {b:.2f} "
              f"({fmt(None if not np.isfinite(aops[-1]) else b - a)})"
              + versus, flush=True)
    print(f"{changed} of {len(paths)} frames get another model input than before; the others' inputs are "
          "bit for bit the same (so are their members, label maps and AoPs)")
    if aops:
        print(f"|AoP change| on those: mean {np.mean(aops):.2f}, largest {np.max(aops):.2f} deg")
    if errors:
        errors, dices = np.array(errors), np.array(dices)
        print(f"on those, vs the expert label maps: mean |AoP error| {errors[:, 0].mean():.2f} -> "
              f"{errors[:, 1].mean():.2f} deg (after minus before: mean {np.mean(errors[:, 1] - errors[:, 0]):+.2f}); "
              f"mean Dice (PS, FH averaged) {dices[:, 0].mean():.4f} -> {dices[:, 1].mean():.4f}")


def resamplers(paths: list[Path]) -> None:
    """The frame upscaled (Pillow: nearest, bilinear, bicubic) then brought back to 256 x 256 by
    each of torch's anti-aliased resizers: RMS difference to the frame, mean over the frames."""
    shrinkers = {"area (box)": dict(mode="area"),
                 "bilinear, antialias": dict(mode="bilinear", antialias=True, align_corners=False),
                 "bicubic, antialias": dict(mode="bicubic", antialias=True, align_corners=False)}
    growers = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
    print("| export | " + " | ".join(shrinkers) + " |\n|---|" + "---|" * len(shrinkers))
    for side in (512, 1024, 2048):
        for grower, method in growers.items():
            errors = {name: [] for name in shrinkers}
            for path in paths:
                frame = load_image(path).pixels.astype(np.uint8)
                export = torch.from_numpy(upscale(frame, side, method).astype(np.float32))[None, None]
                for name, how in shrinkers.items():
                    back = F.interpolate(export, size=frame.shape, **how)[0, 0].numpy()
                    errors[name].append(float(np.sqrt(np.mean((back - frame) ** 2))))
            print(f"| {side} x {side}, {grower} | " + " | ".join(f"{np.mean(v):.2f}" for v in errors.values()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["sizes", "unchanged", "resamplers"])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--ids-file", default=str(ROOT / "docs" / "splits" / "test_ids.txt"))
    parser.add_argument("--every", type=int, default=1, help="every n-th id of the file")
    parser.add_argument("--examples", action="store_true", help="the repository's examples/ frames instead")
    parser.add_argument("--outputs", action="store_true",
                        help="unchanged: also compare label maps and AoPs of frames whose input is the same")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "resamplers":
        resamplers(frame_paths(args))
        return
    model = PSFHModel.from_pretrained()
    start = time.time()
    paths = frame_paths(args)
    print(f"# {args.what} on {len(paths)} frames; package default {model.members()} x "
          f"{'flip' if model.default_tta else 'no flip'}")
    if args.what == "sizes":
        sizes(model, paths)
    else:
        unchanged(model, paths, args.outputs)
    print(f"# {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
