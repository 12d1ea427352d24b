"""What every psfh command line shares: the model options, loading the model, CSV cells, exit codes.

Each CLI's ``main(argv)`` runs through :func:`run_cli`, so bad input (a
:class:`~psfh.core.errors.PSFHInputError`) ends every command the same way: ``error: MESSAGE`` on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from psfh.core.errors import PSFHInputError
from psfh.core.options import BACKENDS, PRECISIONS

EXIT_BAD_INPUT = 2


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """``main(argv)``'s exit status; a PSFHInputError prints ``error: ...`` and gives 2."""
    try:
        return main(argv)
    except PSFHInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --folds, --no-tta, --precision, --device, --backend (predict, evaluate, cine)."""
    parser.add_argument("--model", default=None,
                        help="model package folder or hub repo id (default: the embedded package)")
    parser.add_argument("--folds", nargs="+", default=None, metavar="ADAPTER",
                        help="the adapters to use, e.g. fold_0 fold_2, or soup (default: the package's default: "
                             "its fold soup when it ships one as default, else every fold)")
    parser.add_argument("--ensemble", action="store_true",
                        help="every fold adapter: the full fold ensemble (with the per-fold AoP spread and the "
                             "fold-disagreement map), instead of the package's default")
    parser.add_argument("--no-tta", action="store_true", help="no horizontal-flip test-time augmentation "
                        "(default: the package's setting)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if any)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="what runs the encoder and fold decoders: torch, or (CPU, fp32) an ONNX export of "
                             "the package run by onnxruntime or openvino, made once and cached (default: torch)")


def add_spacing_argument(parser: argparse.ArgumentParser) -> None:
    """--spacing-mm ROW COL (predict and cine): the pixel spacing for the HSD in mm."""
    parser.add_argument("--spacing-mm", nargs=2, type=float, default=None, metavar=("ROW", "COL"),
                        help="pixel spacing in mm (row, column) for the head-symphysis distance in mm "
                             "(default: the file's own, when it has one)")


def chosen_adapters(args: argparse.Namespace, model) -> list[str] | None:
    """The adapters --folds / --ensemble ask for (None: the package's default), for ``model``."""
    if args.ensemble and args.folds:
        raise PSFHInputError("--ensemble uses every fold: give --folds or --ensemble, not both")
    return model.folds if args.ensemble else args.folds


def load_model(model: str | None, device: str | None = None, backend: str = "torch"):
    """PSFHModel.from_pretrained, imported here because torch takes seconds to import."""
    from psfh.model.psfh_model import PSFHModel

    return PSFHModel.from_pretrained(model, device=device, backend=backend)
