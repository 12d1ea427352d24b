"""Many clips, one folder each: where a clip's results go, whether an earlier run finished it, and
the one per-clip step (read, analyse, write) that every engine of ``psfh-cine`` runs.

The analysis itself is :mod:`psfh.batch.cine` (``analyse_clip``, ``write_clip``); this module only
plans the folders and runs it clip by clip, so the single-process command line and the Ray workers
(:mod:`psfh.batch.ray_engine`) write the same files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from psfh.batch.cine import analyse_clip, write_clip
from psfh.batch.predict import read_manifest
from psfh.core.errors import PSFHInputError
from psfh.core.files import earlier_claimants
from psfh.io.images import image_name
from psfh.io.sequence import FrameSequence, read_sequence

# What write_clip leaves in a finished clip's folder (label_maps/ aside): a clip is done when all are there.
FINISHED_FILES = ("frames.csv", "summary.json", "aop_curve.svg")


@dataclass(frozen=True)
class ClipJob:
    """One clip and its output folder; ``refused`` says why it must not be written."""

    clip: Path
    folder: Path
    refused: str | None = None

    @property
    def done(self) -> bool:
        """Whether an earlier run finished this clip (every file of FINISHED_FILES is in its folder)."""
        return all((self.folder / name).is_file() for name in FINISHED_FILES)


def clip_inputs(clips: Iterable[str | os.PathLike], manifest: str | os.PathLike | None = None) -> list[Path]:
    """The clips given, then those a manifest lists (:func:`psfh.batch.predict.read_manifest`)."""
    paths = [Path(clip) for clip in clips]
    if manifest is not None:
        paths += read_manifest(manifest)
    if not paths:
        raise PSFHInputError("no clips given")
    return paths


def plan_clips(clips: Iterable[Path], out_dir: Path) -> list[ClipJob]:
    """OUT/NAME for each clip (NAME: a file's name without extension, a folder's name), refusing a
    folder that an earlier clip of the run already claimed (compared case-insensitively)."""
    clips = list(clips)
    folders = [out_dir / (image_name(clip) if clip.is_file() else clip.name) for clip in clips]
    jobs = []
    for clip, folder, claimant in zip(clips, folders, earlier_claimants(clips, folders)):
        refused = None
        if claimant is not None:
            refused = (f"{clip}: its results folder {folder} is already that of {claimant} (same name); "
                       "rename one of them or analyse them into different --out folders")
        jobs.append(ClipJob(clip, folder, refused))
    return jobs


def read_clip(job: ClipJob, max_frames: int | None = None) -> FrameSequence:
    """The clip's frames; PSFHInputError (naming the clip) when it is refused or unreadable."""
    if job.refused:
        raise PSFHInputError(job.refused)
    return read_sequence(job.clip, max_frames=max_frames)


def analyse_and_write(model, job: ClipJob, sequence: FrameSequence, folds: list[str] | None = None,
                      tta: bool | None = None, precision: str = "fp32",
                      spacing_mm: tuple[float, float] | None = None,
                      on_frame: Callable[[int, int], None] | None = None) -> dict:
    """Analyse every frame (:func:`psfh.batch.cine.analyse_clip`), write the clip's folder
    (:func:`psfh.batch.cine.write_clip`) and return its summary."""
    result = analyse_clip(model, sequence, folds=folds, tta=tta, precision=precision, spacing_mm=spacing_mm,
                          on_frame=on_frame)
    write_clip(result, job.folder)
    return result.summary()


def clip_line(job: ClipJob, summary: dict) -> str:
    """The line a finished clip prints."""
    top = (f"max AoP {summary['max_aop_deg']:.1f} deg at frame {summary['max_aop_frame']}"
           if summary["max_aop_deg"] is not None else "no trusted AoP")
    return (f"{job.clip}: {summary['frames']} frames, {top}, {len(summary['frames_flagged'])} flagged; "
            f"{summary['seconds_per_frame']:.1f} s per frame; results in {job.folder}")


def clip_error(job: ClipJob, error: Exception) -> str:
    """What a failed clip prints after ``error: ``: the clip is named once."""
    if isinstance(error, PSFHInputError):
        message = str(error)
        return message if str(job.clip) in message else f"{job.clip}: {message}"
    return f"{job.clip}: {type(error).__name__}: {error}"
