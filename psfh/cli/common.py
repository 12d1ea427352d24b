"""What every psfh command line shares: the model options, loading the model, the engine options
(predict, cine), exit codes.

Each CLI's ``main(argv)`` runs through :func:`run_cli`, so bad input (a
:class:`~psfh.core.errors.PSFHInputError`) ends every command the same way: ``error: MESSAGE`` on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

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


ENGINES = ("single", "ray")
RAY_ONLY = ("address", "workers", "threads", "gpus_per_worker", "retries")


def add_engine_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """--engine and the Ray engine's options, --resume, --manifest (predict and cine); ``unit``:
    what an item is ("image", "clip")."""
    group = parser.add_argument_group("engine (many inputs: a local Ray or a cluster)")
    group.add_argument("--manifest", type=Path, default=None, metavar="LIST.csv",
                       help=f"a CSV listing more {unit}s: a 'path' (or 'input') column, or one path a line; "
                            "relative paths are taken from the CSV's folder")
    group.add_argument("--resume", action="store_true",
                       help=f"skip the {unit}s an earlier run into the same --out finished (it does not check that "
                            "the model or options were the same)")
    group.add_argument("--engine", choices=ENGINES, default="single",
                       help="single: this process (default); ray: a pool of worker processes on Ray, each loading "
                            "the model once, on this machine or a cluster (pip install 'psfh[ray]')")
    group.add_argument("--address", default=None,
                       help="ray: join this Ray cluster (auto: the one `ray start` made here; or HOST:6379); "
                            "default: start a local Ray on this machine")
    group.add_argument("--workers", type=int, default=None,
                       help="ray: worker processes (default: the cluster's CPUs / --threads)")
    group.add_argument("--threads", type=int, default=None,
                       help="ray: torch threads (CPUs reserved) per worker (default: the CPUs / --workers when "
                            "--workers is given, else 1)")
    group.add_argument("--gpus-per-worker", type=float, default=None,
                       help="ray: GPUs per worker (0.5: two workers a GPU); the workers then run on cuda (default: "
                            "CPU workers, on cpu)")
    group.add_argument("--retries", type=int, default=None,
                       help=f"ray: try a {unit} again this many times when its worker process dies (default 2); "
                            "then its row says it failed and why")


def engine_options(args: argparse.Namespace):
    """The Ray engine's options (a psfh.batch.ray_engine.RayOptions) for --engine ray, None for
    --engine single; a Ray-only option without --engine ray is refused."""
    from psfh.batch.ray_engine import RayOptions, import_ray

    given = [name for name in RAY_ONLY if getattr(args, name) is not None]
    if args.engine != "ray":
        if given:
            raise PSFHInputError(f"--{given[0].replace('_', '-')} is an option of the Ray engine: add --engine ray")
        return None
    options = {name: getattr(args, name) for name in ("address", "workers", "threads", "retries")
               if getattr(args, name) is not None}
    if args.gpus_per_worker is not None:
        options["gpus"] = args.gpus_per_worker
    options = RayOptions(**options).check()
    import_ray()  # a missing Ray is said before the model loads
    return options


def model_source(args: argparse.Namespace):
    """What each Ray worker loads: the --model, --device and --backend of the command line. Without
    --device a worker takes the device it reserves: cuda with --gpus-per-worker, else cpu (a CPU
    worker on a GPU node must not crowd onto its GPU)."""
    from psfh.batch.ray_engine import ModelSource

    model = args.model
    if model is not None and Path(model).exists():
        model = str(Path(model).resolve())  # a folder: the same one whatever a worker's working folder
    device = args.device or ("cuda" if args.gpus_per_worker else "cpu")
    return ModelSource(model, device, args.backend)


def chosen_adapters(args: argparse.Namespace, model) -> list[str] | None:
    """The adapters --folds / --ensemble ask for (None: the package's default), for ``model``."""
    if args.ensemble and args.folds:
        raise PSFHInputError("--ensemble uses every fold: give --folds or --ensemble, not both")
    return model.folds if args.ensemble else args.folds


def load_model(model: str | None, device: str | None = None, backend: str = "torch"):
    """PSFHModel.from_pretrained, imported here because torch takes seconds to import."""
    from psfh.model.psfh_model import PSFHModel

    return PSFHModel.from_pretrained(model, device=device, backend=backend)
