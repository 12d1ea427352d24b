"""The `psfh-evaluate` command line (also `python -m psfh.evaluate`): see :mod:`psfh.batch.evaluate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psfh.batch.evaluate
from psfh.batch.evaluate import ROWS_NAME, SUMMARY_NAME, evaluate, score_predictions, write_rows, write_summary
from psfh.cli.common import add_model_arguments, chosen_adapters, load_model, run_cli
from psfh.core.errors import PSFHInputError
from psfh.io.dataset import find_samples, read_ids_file, select_samples


def _make_out_dir(out_dir: Path) -> None:
    """Create --out before inference, so an unusable folder fails now, not after the run."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PSFHInputError(f"{out_dir}: cannot create the output folder ({error})") from error


def _summary_text(summary: dict) -> str:
    def number(key, digits=3):
        value = summary.get(key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    return (f"n {summary['n']}: Dice PS {number('dice_ps')} FH {number('dice_fh')} all {number('dice_all')}; "
            f"HD PS {number('hd_ps', 2)} FH {number('hd_fh', 2)} all {number('hd_all', 2)}; "
            f"ASD all {number('asd_all', 2)}; AoP error mean {number('aop_error_mean', 2)} deg "
            f"(median {number('aop_error_median', 2)}, measured on {summary['aop_measured']}); "
            f"PS axis error mean {number('ps_axis_error_deg_mean', 2)} deg (median {number('ps_axis_error_deg_median', 2)}); "
            f"AoP error with the expert's PS {number('aop_error_expert_ps_mean', 2)} deg, "
            f"with the expert's head {number('aop_error_expert_fh_mean', 2)} deg; "
            f"challenge-definition AoP error mean {number('aop_challenge_error_mean', 2)} deg "
            f"(median {number('aop_challenge_error_median', 2)}); "
            f"score {number('score', 4)}")


# --- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psfh-evaluate", description=psfh.batch.evaluate.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="labelled data set folder (either layout)")
    parser.add_argument("--out", required=True, type=Path, help="folder for per_image.csv and summary.json")
    add_model_arguments(parser)
    parser.add_argument("--ids-file", type=Path, default=None,
                        help="evaluate only the ids listed in this file (one per line)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N (selected) images")
    parser.add_argument("--out-of-fold", action="store_true",
                        help="predict each image with the fold that held it out (the package's folds.json)")
    parser.add_argument("--save-label-maps", action="store_true", help="also write the label maps as psfh.predict would: OUT/label_maps/NAME.mha (.mha inputs) or NAME.png")
    parser.add_argument("--predictions", type=Path, default=None,
                        help="score label maps already written (DIR/<id>.png, .mha, ...: e.g. psfh.predict's --out) "
                             "instead of running a model")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # The data set is checked before the model loads: a wrong --data fails in a second.
    ids = read_ids_file(args.ids_file) if args.ids_file else None
    samples = select_samples(find_samples(args.data), ids, args.limit)
    if args.predictions is not None:
        model_options = [flag for flag, given in (("--model", args.model), ("--folds", args.folds), ("--ensemble", args.ensemble),
                                                  ("--out-of-fold", args.out_of_fold),
                                                  ("--save-label-maps", args.save_label_maps)) if given]
        if model_options:
            raise PSFHInputError(f"--predictions scores label maps already written, with no model: "
                                 f"{', '.join(model_options)} would be ignored")
    _make_out_dir(args.out)
    if args.predictions is not None:
        rows, summary = score_predictions(samples, args.predictions)
    else:
        model = load_model(args.model, args.device, args.backend)
        rows, summary = evaluate(model, samples, folds=chosen_adapters(args, model), tta=False if args.no_tta else None,
                                 precision=args.precision, out_of_fold=args.out_of_fold,
                                 label_map_dir=args.out / "label_maps" if args.save_label_maps else None)
        summary.update(model=args.model or summary["model"])
    summary.update(data=str(args.data),
                   ids_file=None if args.ids_file is None else str(args.ids_file), limit=args.limit)
    try:
        write_rows(rows, args.out / ROWS_NAME)
        write_summary(summary, args.out / SUMMARY_NAME)
    except OSError as error:  # e.g. --out is a file or not writable
        raise PSFHInputError(f"cannot write the results to {args.out} ({error})") from error
    print(_summary_text(summary))
    print(f"wrote {args.out / ROWS_NAME} and {args.out / SUMMARY_NAME}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
