"""The `psfh-cine` command line (also `python -m psfh.cine`): see :mod:`psfh.batch.cine`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psfh.batch.cine
from psfh.batch.cine import analyse_clip, fast_options, write_clip
from psfh.cli.common import add_model_arguments, add_spacing_argument, chosen_adapters, load_model, run_cli
from psfh.core.errors import PSFHInputError
from psfh.io.images import image_name
from psfh.io.sequence import read_sequence
from psfh.measure.hsd import check_spacing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psfh-cine", description=psfh.batch.cine.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", nargs="+", type=Path, metavar="CLIP",
                        help="multi-frame DICOMs, videos (.mp4 .avi .mov .mkv) or folders of frames")
    parser.add_argument("--out", required=True, type=Path, help="output folder (one subfolder per clip)")
    parser.add_argument("--fast", action="store_true", help="the fold soup x flip (one fold, no flip, without a soup): for long clips")
    parser.add_argument("--max-frames", type=int, default=None, help="only the first N frames of each clip")
    add_spacing_argument(parser)
    add_model_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    check_spacing(args.spacing_mm)  # bad arguments end the command (exit 2), before the model loads
    if args.fast and (args.folds or args.no_tta or args.ensemble):
        raise PSFHInputError("--fast chooses the adapters and the TTA itself: give none of --folds, --ensemble, "
                             "--no-tta")
    model = load_model(args.model, args.device, args.backend)
    options = (fast_options(model) if args.fast
               else {"folds": chosen_adapters(args, model), "tta": False if args.no_tta else None})
    failed = 0
    for clip in args.clips:
        try:
            sequence = read_sequence(clip, max_frames=args.max_frames)
            with tqdm(total=len(sequence), desc=clip.name, unit="frame") as bar:
                result = analyse_clip(model, sequence, precision=args.precision, spacing_mm=args.spacing_mm,
                                      on_frame=lambda done, total: bar.update(1), **options)
            folder = write_clip(result, args.out / (image_name(clip) if clip.is_file() else clip.name))
            summary = result.summary()
            top = (f"max AoP {summary['max_aop_deg']:.1f} deg at frame {summary['max_aop_frame']}"
                   if summary["max_aop_deg"] is not None else "no trusted AoP")
            print(f"{clip}: {summary['frames']} frames, {top}, {len(summary['frames_flagged'])} flagged; "
                  f"{summary['seconds_per_frame']:.1f} s per frame; results in {folder}")
        except PSFHInputError as error:
            failed += 1
            print(f"error: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
