"""Is storing the embedded base in float16 accuracy-neutral? (issue 26, part 2)

The shipped package's default prediction (its default adapters with its default TTA, as
``python -m psfh.predict`` runs it) is made twice per frame: with the base as shipped (float32)
and with a copy of the package whose ``base/model.safetensors`` holds every floating tensor in
float16 (loading casts them back into the model's float32 parameters, so the compute is float32;
only the stored values are rounded). The adapters are the package's own in both. Per frame: the
fraction of pixels whose label is equal in the two label maps, and the AoP of each.

    OMP_NUM_THREADS=1 flock /tmp/psfh-heavy.lock python -m experiments.fp16_base_check \
        --out docs/results/gpu/fp16_base

Frames: the 100 test frames (docs/splits/test_ids.txt, from $PSFH_DATA/image_mha) and the
8 frames of examples/image_mha. Writes per_frame.csv and summary.txt under --out. The shipped
weights are never changed: the float16 copy is made in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from experiments.common import DEFAULT_DATA, DEFAULT_PACKAGE, ROOT, TEST_IDS_FILE
from psfh.core.files import write_csv_atomic, write_text_atomic
from psfh.io.dataset import read_ids_file
from psfh.model.package import BASE_WEIGHTS
from psfh.model.psfh_model import PSFHModel

TARGET = 0.995  # the fraction of equal pixels per frame that counts as neutral


def fp16_copy(package: Path, destination: Path) -> Path:
    """A copy of ``package`` whose base weights are stored in float16 (adapters, config as they are)."""
    shutil.copytree(package, destination, ignore=shutil.ignore_patterns("onnx"))
    path = destination / BASE_WEIGHTS
    state = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
             for k, v in load_file(str(path)).items()}
    save_file(state, str(path), metadata={"format": "pt", "producer": "psfh fp16_base_check"})
    return destination


def frames(data: Path) -> list[tuple[str, str, Path]]:
    """(set, id, path) of the test frames and the examples."""
    test = [("test", i, data / "image_mha" / f"{i}.mha") for i in read_ids_file(ROOT / TEST_IDS_FILE)]
    examples = [("examples", p.stem, p) for p in sorted((ROOT / "examples" / "image_mha").glob("*.mha"))]
    return test + examples


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("PSFH_DATA") or DEFAULT_DATA))
    p.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "gpu" / "fp16_base")
    p.add_argument("--limit", type=int, default=None, help="only the first N frames (a smoke run)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    todo = frames(args.data)[: args.limit]
    missing = [str(path) for _, _, path in todo if not path.is_file()]
    if missing:
        print(f"error: frames not found: {missing[:3]} (set --data or PSFH_DATA)", file=sys.stderr)
        return 2
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        half = fp16_copy(args.package, Path(scratch) / "fp16")
        sizes = {"float32": (args.package / BASE_WEIGHTS).stat().st_size, "float16": (half / BASE_WEIGHTS).stat().st_size}
        models = {"float32": PSFHModel.from_pretrained(args.package, device="cpu"),
                  "float16": PSFHModel.from_pretrained(half, device="cpu")}
        dtypes = {name: {p.dtype for p in m.base_model.parameters()} for name, m in models.items()}
        assert dtypes["float16"] == {torch.float32}, dtypes  # stored in fp16, computed in fp32
        adapters = models["float32"].members(None)
        for n, (where, sample_id, path) in enumerate(todo):
            results = {name: model.predict(path) for name, model in models.items()}
            a, b = results["float32"].label_map, results["float16"].label_map
            aops = {name: r.aop.angle_deg for name, r in results.items()}
            rows.append({"set": where, "id": sample_id, "equal_fraction": float((a == b).mean()),
                         "pixels_differing": int((a != b).sum()),
                         "aop_fp32": aops["float32"], "aop_fp16": aops["float16"],
                         "max_probability_difference": float(np.abs(results["float32"].probabilities
                                                                    - results["float16"].probabilities).max())})
            print(f"{n + 1}/{len(todo)} {where} {sample_id}: equal {rows[-1]['equal_fraction']:.5f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(args.out / "per_frame.csv", list(rows[0]), rows)
    equal = np.array([r["equal_fraction"] for r in rows])
    aop_moves = np.array([abs(r["aop_fp32"] - r["aop_fp16"]) for r in rows
                          if r["aop_fp32"] is not None and r["aop_fp16"] is not None])
    both_or_neither = sum((r["aop_fp32"] is None) == (r["aop_fp16"] is None) for r in rows)
    lines = [
        "fp16-stored base vs float32 base, the shipped default prediction (experiments/fp16_base_check.py)",
        f"command: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} flock /tmp/psfh-heavy.lock "
        f"python -m experiments.fp16_base_check --out {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
        + (f" --limit {args.limit}" if args.limit else ""),
        f"package: {args.package.relative_to(ROOT) if args.package.is_relative_to(ROOT) else args.package}; "
        f"adapters {adapters}, tta {models['float32'].default_tta}; torch {torch.__version__}, {args.threads} thread(s)",
        f"base file: float32 {sizes['float32']} bytes, float16 {sizes['float16']} bytes",
        f"frames: {len(rows)} ({sum(r['set'] == 'test' for r in rows)} test, {sum(r['set'] == 'examples' for r in rows)} examples)",
        f"equal pixels per frame: min {equal.min():.5f}, median {np.median(equal):.5f}, mean {equal.mean():.5f}",
        f"frames at or above the {TARGET:.1%} target: {int((equal >= TARGET).sum())} of {len(rows)}",
        f"frames with identical label maps: {int((equal == 1).sum())} of {len(rows)}",
        f"AoP measured by both on {len(aop_moves)} frames (measured by both or neither: {both_or_neither} of {len(rows)}); "
        f"|AoP fp32 - AoP fp16| max {aop_moves.max() if len(aop_moves) else float('nan'):.4f} deg, "
        f"mean {aop_moves.mean() if len(aop_moves) else float('nan'):.4f} deg",
        f"max probability difference over all frames: {max(r['max_probability_difference'] for r in rows):.2e}",
        f"verdict: {'neutral' if (equal >= TARGET).all() else 'NOT neutral'} by the {TARGET:.1%} per-frame target",
        f"seconds: {time.perf_counter() - started:.0f}",
    ]
    write_text_atomic(args.out / "summary.txt", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
