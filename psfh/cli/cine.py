"""The `psfh-cine` command line (also `python -m psfh.cine`): see :mod:`psfh.batch.cine`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psfh.batch.cine
from psfh.batch.cine import fast_options
from psfh.batch.clips import analyse_and_write, clip_error, clip_inputs, clip_line, plan_clips, read_clip
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
from psfh.core.errors import PSFHInputError
from psfh.measure.hsd import check_spacing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psfh-cine", description=psfh.batch.cine.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", nargs="*", type=Path, metavar="CLIP",
                        help="multi-frame DICOMs, videos (.mp4 .avi .mov .mkv) or folders of frames (or give them in "
                             "--manifest)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (one subfolder per clip)")
    parser.add_argument("--fast", action="store_true", help="the fold soup x flip (one fold, no flip, without a soup): for long clips")
    parser.add_argument("--max-frames", type=int, default=None, help="only the first N frames of each clip")
    add_spacing_argument(parser)
    add_model_arguments(parser)
    add_engine_arguments(parser, "clip")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.clips and args.manifest is None:
        parser.error("give clips, or --manifest")
    check_spacing(args.spacing_mm)  # bad arguments end the command (exit 2), before the model loads
    if args.fast and (args.folds or args.no_tta or args.ensemble):
        raise PSFHInputError("--fast chooses the adapters and the TTA itself: give none of --folds, --ensemble, "
                             "--no-tta")
    options = engine_options(args)
    clips = clip_inputs(args.clips, args.manifest)
    model = load_model(args.model, args.device, args.backend)
    chosen = (fast_options(model) if args.fast
              else {"folds": chosen_adapters(args, model), "tta": False if args.no_tta else None})
    if options is not None:
        from psfh.batch.ray_engine import analyse_clips_on_ray

        chosen["folds"] = model.members(chosen["folds"])  # resolved once: every worker uses the same
        del model  # each worker loads its own
        failed = analyse_clips_on_ray(model_source(args), clips, args.out, precision=args.precision,
                                      spacing_mm=args.spacing_mm, max_frames=args.max_frames, resume=args.resume,
                                      options=options, **chosen)
        return 1 if failed else 0
    return 1 if _analyse_here(model, clips, args, chosen) else 0


def _analyse_here(model, clips: list[Path], args: argparse.Namespace, chosen: dict) -> int:
    """The single-process engine: the clips one after the other; returns how many failed."""
    from tqdm import tqdm

    failed = 0
    for job in plan_clips(clips, args.out):
        if args.resume and job.done and not job.refused:
            print(f"{job.clip}: done by an earlier run; skipped (results in {job.folder})")
            continue
        try:
            sequence = read_clip(job, args.max_frames)
            with tqdm(total=len(sequence), desc=job.clip.name, unit="frame") as bar:
                summary = analyse_and_write(model, job, sequence, precision=args.precision,
                                            spacing_mm=args.spacing_mm,
                                            on_frame=lambda done, total: bar.update(1), **chosen)
            print(clip_line(job, summary))
        except Exception as error:  # noqa: BLE001 - one bad clip must not end a run of many
            failed += 1
            print(f"error: {clip_error(job, error)}", file=sys.stderr)
    return failed


if __name__ == "__main__":
    sys.exit(main())
