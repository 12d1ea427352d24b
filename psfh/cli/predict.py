"""The `psfh-predict` command line (also `python -m psfh.predict`): see :mod:`psfh.batch.predict`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psfh.batch.predict
from psfh.batch.predict import CSV_NAME, predict_paths, read_manifest
from psfh.cli.common import (
    add_engine_arguments,
    add_model_arguments,
    add_spacing_argument,
    chosen_adapters,
    engine_options,
    load_model,
    model_source,
    run_cli,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psfh-predict", description=psfh.batch.predict.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                        help="image files or folders (or give them in --manifest)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    add_spacing_argument(parser)
    add_model_arguments(parser)
    parser.add_argument("--stability-check", action="store_true",
                        help="also segment each image made brighter, darker and zoomed out with one fold, and flag "
                             "an AoP that moves too much (three more passes of one fold an image)")
    add_engine_arguments(parser, "image")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.inputs and args.manifest is None:
        parser.error("give image files or folders, or --manifest")
    options = engine_options(args)  # bad engine options end the command before the model loads
    inputs = [*args.inputs, *(read_manifest(args.manifest) if args.manifest else [])]
    model = load_model(args.model, args.device, args.backend)
    settings = {"tta": False if args.no_tta else None, "precision": args.precision, "spacing_mm": args.spacing_mm,
                "stability_check": args.stability_check, "resume": args.resume}
    if options is None:
        rows = predict_paths(model, inputs, args.out, folds=chosen_adapters(args, model), **settings)
    else:
        from psfh.batch.ray_engine import predict_paths_on_ray

        # The driver checks the package and resolves the adapters once, so that every worker uses
        # the same; its copy of the model is then let go (each worker loads its own).
        folds = model.members(chosen_adapters(args, model))
        del model
        rows = predict_paths_on_ray(model_source(args), inputs, args.out, folds=folds, options=options, **settings)
    failed = sum(1 for row in rows if row["error"])
    print(f"{len(rows) - failed} of {len(rows)} images predicted; results in {args.out / CSV_NAME}"
          + (f"; {failed} failed (see the error column)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
