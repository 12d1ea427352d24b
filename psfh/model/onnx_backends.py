"""Run an exported package (:mod:`psfh.model.onnx_export`) on the CPU with onnxruntime or OpenVINO.

    runtime = OnnxEnsemble("onnx/psfh-lite-medsam", backend="onnxruntime")
    embeddings = runtime.encode(views, folds)          # {fold: (V*B) x 256 x g x g}
    probabilities = runtime.decode("fold_0", embeddings["fold_0"])   # (V*B) x 3 x S x S

:class:`psfh.model.psfh_model.PSFHModel` uses it for ``from_pretrained(..., backend=...)``: the encoder and
the fold decoders run here, everything else (preprocessing, ensemble, label map, AoP, box
prompts) stays the torch model's, so every backend gives the same kind of answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from psfh.core.errors import PSFHInputError
from psfh.core.options import check_backend

# The version of the export layout (manifest and files) this psfh reads and writes.
EXPORT_FORMAT = 1


def read_manifest(folder: str | Path) -> dict:
    """The manifest of an export folder, checked to be one psfh can run."""
    path = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise PSFHInputError(f"{folder}: not a psfh ONNX export (no manifest.json); make one with "
                             "`python -m psfh.export --out FOLDER`") from None
    except (OSError, ValueError) as error:
        raise PSFHInputError(f"{path}: unreadable manifest ({error})") from None
    if manifest.get("format") != "psfh-onnx":
        raise PSFHInputError(f"{path}: not a psfh ONNX manifest")
    if manifest.get("format_version") != EXPORT_FORMAT:
        raise PSFHInputError(f"{path}: export format {manifest.get('format_version')}, this psfh reads "
                             f"{EXPORT_FORMAT}: export the package again")
    return manifest


class _Session:
    """One ONNX file compiled for the CPU by ``backend``: numpy in, numpy out."""

    def __init__(self, path: Path, backend: str, threads: int):
        if backend == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # errors only: its notes on graph rewrites are not for users
            # No arena: it kept every activation size it ever saw, so the ensemble's peak memory
            # grew to several times the model's (docs/PERFORMANCE.md, "One-off measurements").
            options.enable_cpu_mem_arena = False
            # No memory pattern either: each session would keep its planned activation buffers
            # between calls; without them the ensemble's peak memory is lower at the same speed
            # (docs/PERFORMANCE.md, the notes on issue 13).
            options.enable_mem_pattern = False
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self._run = lambda array: session.run(None, {name: array})[0]
        else:
            import openvino

            # f32 asked for explicitly: on CPUs with bf16 hardware OpenVINO would otherwise lower
            # the precision by itself, and the exact backend must stay exact.
            compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                        "INFERENCE_PRECISION_HINT": "f32"})
            request = compiled.create_infer_request()

            def run(array: np.ndarray) -> np.ndarray:
                output = request.infer({0: array})[0].copy()
                # Each compiled file keeps its own activation buffers; the ensemble runs its files
                # one after another, so handing them back after each call keeps only one file's at
                # a time: a lower peak memory at the same speed (docs/PERFORMANCE.md, the notes on
                # issue 13). OpenVINO allocates them again on the next call.
                compiled.release_memory()
                return output

            self._run = run

    def __call__(self, array: np.ndarray) -> np.ndarray:
        return self._run(np.ascontiguousarray(array, dtype=np.float32))


class OnnxEnsemble:
    """The shared encoder, each fold's encoder rest and decoder, as compiled CPU sessions.

    Args:
        folder: an export folder (:func:`psfh.model.onnx_export.export_onnx`).
        backend: "onnxruntime" or "openvino".
        threads: CPU threads per call (default: torch's, so that every backend uses the same cores).
    """

    def __init__(self, folder: str | Path, backend: str = "onnxruntime", threads: int | None = None):
        if check_backend(backend) == "torch":
            raise PSFHInputError("OnnxEnsemble runs the onnxruntime or openvino backend, not torch")
        self.folder = Path(folder)
        self.backend = backend
        self.manifest = read_manifest(folder)
        threads = threads or torch.get_num_threads()
        self.sessions = {key: self._load(self.folder / entry["file"], backend, threads)
                         for key, entry in self.manifest["files"].items()}

    @staticmethod
    def _load(path: Path, backend: str, threads: int) -> _Session:
        try:
            return _Session(path, backend, threads)
        except ImportError as error:
            raise PSFHInputError(f"the {backend} backend needs the {backend} package: pip install {backend}") from error
        except Exception as error:  # the runtimes' own errors for a missing, cut or foreign file
            raise PSFHInputError(f"{path}: {backend} cannot load it ({type(error).__name__}: "
                                 f"{str(error).strip()[:200]}); export the package again") from error

    @property
    def folds(self) -> list[str]:
        return list(self.manifest["folds"])

    def _fold_session(self, kind: str, fold: str) -> _Session:
        session = self.sessions.get(f"{kind}_{fold}")
        if session is None:
            raise PSFHInputError(f"{self.folder}: the export holds folds {self.folds}, not {fold!r}")
        return session

    def encode(self, views: torch.Tensor, folds: list[str]) -> dict[str, torch.Tensor]:
        """(V*B) x 3 x S x S model inputs -> {fold: (V*B) x 256 x g x g embeddings}; the shared
        part runs once for all folds."""
        array = views.detach().float().cpu().numpy()
        shared = self.sessions["encoder_shared"](array) if "encoder_shared" in self.sessions else array
        if self.manifest["encoder_scope"] == "none":
            embeddings = torch.from_numpy(shared)
            return {fold: embeddings for fold in folds}
        return {fold: torch.from_numpy(self._fold_session("encoder", fold)(shared)) for fold in folds}

    def decode(self, fold: str, embeddings: torch.Tensor) -> torch.Tensor:
        """(V*B) x 256 x g x g embeddings -> (V*B) x 3 x S x S class probabilities of ``fold``."""
        return torch.from_numpy(self._fold_session("decoder", fold)(embeddings.detach().float().cpu().numpy()))
