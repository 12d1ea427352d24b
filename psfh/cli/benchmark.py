"""Benchmark the fold ensemble against the seed's inference design, and write docs/PERFORMANCE.md.

    python -m psfh.benchmark                          # lite-medsam, CPU, the embedded package
    python -m psfh.benchmark --device cuda --images 16

Designs, each measured in its own process so that peak memory is its own:
- ``one-model``: a single plain model, one forward pass (the memory unit of the ratios);
- ``seed``: the authors' public inference design: one full model copy per fold (adapter merged
  into a deep copy of the base), the 10 passes (5 folds x {identity, flip}) one after another,
  fp32, BatchNorm not folded;
- ``psfh``: PSFHModel: ONE base with 5 adapters hot-swapped, the encoder run once per view when
  no adapter touches it (the CPU recipe), else its unadapted stages once and each fold's adapted
  stages with that fold's LoRA merged into plain weights (psfh.model.merged_folds), the two views in
  one batch, BatchNorm folded into the convolutions;
- ``psfh-1fold``: the fast setting of the same package: one fold adapter, both flip views
  (``predict(image, folds=[first fold])``); its "ensemble" column is that 2-member ensemble;
- ``psfh-soup`` / ``psfh-soup-noflip``: the package's fold soup (one adapter, the mean of the
  folds' weight changes: psfh.model.soup; made in memory when the package has none), with both
  flip views / the identity view alone;
- ``psfh-bf16``: the ensemble (``psfh``) under bf16 autocast;
- ``psfh-onnxruntime`` / ``psfh-openvino``: the same package with its encoder and fold decoders
  run from its ONNX export (psfh.model.onnx_export; made once in a process of its own before the timing, so
  that its cost is not in the peak memory) by onnxruntime / OpenVINO, fp32; ``psfh-soup-openvino``:
  the soup x flip from the same export on OpenVINO;
- ``cli``: ``python -m psfh.predict`` on ``--cli-images`` images (throughput of the batch command
  line, start-up and file writing included; ``--cli-backend`` chooses its backend).
Latency is per image (median and p95 over ``--repeats``), throughput is images/s over
``--images`` images predicted one after another, peak memory is the process's peak RSS on CPU
(``torch.cuda.max_memory_allocated`` on CUDA).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from psfh.core.files import write_text_atomic
from psfh.core.options import BACKENDS
from psfh.model.package import fold_name

ROOT = Path(__file__).resolve().parents[2]
DESIGNS = ("one-model", "seed", "psfh", "psfh-1fold", "psfh-soup", "psfh-soup-noflip", "psfh-bf16", "psfh-onnxruntime",
           "psfh-openvino", "psfh-soup-openvino", "cli")
ONNX_DESIGNS = {"psfh-onnxruntime": "onnxruntime", "psfh-openvino": "openvino", "psfh-soup-openvino": "openvino"}
# The soup designs: the fold soup alone (psfh.model.soup), with the flip view or without.
SOUP_DESIGNS = {"psfh-soup": True, "psfh-soup-noflip": False, "psfh-soup-openvino": True}


def _load_model(args):
    """The package to time: a trained one, or random adapters on the base when it has no folds.
    The seed design runs without BatchNorm folding, as the authors' code does."""
    from psfh.model.bases import get_base
    from psfh.model.lora import make_lora_config
    from psfh.model.psfh_model import PSFHModel
    from psfh.model.tiny_vit import set_batchnorm_folding

    fold_batchnorm = args.design != "seed"
    backend = ONNX_DESIGNS.get(args.design, "torch")
    package = args.model or get_base(args.base).default_package
    if package:
        model = PSFHModel.from_pretrained(package, device=args.device)
        if model.folds:
            set_batchnorm_folding(model.network, fold_batchnorm)
            if args.design in SOUP_DESIGNS and model.soup is None:
                model.add_soup()
            return model.use_backend(backend)
    torch.manual_seed(0)
    folds = [fold_name(k) for k in range(5)]
    model = PSFHModel.from_base(args.base, folds, make_lora_config(0, 16), device=args.device)
    set_batchnorm_folding(model.network, fold_batchnorm)
    with torch.no_grad():
        for name, parameter in model.network.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    if args.design in SOUP_DESIGNS:
        model.add_soup()
    return model.use_backend(backend)  # the ONNX designs time the export of these random adapters


def _images(count: int, size: int) -> list[np.ndarray]:
    from psfh.io.images import load_image

    files = sorted((ROOT / "examples" / "image_mha").glob("*.mha"))
    images = [load_image(f).pixels for f in files] or [np.random.default_rng(0).random((size, size)) * 255]
    return [images[i % len(images)] for i in range(count)]


def _peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _weights_mb(*modules) -> float:
    """Bytes of the distinct parameter and buffer tensors the modules hold (shared ones once)."""
    seen = {}
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values()) / 2**20


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(function, repeats: int, device: str) -> list[float]:
    function()  # warm-up (allocations, folded weights, kernels)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        function()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _seed_design(model):
    """One merged full model per fold (deep copies), as the authors' inference code does."""
    from peft import PeftModel

    copies = []
    for fold in model.folds:
        network = copy.deepcopy(model.network)
        network.set_adapter(fold)
        merged = network.merge_and_unload() if isinstance(network, PeftModel) else network
        copies.append(merged.eval())
    return copies


def run_design(args) -> dict:
    """Measure one design in this process; returns the numbers as a dict."""
    from psfh.model import inference

    torch.set_num_threads(args.threads)
    if args.design == "cli":
        return _run_cli(args)
    model = _load_model(args)
    size = model.config.input_size
    images = _images(args.images, size)
    pixels = model.preprocess(images[0])
    precision = "bf16" if args.design == "psfh-bf16" else "fp32"
    result = {"design": args.design, "folds": len(model.folds)}

    if args.design == "one-model":
        network = model.network
        network.set_adapter(model.folds[0])
        one = lambda: inference.mask_logits(network, size, pixel_values=pixels)  # noqa: E731
        with torch.inference_mode():
            result["one_pass_s"] = _time(one, args.repeats, args.device)
        result["weights_mb"] = _weights_mb(model.base_model)
    elif args.design == "seed":
        copies = _seed_design(model)
        del model.network  # only the copies remain, as in the seed's design
        result["weights_mb"] = _weights_mb(*copies)

        def ensemble(x):
            members = []
            for network in copies:
                for flip in (False, True):
                    view = x.flip(-1) if flip else x
                    probabilities = inference.mask_logits(network, size, pixel_values=view).softmax(1)
                    members.append(probabilities.flip(-1) if flip else probabilities)
            return torch.stack(members).mean(0)

        with torch.inference_mode():
            result["one_pass_s"] = _time(lambda: inference.mask_logits(copies[0], size, pixel_values=pixels),
                                         args.repeats, args.device)
            result["ensemble_s"] = _time(lambda: ensemble(pixels), args.repeats, args.device)
            start = time.perf_counter()
            for image in images:
                ensemble(model.preprocess(image))
            result["throughput_ips"] = len(images) / (time.perf_counter() - start)
    else:
        result["weights_mb"] = _weights_mb(model.network)
        if model.export_folder is not None:  # the sessions hold their own copies of the weights
            result["weights_mb"] += sum(f.stat().st_size for f in model.export_folder.glob("*.onnx")) / 2**20
        result["one_pass_s"] = _time(lambda: model.fold_probabilities(pixels, model.folds[:1], False, precision),
                                     args.repeats, args.device)
        # What one prediction of the design runs: the 5 folds, the first fold, or the soup; x flip or not.
        folds = ([model.soup] if args.design in SOUP_DESIGNS else model.folds[:1] if args.design == "psfh-1fold"
                 else model.folds)
        tta = SOUP_DESIGNS.get(args.design, True)
        result["ensemble_s"] = _time(lambda: model.fold_probabilities(pixels, folds, tta, precision),
                                     args.repeats, args.device)
        start = time.perf_counter()
        for image in images:
            model.fold_probabilities(model.preprocess(image), folds, tta, precision)
        result["throughput_ips"] = len(images) / (time.perf_counter() - start)
    result["peak_memory_mb"] = _peak_memory_mb(args.device)
    return result


def _run_cli(args) -> dict:
    """Throughput of ``python -m psfh.predict`` on ``args.cli_images`` example frames (copied into
    a temporary folder), start-up, model loading and writing the outputs included."""
    import shutil
    import tempfile

    files = sorted((ROOT / "examples" / "image_mha").glob("*.mha"))
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "in"
        inputs.mkdir()
        for i in range(args.cli_images):
            shutil.copy(files[i % len(files)], inputs / f"{i:03d}.mha")
        command = [sys.executable, "-m", "psfh.predict", str(inputs), "--out", str(Path(folder) / "out"),
                   "--device", args.device, "--backend", args.cli_backend] + (["--model", args.model] if args.model else [])
        start = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        seconds = time.perf_counter() - start
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"design": f"cli ({args.cli_backend}, {args.cli_images} images)", "folds": None,
            "throughput_ips": args.cli_images / seconds, "weights_mb": None, "peak_memory_mb": child}


def _summary(times: list[float] | None) -> str:
    if not times:
        return "-"
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return f"{statistics.median(times):.3f} / {p95:.3f}"


def machine_description(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def write_report(results: list[dict], args, out: Path) -> str:
    by = {r["design"]: r for r in results}
    seed, one = by.get("seed"), by.get("one-model")
    lines = [
        f"| design | one pass, s (median / p95) | prediction (its members x views), s (median / p95) | throughput, images/s "
        f"({args.images} images) | weights in memory, MB | peak memory (RSS), MB | x one model's peak | "
        f"speed-up vs seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = r["peak_memory_mb"] / one["peak_memory_mb"] if one else float("nan")
        speedup = (statistics.median(seed["ensemble_s"]) / statistics.median(r["ensemble_s"])
                   if seed and r.get("ensemble_s") else None)
        throughput = f"{r['throughput_ips']:.3f}" if "throughput_ips" in r else "-"
        weights = "-" if r["weights_mb"] is None else f"{r['weights_mb']:.1f}"
        lines.append(f"| {r['design']} | {_summary(r.get('one_pass_s'))} | {_summary(r.get('ensemble_s'))} | "
                     f"{throughput} | {weights} | {r['peak_memory_mb']:.0f} | {ratio:.2f} | "
                     f"{f'{speedup:.2f}x' if speedup else '-'} |")
    table = "\n".join(lines)
    header = (f"## {args.base} on {args.device} ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n\n"
              f"Machine: {machine_description(args.device)}; {args.threads} torch threads; "
              f"{args.repeats} repeats; model: {args.model or 'embedded package'}.\n"
              f"Command: `python -m psfh.benchmark --device {args.device} --base {args.base} "
              f"--images {args.images} --repeats {args.repeats}"
              f"{f' --model {args.model}' if args.model else ''} --designs {' '.join(args.designs)}"
              f"{f' --cli-images {args.cli_images} --cli-backend {args.cli_backend}' if 'cli' in args.designs else ''}`\n\n")
    section = header + table + "\n"
    existing = out.read_text() if out.exists() else "# Performance\n\nWritten by `python -m psfh.benchmark`.\n"
    write_text_atomic(out, existing.rstrip() + "\n\n" + section)
    return section


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--base", default="lite-medsam")
    parser.add_argument("--model", default=None, help="package folder or hub id (default: the embedded package)")
    parser.add_argument("--images", type=int, default=16, help="images for the throughput measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--designs", nargs="+", choices=DESIGNS, default=list(DESIGNS))
    parser.add_argument("--cli-images", type=int, default=32, help="images for the batch command line's throughput")
    parser.add_argument("--cli-backend", choices=BACKENDS, default="torch")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    parser.add_argument("--design", choices=DESIGNS, help=argparse.SUPPRESS)  # internal: one design per process
    args = parser.parse_args(argv)

    if args.design:
        print("RESULT " + json.dumps(run_design(args)))
        return 0
    results = []
    if any(design in ONNX_DESIGNS for design in args.designs) or args.cli_backend != "torch":
        print("making (or finding) the ONNX export ...", flush=True)
        prepare = [sys.executable, "-c", "import sys; from psfh.model.psfh_model import PSFHModel; "
                   "PSFHModel.from_pretrained(sys.argv[1] or None, device='cpu', backend='onnxruntime')",
                   args.model or ""]
        subprocess.run(prepare, check=True, cwd=ROOT)
    for design in args.designs:
        command = [sys.executable, "-m", "psfh.cli.benchmark", "--design", design, "--device", args.device,
                   "--base", args.base, "--images", str(args.images), "--repeats", str(args.repeats),
                   "--threads", str(args.threads), "--cli-images", str(args.cli_images),
                   "--cli-backend", args.cli_backend] + (["--model", args.model] if args.model else [])
        print(f"measuring {design} ...", flush=True)
        output = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if output.returncode:
            print(output.stderr[-2000:], file=sys.stderr)
            return 1
        results.append(json.loads(next(l for l in output.stdout.splitlines() if l.startswith("RESULT "))[7:]))
    print(write_report(results, args, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
