"""Cine clips: every frame segmented, the AoP as a curve over time, its maximum, flagged frames marked.

    python -m psfh.cine clip.dcm --out results/clip          # a multi-frame DICOM
    python -m psfh.cine labour.mp4 frames/ --out results/ --fast

Labour progress is judged over time (the AoP during pushing, its maximum, its trend), not from
one still. A clip (:func:`psfh.io.sequence.read_sequence`: a multi-frame DICOM, a video, a folder of
frames) is segmented frame by frame with the single-image path (:meth:`PSFHModel.predict`: one
encoder pass per frame, view and fold-encoder). Frames the quality check flags keep their row
but are left out of the curve and its maximum (marked in the CSV and on the plot).

For each clip NAME, ``--out`` gets NAME/frames.csv (one row per frame: index, name, time, AoP,
the check, HSD, areas), NAME/summary.json (the maximum and where it occurs, frames flagged,
seconds per frame, what was read), NAME/aop_curve.svg and NAME/label_maps/<frame>.png.
A frame's AoP can be re-measured from a user's own points, like a single image's
(:meth:`ClipResult.adjusted`, :mod:`psfh.model.calipers`): its row, the curve and its maximum follow.
``--fast`` (the fold soup x flip; one fold, no flip, in a package without a soup) costs a fifth
(a tenth) of the full ensemble per frame, for long clips.

Exit status: 0 when every clip was analysed, 1 when some failed, 2 for bad arguments or model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from psfh.core.errors import PSFHInputError
from psfh.core.files import write_csv_atomic, write_text_atomic
from psfh.core.options import first_folds
from psfh.io.images import save_label_map
from psfh.io.sequence import FrameSequence
from psfh.measure.hsd import check_spacing
from psfh.model import calipers
from psfh.model.prediction import reported_values

# Prediction.table_cells' cells that a frame's row keeps (aop.csv has them all).
SHARED_COLUMNS = ("aop_deg", "aop_deg_measured", "check", "hsd_mm", "ps_area_px", "fh_area_px", "flip_aop_gap")
FRAME_COLUMNS = ("frame", "name", "time_s", "aop_deg", "aop_deg_measured", "in_curve", "check", "hsd_mm",
                 "ps_area_px", "fh_area_px", "flip_aop_gap", "seconds", "adjusted_by_user")


@dataclass
class ClipResult:
    """The analysis of one clip.

    Attributes:
        rows: one dict per frame, keyed by FRAME_COLUMNS (None for empty cells); ``in_curve``
            is False for frames without a trusted AoP.
        label_maps: N H x W uint8 label maps, one per frame.
        measurements: N (AoPMeasurement, HSDMeasurement) of the label maps, so that a frame is
            drawn (the demo's scrubbing) without measuring again.
        checks: N quality checks (:class:`psfh.measure.quality.QualityCheck` or None), judged again
            when a frame is adjusted.
        adjusted_points: {frame: {point name: (x, y)}}, the points a user placed per frame
            (:meth:`adjusted`); empty for the model's own clip.
        source: what was read (:attr:`FrameSequence.source`).
        spacing_mm: (row, col) mm per pixel used for the HSD, None when unknown.
        folds, tta: what the ensemble used.
        seconds: wall time of the whole analysis.
        stopped_early: why the analysis ended before the clip's last frame (a time limit), or
            None: then ``rows`` are the first frames only.
    """

    rows: list[dict]
    label_maps: list[np.ndarray]
    source: str
    spacing_mm: tuple[float, float] | None
    folds: list[str]
    tta: bool
    seconds: float
    names: list[str] = field(default_factory=list)
    measurements: list[tuple] = field(default_factory=list)
    checks: list = field(default_factory=list)
    adjusted_points: dict[int, dict] = field(default_factory=dict)
    stopped_early: str | None = None

    @property
    def curve(self) -> list[dict]:
        """The frames with a trusted AoP, in order: the AoP curve."""
        return [row for row in self.rows if row["in_curve"]]

    @property
    def maximum(self) -> dict | None:
        """The curve's row with the largest AoP (the first on a tie), None for an empty curve."""
        curve = self.curve
        return max(curve, key=lambda row: row["aop_deg"]) if curve else None

    def adjusted(self, frame: int, ps_ends=None, tangent_point=None, *, ps_inferior=None,
                 ps_superior=None) -> "ClipResult":
        """This clip with frame ``frame``'s AoP and HSD re-measured from a user's points, as
        :meth:`psfh.model.prediction.Prediction.adjusted` does for one image (the arguments are its:
        ``(x, y)`` image pixels of the frame; earlier points on the frame stay). No model runs.

        Returns:
            A new ClipResult (this one is left as it is, for Undo): the frame's measurements, quality
            check and row (AoP, check, HSD, ``in_curve``, ``adjusted_by_user``) follow the points, and
            so do :attr:`curve`, :attr:`maximum` and the summary.

        Raises:
            PSFHInputError: a frame index outside the clip, or bad points (naming the point).
        """
        try:
            index = int(frame)
            known = index == frame and 0 <= index < len(self.rows)
        except (TypeError, ValueError):
            known = False
        if not known:
            raise PSFHInputError(f"frame must be a whole number from 0 to {len(self.rows) - 1}; got {frame!r}")
        frame = index
        quality = self.checks[frame] if frame < len(self.checks) else None
        result = calipers.adjust(self.label_maps[frame], quality, self.spacing_mm, self.adjusted_points.get(frame),
                                 ps_ends=ps_ends, tangent_point=tangent_point, ps_inferior=ps_inferior,
                                 ps_superior=ps_superior)
        cells = reported_values(result.aop, result.hsd, result.quality)
        rows, measurements, checks = list(self.rows), list(self.measurements), list(self.checks)
        rows[frame] = {**rows[frame], **cells, "in_curve": cells["aop_deg"] is not None,
                       "adjusted_by_user": calipers.moved_cell(result.moved)}
        measurements[frame] = (result.aop, result.hsd)
        if frame < len(checks):
            checks[frame] = result.quality
        return replace(self, rows=rows, measurements=measurements, checks=checks,
                       adjusted_points={**self.adjusted_points, frame: result.moved})

    def summary(self) -> dict:
        top = self.maximum
        return {
            "source": self.source,
            "frames": len(self.rows),
            "frames_in_curve": len(self.curve),
            "frames_flagged": [row["frame"] for row in self.rows if not row["in_curve"]],
            "frames_adjusted": sorted(self.adjusted_points),
            "max_aop_deg": None if top is None else top["aop_deg"],
            "max_aop_frame": None if top is None else top["frame"],
            "max_aop_time_s": None if top is None else top["time_s"],
            "pixel_spacing_mm": None if self.spacing_mm is None else list(self.spacing_mm),
            "folds": self.folds,
            "tta": self.tta,
            "seconds_per_frame": self.seconds / max(len(self.rows), 1),
            "stopped_early": self.stopped_early,
        }


def analyse_clip(model, sequence: FrameSequence, folds: list[str] | None = None, tta: bool | None = None,
                 precision: str = "fp32", spacing_mm: tuple[float, float] | None = None,
                 on_frame: Callable[[int, int], None] | None = None,
                 stop_on: tuple[type[BaseException], ...] = ()) -> ClipResult:
    """Segment every frame of ``sequence`` and measure its AoP and HSD.

    Args:
        model: a PSFHModel. folds, tta, precision: as in ``model.predict``.
        spacing_mm: (row, col) mm per pixel (default: the clip's own, when it has one).
        on_frame: called as ``on_frame(done, total)`` after each frame (a progress bar).
        stop_on: exceptions by which ``on_frame`` may end the analysis early (a time limit):
            the result then holds the frames done, and its ``stopped_early`` the exception's message.
    """
    check_spacing(spacing_mm)  # refused before the first frame, not at each
    start = time.perf_counter()
    spacing_mm = spacing_mm if spacing_mm is not None else sequence.spacing_mm
    rows, label_maps, measurements, checks, used_tta, used_folds = [], [], [], [], tta, folds
    stopped = None
    for index in range(len(sequence)):
        frame_start = time.perf_counter()
        prediction = model.predict(sequence.image(index), folds=folds, tta=tta, precision=precision,
                                   spacing_mm=spacing_mm)
        used_tta, used_folds = prediction.tta, prediction.folds
        cells = prediction.table_cells()
        rows.append({
            "frame": index,
            "name": sequence.names[index],
            "time_s": None if sequence.frame_times_s is None else sequence.frame_times_s[index],
            **{key: cells[key] for key in SHARED_COLUMNS},
            "in_curve": prediction.aop_deg is not None,
            "seconds": time.perf_counter() - frame_start,
            "adjusted_by_user": "none",
        })
        label_maps.append(prediction.label_map)
        measurements.append((prediction.aop, prediction.hsd))
        checks.append(prediction.quality)
        if on_frame is not None:
            try:
                on_frame(index + 1, len(sequence))
            except stop_on as stop:
                if index + 1 < len(sequence):  # after the last frame there is nothing left to stop
                    stopped = str(stop) or type(stop).__name__
                    break
    return ClipResult(rows=rows, label_maps=label_maps, measurements=measurements, checks=checks,
                      source=sequence.source,
                      spacing_mm=spacing_mm,
                      folds=list(used_folds or []), tta=bool(used_tta), seconds=time.perf_counter() - start,
                      names=list(sequence.names[:len(rows)]), stopped_early=stopped)


def curve_svg(result: ClipResult, width: int = 640, height: int = 280) -> str:
    """The AoP curve as a standalone SVG (no plotting library): AoP over time (or frame index),
    the maximum ringed, flagged frames as grey ticks on the time axis."""
    use_time = all(row["time_s"] is not None for row in result.rows)
    xs = [row["time_s"] if use_time else row["frame"] for row in result.rows]
    curve = result.curve
    left, right, top, bottom = 56, 16, 16, 40
    x_low, x_high = (min(xs), max(xs)) if xs else (0, 1)
    x_high = x_high if x_high > x_low else x_low + 1
    angles = [row["aop_deg"] for row in curve]
    y_low, y_high = (np.floor(min(angles) / 5) * 5 - 5, np.ceil(max(angles) / 5) * 5 + 5) if angles else (90, 180)

    def px(x, y):
        return (left + (x - x_low) / (x_high - x_low) * (width - left - right),
                top + (y_high - y) / (y_high - y_low) * (height - top - bottom))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>']
    for tick in np.linspace(y_low, y_high, 5):
        _, y = px(x_low, tick)
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:.0f}</text>')
    for tick in np.linspace(x_low, x_high, 5):
        x, _ = px(tick, y_low)
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle">{tick:.3g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">'
                 f'{"time (s)" if use_time else "frame"}</text>')
    parts.append(f'<text x="12" y="{(top + height - bottom) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {(top + height - bottom) / 2})">AoP (deg)</text>')
    points = [(px(x, row["aop_deg"]), row) for x, row in zip(xs, result.rows) if row["in_curve"]]
    if points:
        parts.append('<polyline fill="none" stroke="#0072B2" stroke-width="2" points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for (x, y), _ in points) + '"/>')
        for (x, y), row in points:
            if row.get("adjusted_by_user") not in (None, "none"):  # a user's own points: hollow, with what
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="white" stroke="#0072B2" '
                             f'stroke-width="2"><title>frame {row["frame"]}: adjusted by the user '
                             f'({row["adjusted_by_user"]})</title></circle>')
            else:
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#0072B2"/>')
    for x, row in zip(xs, result.rows):
        if not row["in_curve"]:  # flagged: marked on the axis, left out of the curve
            cx, _ = px(x, y_low)
            parts.append(f'<line x1="{cx:.1f}" y1="{height - bottom - 8}" x2="{cx:.1f}" y2="{height - bottom}" '
                         f'stroke="#999999" stroke-width="2"><title>frame {row["frame"]}: {row["check"]}</title></line>')
    top_row = result.maximum
    if top_row is not None:
        x = top_row["time_s"] if use_time else top_row["frame"]
        cx, cy = px(x, top_row["aop_deg"])
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="none" stroke="#D55E00" stroke-width="2"/>')
        parts.append(f'<text x="{cx:.1f}" y="{cy - 9:.1f}" text-anchor="middle" fill="#D55E00">'
                     f'max {top_row["aop_deg"]:.1f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_clip(result: ClipResult, folder: Path) -> Path:
    """frames.csv, summary.json, aop_curve.svg and label_maps/<frame>.png under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, label_map in zip(result.names, result.label_maps):
        save_label_map(label_map, folder / "label_maps" / f"{name}.png", overwrite=True)
    return write_tables(result, folder)


def write_tables(result: ClipResult, folder: Path) -> Path:
    """frames.csv, summary.json and aop_curve.svg under ``folder`` (what an adjusted frame changes;
    the label maps stay)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(folder / "frames.csv", FRAME_COLUMNS, result.rows)
    write_text_atomic(folder / "summary.json", json.dumps(result.summary(), indent=1) + "\n")
    write_text_atomic(folder / "aop_curve.svg", curve_svg(result))
    return folder


def fast_options(model) -> dict:
    """The fast setting for long clips: the fold soup with the flip view (two encoder passes a
    frame: as accurate as the ensemble, docs/results/soup); without a soup, the first fold and no
    flip view (one pass)."""
    if model.soup:
        return {"folds": [model.soup], "tta": True}
    return {"folds": first_folds(model.folds, 1), "tta": False}


# --- command line ------------------------------------------------------------------------------
