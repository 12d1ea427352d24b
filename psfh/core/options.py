"""The inference options every entry point shares, and their one check each: precision, backend, folds.

Torch-free, so the command lines can build their parsers (and ``--help``) without loading torch.
``folds`` is always a list of adapter NAMES ("fold_0", ...); a number of folds is ``n_folds``.
"""

from __future__ import annotations

from collections.abc import Sequence

from psfh.core.errors import PSFHInputError

PRECISIONS = ("fp32", "bf16")
# What runs the encoder and the fold decoders (psfh.model.onnx_backends): torch, or an ONNX export of the package.
BACKENDS = ("torch", "onnxruntime", "openvino")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else PSFHInputError."""
    if precision not in PRECISIONS:
        raise PSFHInputError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else PSFHInputError."""
    if backend not in BACKENDS:
        raise PSFHInputError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return backend


def resolve_folds(available: Sequence[str], folds: Sequence[str] | None = None) -> list[str]:
    """The fold adapters to ensemble: ``folds`` (default: all ``available``), checked.

    Raises PSFHInputError for a package without fold adapters (the base alone cannot segment) and
    for unknown or empty fold lists, so a batch fails once, up front, not once per image.
    """
    available = list(available)
    if not available:
        raise PSFHInputError("this model package holds the base model only (no fold adapters): it cannot "
                             "segment PS/FH yet; train it with train.py or load a trained package")
    chosen = available if folds is None else list(folds)
    if not chosen:
        raise PSFHInputError(f"no folds chosen; this package has {available}")
    unknown = [fold for fold in chosen if fold not in available]
    if unknown:
        raise PSFHInputError(f"unknown folds {unknown}; this package has {available}")
    return chosen


def first_folds(available: Sequence[str], n_folds: int) -> list[str]:
    """The first ``n_folds`` of the ``available`` fold names (the demo's "folds in the ensemble")."""
    available = list(available)
    if not available:
        resolve_folds(available)  # raises: no fold adapters
    if not isinstance(n_folds, int) or not 1 <= n_folds <= len(available):
        raise PSFHInputError(f"the number of folds must be from 1 to {len(available)}, not {n_folds!r}")
    return available[:n_folds]
