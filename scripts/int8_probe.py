"""Does int8 earn a place on this CPU? (issue 13): onnxruntime's dynamic int8 quantization of one
fold's exported encoder and decoder, timed and compared with the fp32 export on real frames.

For the fold asked, its fp32 files of the package's ONNX export (found or made as
``backend="onnxruntime"`` does) are quantized with ``onnxruntime.quantization.quantize_dynamic``
(int8 weights, activations quantized per call), then both versions segment the example frames
(both flip views in one batch, as the product runs them): seconds per call of the fold encoder and
decoder (median of --repeats after a warm-up), the largest probability difference, and the share
of pixels whose label (argmax) differs.

    python scripts/int8_probe.py --fold fold_0 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: E402

from psfh.io.images import load_image  # noqa: E402
from psfh.model.psfh_model import PSFHModel  # noqa: E402
from psfh.model.onnx_backends import find_or_make_export, read_manifest  # noqa: E402


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timed(run, feed, repeats: int) -> tuple[np.ndarray, float]:
    """The output of ``run(feed)`` and its median seconds over ``repeats`` calls after a warm-up."""
    output = run(feed)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(feed)
        seconds.append(time.perf_counter() - start)
    return output, statistics.median(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "psfh-lite-medsam"))
    parser.add_argument("--fold", default="fold_0")
    parser.add_argument("--images", type=Path, nargs="+",
                        default=sorted((ROOT / "examples" / "image_mha").glob("*.mha")))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = PSFHModel.from_pretrained(args.model, device="cpu")
    export = find_or_make_export(model)
    files = read_manifest(export)["files"]
    encoder_key = f"encoder_{args.fold}" if f"encoder_{args.fold}" in files else None
    parts = [k for k in (encoder_key, f"decoder_{args.fold}") if k]
    with tempfile.TemporaryDirectory() as scratch:
        sessions = {"fp32": {}, "int8": {}}
        for key in parts:
            source = export / files[key]["file"]
            quantized = Path(scratch) / f"{key}.int8.onnx"
            quantize_dynamic(str(source), str(quantized), weight_type=QuantType.QInt8)
            sessions["fp32"][key] = session(source, args.threads)
            sessions["int8"][key] = session(quantized, args.threads)
            print(f"{key}: {source.stat().st_size / 1e6:.1f} MB fp32 -> {quantized.stat().st_size / 1e6:.1f} MB int8")
        shared = session(export / files["encoder_shared"]["file"], args.threads)

        seconds = {precision: {key: [] for key in parts} for precision in sessions}
        worst_difference, differing, pixels = 0.0, 0, 0
        for path in args.images:
            image = model.preprocess(load_image(path).pixels, name=path.name)
            views = torch.cat([image, image.flip(-1)]).numpy()  # both TTA views in one batch
            features = shared.run(None, {shared.get_inputs()[0].name: views})[0]
            outputs = {}
            for precision, parts_of in sessions.items():
                data = features
                for key in parts:
                    run = parts_of[key]
                    data, spent = timed(lambda feed, run=run: run.run(None, {run.get_inputs()[0].name: feed})[0],
                                        data, args.repeats)
                    seconds[precision][key].append(spent)
                outputs[precision] = data  # V x 3 x S x S probabilities
            worst_difference = max(worst_difference, float(np.abs(outputs["fp32"] - outputs["int8"]).max()))
            labels = {p: o.argmax(axis=1) for p, o in outputs.items()}
            differing += int((labels["fp32"] != labels["int8"]).sum())
            pixels += labels["fp32"].size
    for key in parts:
        fp32, int8 = (statistics.median(seconds[p][key]) for p in ("fp32", "int8"))
        print(f"{key}: fp32 {fp32:.3f} s, int8 {int8:.3f} s per call (2 views), int8/fp32 {int8 / fp32:.2f}")
    print(f"{len(args.images)} frames, {args.threads} threads: max |probability difference| {worst_difference:.4f}, "
          f"labels differ on {100 * differing / pixels:.3f} % of pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
