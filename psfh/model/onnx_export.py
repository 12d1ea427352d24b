"""ONNX export of a model package: the shared encoder once, each fold's encoder rest and decoder
with its adapter merged, a JSON manifest, and a check against PyTorch.

    python -m psfh.export --model models/psfh-lite-medsam --out onnx/psfh-lite-medsam
    python -m psfh.export --model someone/psfh-sam-vit-h --out onnx/vit-h --folds fold_0 fold_1

The folder it writes (:mod:`psfh.model.onnx_backends` runs it; ``PSFHModel.from_pretrained(...,
backend="onnxruntime")`` makes and caches one by itself)::

    manifest.json          what each file is, the preprocessing, the folds, the check's numbers
    encoder_shared.onnx    B x 3 x S x S pixels -> what all folds share: the whole embedding
                           (B x 256 x g x g) when no adapter touches the encoder, else the output
                           of the stages no adapter touches (TinyViT: patch embedding + stage 0)
    encoder_<fold>.onnx    (only when adapters touch the encoder) that output -> B x 256 x g x g
    decoder_<fold>.onnx    B x 256 x g x g -> B x 3 x S x S class probabilities (softmax applied)

Every file takes any batch size (the two flip views run as one batch of 2). The adapters are
merged into copies of the base (peft ``merge_and_unload``), so the files hold plain weights and
need neither peft nor psfh's modules to run. BatchNorm is exported unfolded: the ONNX runtimes
fold it themselves.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from psfh.core.errors import PSFHInputError
from psfh.core.files import atomic_target, cache_root, write_text_atomic
from psfh.model import inference
from psfh.model.onnx_backends import EXPORT_FORMAT, OnnxEnsemble, read_manifest
from psfh.model.package import base_key
from psfh.model.tiny_vit import set_batchnorm_folding

MANIFEST = "manifest.json"
# The check's bound on max |probability difference| (issue 13); the label maps must also agree
# (but for numerical ties, see check_export).
PROBABILITY_TOLERANCE = 1e-3


class EncoderPart(nn.Module):
    """A part of a SamModel's image encoder, split after ``stage`` stages (None: not split)."""

    def __init__(self, sam: nn.Module, stage: int | None):
        super().__init__()
        self.sam, self.stage = sam, stage


class SharedEncoder(EncoderPart):
    """pixels B x 3 x S x S -> the encoder work all folds share (see the module docstring)."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.stage is None:
            return self.sam.get_image_embeddings(pixel_values)
        return self.sam.vision_encoder.forward_prefix(pixel_values, self.stage)


class FoldEncoder(EncoderPart):
    """One fold's rest of the encoder: :class:`SharedEncoder`'s output (or the pixels, when
    nothing is shared) -> embeddings B x 256 x g x g."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.stage is None:
            return self.sam.get_image_embeddings(hidden)
        return self.sam.vision_encoder.forward_from(hidden, self.stage).last_hidden_state


class FoldDecoder(nn.Module):
    """One fold's prompt-free mask decoder: embeddings B x 256 x g x g -> probabilities B x 3 x S x S."""

    def __init__(self, sam: nn.Module, input_size: int):
        super().__init__()
        self.sam, self.input_size = sam, input_size

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        return inference.mask_logits(self.sam, self.input_size, image_embeddings=image_embeddings).softmax(dim=1)


def merged_copy(model, fold: str) -> nn.Module:
    """A plain SamModel: a copy of ``model``'s base with ``fold``'s adapter merged in, laid out
    for export (contiguous memory, BatchNorm as its own op)."""
    from peft import PeftModel

    network = copy.deepcopy(model.network)
    if isinstance(network, PeftModel):
        network.set_adapter(fold)
        network = network.merge_and_unload()
    network = network.eval().to("cpu")
    network.vision_encoder.to(memory_format=torch.contiguous_format)
    set_batchnorm_folding(network, False)
    return network


def trace(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str):
    """One module -> an unoptimised ONNX model (onnx.ModelProto) with a dynamic batch axis, whose
    weights are initializers named as in ``module.state_dict()`` (torch.export-based exporter;
    the older TorchScript exporter changed BatchNorm statistics of the module it traced)."""
    # torch's exporter logs a warning per torchvision operator it cannot register: psfh has none.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(module, (example,), dynamo=True, optimize=False, input_names=[input_name],
                                output_names=[output_name], dynamic_shapes=({0: batch},), verbose=False)
    return program.model_proto


def with_weights(traced, state: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``traced`` to ``path`` with its named initializers taken from ``state`` (a module's
    state_dict under the traced module's names), then optimised (constant folding, fusions).

    Every fold shares the graph of one trace; only the weights differ, so one trace per kind of
    file serves all folds (tracing is the slow step: docs/PERFORMANCE.md, "One-off measurements").
    The file is written atomically (:func:`psfh.core.files.atomic_target`).
    """
    import onnx
    import onnxscript.optimizer
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(traced)
    for initializer in model.graph.initializer:
        tensor = state.get(initializer.name)
        if tensor is not None:
            initializer.CopyFrom(numpy_helper.from_array(tensor.detach().cpu().numpy(), initializer.name))
    with atomic_target(path, suffix=".onnx") as temporary:  # the suffix: onnx picks the format by it
        onnx.save(onnxscript.optimizer.optimize(model), str(temporary))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(model, out: str | Path, folds: list[str] | None = None, check_images: list | None = None,
                progress: bool = True) -> dict:
    """Write ``model``'s ONNX files and manifest to ``out``, then check them against PyTorch.

    Args:
        model: a :class:`psfh.model.psfh_model.PSFHModel` on the torch backend.
        out: the folder (created; files in it are replaced).
        folds: the adapters to export (default: all the model has, the soup too).
        check_images: images (anything ``model.predict`` reads) to check on; default: the
            repository's examples, else one random image.
    Returns:
        The manifest (also written to ``out/manifest.json``), with the check's results.
    Raises:
        PSFHInputError: a package without folds, or a check that fails its bounds.
    """
    from psfh.core.options import resolve_folds

    if getattr(model, "runtime", None) is not None:
        raise PSFHInputError("export from a model on the torch backend (from_pretrained(..., backend='torch'))")
    folds = resolve_folds(model.adapters, folds)
    from psfh.io.images import load_image

    # Read the check's images first: a bad one is refused now, not after minutes of export.
    check_images = [load_image(image) for image in (check_images or default_check_images())]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PSFHInputError(f"{out}: exists and is not a folder; --out names the folder for the ONNX files")
    out.mkdir(parents=True, exist_ok=True)
    size = model.config.input_size
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else (lambda text: None)
    adapted = model.encoder_scope != "none"
    stage = model._shared_encoder_stages if adapted else None
    pixels = torch.rand(2, 3, size, size)
    files: dict[str, dict] = {}
    traced: dict[str, object] = {}
    start = time.perf_counter()
    with torch.no_grad():
        for number, fold in enumerate(folds):
            sam = merged_copy(model, fold)
            state = {f"sam.{name}": tensor for name, tensor in sam.state_dict().items()}
            if number == 0:  # trace each kind of file once, on the first fold's weights
                hidden = pixels
                if not (adapted and stage is None):
                    shared = SharedEncoder(sam, stage).eval()  # no adapter touches these layers: any fold's copy is the base
                    with_weights(trace(shared, pixels, "pixel_values", "shared"), state, out / "encoder_shared.onnx")
                    files["encoder_shared"] = {"file": "encoder_shared.onnx", "input": "pixel_values",
                                               "output": "shared"}
                    hidden = shared(pixels)
                embeddings = FoldEncoder(sam, stage).eval()(hidden) if adapted else hidden
                encoder_input = "shared" if "encoder_shared" in files else "pixel_values"
                if adapted:
                    traced["encoder"] = trace(FoldEncoder(sam, stage).eval(), hidden, encoder_input, "image_embeddings")
                traced["decoder"] = trace(FoldDecoder(sam, size).eval(), embeddings, "image_embeddings", "probabilities")
                say(f"traced the encoder and decoder graphs ({time.perf_counter() - start:.0f} s)")
            for kind, graph in traced.items():
                name = f"{kind}_{fold}"
                with_weights(graph, state, out / f"{name}.onnx")
                files[name] = {"file": f"{name}.onnx", "fold": fold,
                               "input": encoder_input if kind == "encoder" else "image_embeddings",
                               "output": "image_embeddings" if kind == "encoder" else "probabilities"}
            say(f"exported {fold} ({time.perf_counter() - start:.0f} s)")
            del sam, state
    for entry in files.values():
        entry["sha256"] = file_sha256(out / entry["file"])
    c = model.config
    manifest = {
        "format": "psfh-onnx", "format_version": EXPORT_FORMAT, "base": c.base, "input_size": size,
        "pixel_mean": list(c.pixel_mean), "pixel_std": list(c.pixel_std), "classes": list(c.classes),
        "folds": folds, "tta": c.tta, "encoder_scope": model.encoder_scope,
        "shared_encoder_stages": stage, "files": files, "source_key": source_key(model, folds),
        "torch": torch.__version__, "export_seconds": round(time.perf_counter() - start, 1),
    }
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    manifest["check"] = check_export(model, out, folds, check_images)
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    say(f"checked against torch: {json.dumps(manifest['check'])}")
    if not manifest["check"]["passed"]:
        raise PSFHInputError(f"{out}: the ONNX files do not reproduce the torch model: {manifest['check']}")
    return manifest


def source_key(model, folds: list[str]) -> str:
    """A content hash of what an export is made from: the base weights, the loaded folds' adapter
    weights, the preprocessing and the export format (so a cached export never goes stale)."""
    digest = hashlib.sha256(json.dumps([EXPORT_FORMAT, base_key(model, f"psfh-onnx-{EXPORT_FORMAT}"), folds]).encode())
    for name, parameter in sorted(model.network.named_parameters()):
        if any(f".{fold}." in name or name.endswith(f".{fold}") for fold in folds):
            digest.update(name.encode())
            digest.update(parameter.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]


def default_check_images() -> list:
    """The repository's example frames (two of them), else one random frame."""
    examples = sorted((Path(__file__).resolve().parents[2] / "examples" / "image_mha").glob("*.mha"))[:2]
    return examples or [np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)]


def check_export(model, folder: Path, folds: list[str], images: list | None = None,
                 backend: str = "onnxruntime") -> dict:
    """Compare the exported files (run by ``backend``) with the torch model on ``images``:
    max |probability difference| over every member, and the share of label-map pixels that agree.
    Passes when the first is <= :data:`PROBABILITY_TOLERANCE` and the label maps are identical but
    for numerical ties (pixels whose two most likely classes are within that tolerance in torch:
    float rounding may pick either; the real package had none on the examples)."""
    from psfh.io.images import load_image

    runtime = OnnxEnsemble(folder, backend)
    images = images or default_check_images()
    worst, agree, pixels_total, untied = 0.0, 0, 0, 0
    for image in images:
        loaded = load_image(image)  # a LoadedImage passes through
        pixel_values = model.preprocess(loaded.pixels, loaded.name or "image")
        tta = model.default_tta
        reference = model.fold_probabilities(pixel_values, folds, tta).cpu()
        views = inference.tta_views(pixel_values.cpu(), tta)
        embeddings = runtime.encode(views, folds)
        exported = torch.stack([inference.undo_tta(runtime.decode(fold, embeddings[fold]), tta)[:, 0]
                                for fold in folds])
        worst = max(worst, float((exported - reference).abs().max()))
        size = loaded.pixels.shape[:2]
        expected = model.prediction_from_members(reference, size, folds, tta)
        got = model.prediction_from_members(exported, size, folds, tta).label_map
        differ = expected.label_map != got
        top_two = np.sort(expected.probabilities[:, differ], axis=0)[-2:]
        untied += int((top_two[1] - top_two[0] > PROBABILITY_TOLERANCE).sum())
        agree += int((~differ).sum())
        pixels_total += got.size
    return {"backend": backend, "images": len(images),
            "max_probability_difference": worst, "label_map_agreement": agree / pixels_total,
            "label_map_differences_not_ties": untied, "passed": worst <= PROBABILITY_TOLERANCE and untied == 0}


def find_or_make_export(model) -> Path:
    """The ONNX export of ``model`` (a PSFHModel on the torch backend): its package's ``onnx/``
    folder when that was made from the same weights, else the one cached under
    ``<cache>/onnx/<weights key>`` (made there, once, when missing)."""
    import shutil
    import sys
    import tempfile

    key = source_key(model, model.adapters)
    candidates = ([Path(model.source) / "onnx"] if model.source else []) + [cache_root() / "onnx" / key]
    for folder in candidates:
        try:
            manifest = read_manifest(folder)
        except PSFHInputError:
            continue
        if manifest.get("source_key") == key and manifest.get("check", {}).get("passed"):
            return folder
    target = candidates[-1]
    print(f"psfh: exporting the package to ONNX once, into {target} (about 3 minutes on 2 cores)",
          file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        export_onnx(model, staging, model.adapters, progress=False)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # whole or absent: a stopped export leaves no half folder behind
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
