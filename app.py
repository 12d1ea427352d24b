"""psfh demo: segment the pubic symphysis and fetal head in a transperineal ultrasound frame
and measure the angle of progression (AoP) and the head-symphysis distance (HSD), or follow the
AoP over a cine clip. Research and education only, not a medical device.

    python app.py                         # serves on 0.0.0.0:7860 (GRADIO_SERVER_NAME / _PORT)
    PSFH_MODEL=org/repo python app.py     # another model package: hub repo id or folder

A thin layer over the library: psfh.model.psfh_model loads the package once and predicts (fold adapters
hot-swapped over one shared base, behind a lock), psfh.io.images and psfh.io.sequence read files and
clips, psfh.batch.cine analyses a clip frame by frame, psfh.render.overlay draws. This file only wires them
to Gradio components, and psfh.serve shares the model fairly: single-frame requests go before clips (a
clip waits for them at each model call) and every request has a time limit. Importing it launches nothing:

    from app import build_demo, create_app
    demo = create_app("path/to/package")   # or build_demo(PSFHModel.from_pretrained(...))

API: the Run button is the endpoint "/segment" (image file, tta, n_folds, stability_check: on
unless False, mode: "soup" or "ensemble" of n_folds folds, left out: the package's default) ->
(label map PNG, label map MHA, AoP in degrees or None, report dict); "/correct" takes image, tta
and n_folds plus a box per structure to re-segment (ps_box, fh_box: [x0, y0, x1, y1] in image
pixels, or None) and returns the same; "/adjust" re-measures the AoP from the user's own points of its construction
(ps_ends: [[x, y], [x, y]], tangent_point: [x, y] in image pixels; either may be None) on the
image's segmentation, or, given label_map (an earlier result's label map file), on that one with no
model call, and returns the same; the Cine clip tab's Run is "/clip"
(clip file: a multi-frame DICOM or a video, fast) -> (frames CSV, summary dict); see README.md
for gradio_client calls.

Correction in the page: after a run, pick a structure and click two opposite corners of a box
around it on the overlay. The structure is re-segmented from the kept embeddings (SAM's box
prompt; no encoder pass), the AoP and downloads follow; Undo and Reset go back. Or pick a point of
the AoP construction, like an ultrasound machine's calipers: "PS ends" (click the symphysis' two
ends) or "Skull tangent" (click where the tangent from its inferior end touches the skull); the AoP
is re-measured from them (psfh.model.calipers, no model call), with the same Undo and Reset.

The Cine clip tab: every frame segmented (psfh.batch.cine.analyse_clip; one encoder pass per frame,
view and adapter, so "fast" is the fold soup x flip), the AoP curve with flagged frames left
out and marked, its maximum, and a slider to scrub through the frames' overlays (kept from the
run: scrubbing runs no model). The scrubbed frame's points can be moved like a single frame's;
the curve, its maximum and the downloads follow.

Serving (docs/SPACE.md, "Serving"): the single-frame endpoints share one queue ("psfh-model",
PSFH_CONCURRENCY at a time), clips another ("psfh-clip", PSFH_CLIP_CONCURRENCY); Gradio shows each
waiting request its place in the queue. A request that runs past its time limit (PSFH_TIME_LIMIT_S,
PSFH_CLIP_TIME_LIMIT_S) ends with a message saying what was done and what to try instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from psfh import serve
from psfh.batch.cine import ClipResult, analyse_clip, curve_svg, fast_options, write_clip, write_tables
from psfh.core.errors import PSFHInputError
from psfh.core.files import write_text_atomic
from psfh.core.options import first_folds
from psfh.io.dicom import is_dicom, modality_note, read_dicom_info
from psfh.io.images import (DICOM_EXTENSIONS, PILLOW_EXTENSIONS, SUPPORTED_EXTENSIONS, LoadedImage, as_uint8,
                            image_extension, image_name, load_image, load_label_map, pixel_spacing_mm,
                            save_label_map)
from psfh.io.sequence import VIDEO_EXTENSIONS, is_sequence, read_sequence
from psfh.measure import quality, stability
from psfh.model import calipers
from psfh.model.prompts import STRUCTURE_NAMES
from psfh.model.psfh_model import ImageEmbeddings, Prediction, PSFHModel
from psfh.model.soup import SOUP
from psfh.render.overlay import display_scale, render_disagreement, render_segmentation

log = logging.getLogger("psfh.app")

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT / "examples" / "image_mha"
CLIP_EXAMPLES = ROOT / "examples" / "dicom"
CLIP_EXTENSIONS = DICOM_EXTENSIONS + VIDEO_EXTENSIONS
# The demo analyses at most this many frames of a clip (a long clip on a CPU Space would hold a
# worker for many minutes); python -m psfh.cine has no limit.
CLIP_MAX_FRAMES = int(os.environ.get("PSFH_CLIP_MAX_FRAMES", "300"))
MAX_UPLOAD = "50mb"  # Gradio refuses larger uploads before they reach the handler ...
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # ... and the handler checks again (API callers, examples).
# Where each request writes its downloads (Gradio copies them to its own cache when serving).
OUTPUT_ROOT = Path(tempfile.gettempdir()) / "psfh-app"
OUTPUT_MAX_AGE_S = 3600
# Requests that may run at once. Fold adapters are switched under PSFHModel's lock, so only the
# forward passes queue up; reading, post-processing and drawing of other requests overlap them.
# Single frames and clips queue apart, and a running clip leaves the model to single frames
# between its model calls (psfh.serve.fair), so a clip never holds up a single frame for more
# than one call. Defaults for a 2-vCPU Space (docs/SPACE.md, "Serving").
CONCURRENCY = int(os.environ.get("PSFH_CONCURRENCY", "2"))
CLIP_CONCURRENCY = int(os.environ.get("PSFH_CLIP_CONCURRENCY", "2"))
# Seconds a request may run (its wait in the queue not counted); 0: no limit. Sized from the
# measured request times on 2 cores (docs/SPACE.md, "Deploying on a Space's 2 vCPU"): a single
# frame stays well inside its limit; a long clip is cut (its first frames kept and shown): long
# clips are for python -m psfh.cine.
FRAME_TIME_LIMIT_S = float(os.environ.get("PSFH_TIME_LIMIT_S", "180"))
CLIP_TIME_LIMIT_S = float(os.environ.get("PSFH_CLIP_TIME_LIMIT_S", "600"))
# psfh.measure.stability's check, on in the page and the API unless unticked: three more passes of one adapter
# per image, for a flag that catches more of the wrong AoPs (model card, "Trust").
STABILITY_CHECK_DEFAULT = True

TITLE = "psfh: pubic symphysis & fetal head segmentation, angle of progression"
DISCLAIMER = ("**Research and education only. Not a medical device:** do not use it to make or "
              "support clinical decisions.")
AOP_EXPLAINED = (
    "The **angle of progression (AoP)** is the angle between the long axis of the pubic "
    "symphysis and a line from the symphysis' inferior end drawn tangent to the fetal skull. "
    "A larger angle means the fetal head has descended further down the birth canal. In published "
    "research, intrapartum AoP values above about 120\N{DEGREE SIGN} have been associated with a "
    "higher chance of spontaneous vaginal delivery; that is research context about groups of "
    "women, not a prediction or advice for anyone."
)
# Under a trusted AoP: the check misses most wrong outlines (model card, "Trust"), and its most
# common miss on unseen exams is a head outline that stops where the skull turns faint, which
# makes the AoP too small (the test exam 04964-04983 in the model card's "Trust").
PASSED_CHECK_CAVEAT = (
    "The quality check found nothing wrong, which does not make the result right: it misses most wrong "
    "outlines (model card, \"Trust\"). Look at the outlines before the number: where the skull's edge is "
    "faint, the head outline can stop short of it, and the angle can then come out too small."
)
HSD_EXPLAINED = (
    "The **head-symphysis distance (HSD)** is measured from the symphysis' inferior end to the fetal "
    "skull, perpendicular to the symphysis' long axis (docs/HSD.md). It is given in mm only when the "
    "file says how large a pixel is (a DICOM's Pixel Spacing or Ultrasound Regions)."
)


# ------------------------------------------------------------------------------- the handlers


# The correction picker's choices: a structure to box (-> the box keys of PSFHModel.decode) ...
CORRECTABLE = {"Pubic symphysis (PS)": "ps", "Fetal head (FH)": "fh"}
# ... or a point of the AoP construction to place, like an ultrasound machine's calipers (-> the
# arguments of Prediction.adjusted; psfh.model.calipers).
CALIPERS = {"PS ends (calipers)": "ps_ends", "Skull tangent (caliper)": "tangent_point"}


@dataclass
class Analysis:
    """What one run produced, kept (in a gr.State) for drawing and correcting: the kept embeddings
    (with the display image, H x W uint8), the prediction shown, notes about the input, the
    request's wall time, the image's geometry (for the MHA download), the correction boxes by
    structure key ("ps", "fh"), the construction's points the user placed ({"ps_inferior" /
    "ps_superior" / "tangent_point": (x, y)}), earlier (boxes, points) sets (undo), a first click
    of a two-click choice with that choice, and the last decode's (boxes, prediction), so that a
    point placed afterwards runs no model."""

    embeddings: ImageEmbeddings
    prediction: Prediction
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    spatial: dict | None = None
    boxes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    points: dict[str, tuple[float, float]] = field(default_factory=dict)
    history: list[tuple[dict, dict]] = field(default_factory=list)
    pending: tuple[float, float] | None = None
    pending_for: str | None = None
    decoded: tuple[dict, Prediction] | None = None

    @property
    def image(self) -> np.ndarray:
        return self.embeddings.image


def _user_error(error: Exception, path: str | os.PathLike | None) -> gr.Error:
    """A gr.Error with the message of a PSFHInputError, the server's temp path cut to the file name."""
    message = str(error)
    if path is not None:
        message = message.replace(str(path), Path(path).name)
    return gr.Error(message, duration=30, print_exception=False)


def check_upload(path: str | os.PathLike | None, missing: str = "Upload an image or pick one of the examples first.",
                 ) -> Path:
    """The uploaded file's path, or gr.Error: nothing chosen (``missing`` says what to do), a
    missing file, over the size limit."""
    if path is None or str(path) == "":
        raise gr.Error(missing, print_exception=False)
    path = Path(path)
    if not path.is_file():
        raise gr.Error(f"{path.name}: the upload was not found on the server; upload it again.",
                       print_exception=False)
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise gr.Error(f"{path.name}: the file is {size / 2**20:.1f} MB; the limit is "
                       f"{MAX_UPLOAD_BYTES / 2**20:.0f} MB.", print_exception=False)
    return path


def modality_notes(path: Path, info) -> list[str]:
    """The page's note for a DICOM whose modality is not ultrasound (psfh.io.dicom reads it anyway),
    from the file's own header fields: the library's warning goes to the server log, and
    catching it would swap process-wide warning state under other requests' threads."""
    note = None if info is None else modality_note(info)
    return [] if note is None else [f"\N{WARNING SIGN} {path.name}: {note}"]


def read_image(path: Path) -> tuple[LoadedImage, list[str]]:
    """load_image, with a note for a DICOM that is not ultrasound; a clip is pointed to its tab."""
    if is_sequence(path, folders=False):
        raise PSFHInputError(f"{path}: a cine clip (a multi-frame DICOM or a video): analyse it in the Cine "
                             "clip tab (the API's /clip), frame by frame")
    loaded = load_image(path)
    return loaded, modality_notes(path, loaded.dicom)


def input_notes(path: Path, loaded: LoadedImage) -> list[str]:
    """Plain-words notes on how an unusual input was converted (16-bit, colour, alpha)."""
    notes = []
    if loaded.original_dtype != "uint8":
        notes.append(f"{loaded.original_dtype} pixels: scaled min-max to 0-255 for display (the model "
                     "min-max scales every image).")
    if image_extension(path) in PILLOW_EXTENSIONS:
        with Image.open(path) as header:  # reads the header only; the pixels were read already
            mode = header.mode
        if "A" in mode or "a" in mode:
            notes.append(f"Image mode {mode}: the transparency (alpha) channel was ignored.")
        if mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F", "1", "LA"):
            notes.append(f"Image mode {mode}: converted to grayscale (luminance).")
    return notes


def describe_upload(image: str | None) -> tuple[np.ndarray | None, str]:
    """Upload -> (preview H x W uint8, status text). Problems are shown, not raised: the user
    sees at once what is wrong with the file, before running anything."""
    if not image:
        return None, ""
    try:
        path = check_upload(image)
        loaded, warned = read_image(path)
    except gr.Error as error:
        return None, f"\N{WARNING SIGN} {error.message}"
    except PSFHInputError as error:
        return None, f"\N{WARNING SIGN} {_user_error(error, image).message}"
    height, width = loaded.pixels.shape
    lines = [f"**{path.name}**: {width} \N{MULTIPLICATION SIGN} {height} pixels, {loaded.original_dtype}. "
             "Press **Run**."]
    lines += [f"- {note}" for note in warned + input_notes(path, loaded)]
    return as_uint8(loaded), "\n".join(lines)


def no_progress(*args, **kwargs) -> None:
    """The progress callback of a handler called without a progress bar (tests, scripts)."""


@contextmanager
def served(lock: serve.FairModelLock, kind: str, progress):
    """psfh.serve.request with the demo's time limit for ``kind`` ("frame" or "clip", read when
    the request starts); yields the handler's progress callback. A request past its limit ends
    with a gr.Error that says what was done and what to try instead."""
    if kind == serve.FRAME:
        limit_s, variable = FRAME_TIME_LIMIT_S, "PSFH_TIME_LIMIT_S"
    else:
        limit_s, variable = CLIP_TIME_LIMIT_S, "PSFH_CLIP_TIME_LIMIT_S"
    try:
        with serve.request(lock, kind, limit_s, progress, setting=variable) as watched:
            yield watched
    except serve.TimeLimitExceeded as error:
        log.warning("time limit: %s", error)
        raise gr.Error(str(error), duration=None, print_exception=False) from None


def _output_folder() -> Path:
    """A new folder for one request's downloads; folders older than an hour are removed."""
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in OUTPUT_ROOT.iterdir():
        try:
            if now - old.stat().st_mtime > OUTPUT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # another request removed it first
            pass
    folder = OUTPUT_ROOT / uuid.uuid4().hex
    folder.mkdir()
    return folder


# The demo's "Model" choice and the /segment API's mode: the package's default, the soup, the ensemble.
MODES = ("default", "soup", "ensemble")

def chosen_folds(model: PSFHModel, n_folds) -> list[str] | None:
    """The fold names for the number of folds asked (the slider's or the API's value; None: all)."""
    if n_folds is None:
        return None
    try:
        count = int(round(float(n_folds)))
    except (TypeError, ValueError):
        raise gr.Error(f"the number of folds must be a whole number from 1 to {len(model.folds)}, not "
                       f"{n_folds!r}", print_exception=False) from None
    try:
        return first_folds(model.folds, count)
    except PSFHInputError as error:
        raise _user_error(error, None) from None


def chosen_members(model: PSFHModel, mode: str | None, n_folds) -> list[str] | None:
    """The adapters a request uses. ``mode``: "soup" (the package's fold soup), "ensemble" (the
    first ``n_folds`` folds; None: all), "default" (the package's default); None: as before the
    soup, ``n_folds`` folds when given, else the default."""
    if mode is None:
        return chosen_folds(model, n_folds)
    if mode == "default":
        return None
    if mode == "soup":
        if model.soup is None:
            raise gr.Error("this model package has no fold soup: choose the ensemble", print_exception=False)
        return [model.soup]
    if mode == "ensemble":
        return chosen_folds(model, n_folds) or model.folds
    raise gr.Error(f"mode must be one of {', '.join(MODES)}, not {mode!r}", print_exception=False)


def members_text(folds: list[str]) -> str:
    """What made a result, in words: the fold soup, or an ensemble of named folds."""
    if folds == [SOUP]:
        return "the fold soup (one adapter: the mean of the folds' weight changes)"
    return f"{len(folds)} fold(s) ({', '.join(folds)})"


def write_downloads(prediction: Prediction, spatial: dict | None) -> tuple[Path, Path]:
    """The label map as PNG and MHA in a new request folder; both say which structures a user
    corrected and which construction points a user placed, where (PNG text chunks, MHA header keys
    ``psfh_corrected_by_user``, ``psfh_adjusted_by_user``: "none" for the model's own)."""
    out = _output_folder()
    name = prediction.name or "image"
    # The label map does not show the user's points: the header keeps them, with the label map
    # they give the construction again.
    metadata = {"psfh_corrected_by_user": ", ".join(prediction.corrected) or "none",
                "psfh_adjusted_by_user": calipers.moved_cell(prediction.adjusted_by_user)}
    label_png = save_label_map(prediction.label_map, out / f"{name}_labels.png", metadata=metadata)
    label_mha = save_label_map(prediction.label_map, out / f"{name}_labels.mha", spatial=spatial, metadata=metadata)
    return label_png, label_mha


def run_segment(model: PSFHModel, image: str | None, tta: bool = True, n_folds: int | None = None,
                progress=None, boxes: dict | None = None, stability_check: bool = False, mode: str | None = None):
    """The "/segment" (and "/correct") handler: file -> (label map PNG, label map MHA, AoP deg
    or None, report, Analysis).

    The encoder's work is kept in the Analysis (with the base embedding box prompts need), so
    corrections in the page run no encoder pass. ``stability_check`` adds
    :mod:`psfh.measure.stability`'s measure to the automatic result, which Undo and Reset come back to
    (not with ``boxes``: the library refuses it for a corrected result, a bad-input error).
    Thread-safe: PSFHModel switches adapters under its lock, and each request writes into its own
    folder. Bad input raises gr.Error with psfh's message.
    """
    start = time.perf_counter()
    # Not `progress or ...`: a gr.Progress has a length (its iterables), 0 until a tqdm runs.
    progress = no_progress if progress is None else progress
    progress(0.05, desc="Reading the image")
    path = check_upload(image)
    folds = chosen_members(model, mode, n_folds)
    try:
        loaded, warned = read_image(path)
        progress(0.2, desc=f"Segmenting with {members_text(model.members(folds))}{' and flip TTA' if tta else ''}")
        embeddings = model.embed(loaded, folds=folds, tta=bool(tta), for_prompts=True)
        prediction = model.decode(embeddings, boxes=boxes)
        if stability_check:  # refused with boxes, by psfh.measure.stability
            progress(0.7, desc="Stability check: one fold on the frame made brighter, darker and zoomed out")
            prediction = embeddings.automatic = stability.checked(model, prediction, embeddings.image)
        progress(0.9, desc="Writing the label maps")
        label_png, label_mha = write_downloads(prediction, loaded.spatial)
    except PSFHInputError as error:
        raise _user_error(error, path) from None
    boxes = {key: tuple(box) for key, box in (boxes or {}).items()}
    analysis = Analysis(embeddings, prediction, warned + input_notes(path, loaded), time.perf_counter() - start,
                        spatial=loaded.spatial, boxes=boxes, decoded=(dict(boxes), prediction))
    name = prediction.name or "image"
    aop = prediction.aop_deg
    log.info("segmented %s: folds=%s tta=%s aop=%s in %.2fs", name, prediction.folds, tta, aop, analysis.wall_s)
    return (str(label_png), str(label_mha), None if aop is None else round(aop, 1), prediction.report(),
            analysis)


def display_to_image(shape: tuple[int, ...], display_xy) -> tuple[float, float] | None:
    """A click on a picture made by render_segmentation of an image of ``shape`` (H, W, ...)
    (display pixels) -> (x, y) in image pixels, or None outside the image (the legend)."""
    height, width = shape[:2]
    factor = display_scale(height, width)
    x, y = ((float(v) + 0.5) / factor - 0.5 for v in display_xy)
    if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
        return None
    return x, y


def click_to_image(analysis: Analysis, display_xy) -> tuple[float, float] | None:
    """A click on the overlay (display pixels) -> (x, y) in image pixels, or None outside the image."""
    return display_to_image(analysis.image.shape, display_xy)


def caliper_arguments(points: dict) -> dict:
    """Stored construction points ({"ps_inferior": (x, y), ...}) -> Prediction.adjusted's arguments;
    both PS ends as ps_ends, so that they are told apart again by the (possibly corrected) head."""
    arguments = {key: points[key] for key in ("ps_inferior", "ps_superior", "tangent_point") if key in points}
    if "ps_inferior" in arguments and "ps_superior" in arguments:
        arguments["ps_ends"] = (arguments.pop("ps_inferior"), arguments.pop("ps_superior"))
    return arguments


def apply_corrections(model: PSFHModel, analysis: Analysis) -> tuple[Analysis, str]:
    """The shown result from the Analysis' boxes (decoded again only when they changed) and points
    (re-measured: no model); none of either: the automatic result. -> (Analysis, status).

    Raises PSFHInputError when the points do not fit the (corrected) result; the caller goes back."""
    start = time.perf_counter()
    boxes = dict(analysis.boxes)
    if analysis.decoded is None or analysis.decoded[0] != boxes:
        analysis.decoded = (boxes, model.decode(analysis.embeddings, boxes=boxes or None))
    prediction = analysis.decoded[1]
    if analysis.points:
        prediction = prediction.adjusted(**caliper_arguments(analysis.points))
    analysis.prediction = prediction
    seconds = time.perf_counter() - start
    changed = correction_words(prediction)
    status = (f"{changed} ({seconds:.2f} s). Undo or Reset go back." if changed else "The model's own result.")
    log.info("correction of %s: %s in %.3fs", prediction.name, changed or "none", seconds)
    return analysis, status


def change_corrections(model: PSFHModel, analysis: Analysis, boxes: dict, points: dict) -> tuple[Analysis, str]:
    """Show the result with these boxes and points, keeping the ones before for Undo; points that do
    not fit are not used: the result stays, and the status says why. -> (Analysis, status)."""
    before = (dict(analysis.boxes), dict(analysis.points))
    analysis.boxes, analysis.points = boxes, points
    try:
        analysis, status = apply_corrections(model, analysis)
    except PSFHInputError as error:
        analysis.boxes, analysis.points = before
        apply_corrections(model, analysis)  # the result shown before (its decode is kept: no model)
        return analysis, f"\N{WARNING SIGN} Not used: {error}"
    analysis.history.append(before)
    analysis.points = dict(analysis.prediction.adjusted_by_user)  # the ends in order, as measured
    return analysis, status


def correct_click(model: PSFHModel, analysis: Analysis | None, choice: str, display_xy):
    """A click on the overlay. With a structure (a CORRECTABLE label): the first corner of a box, or
    the second, which re-segments the structure from the box. With a point of the construction (a
    CALIPERS label): the first PS end, or the second, or the skull tangent point; the AoP is
    measured again from them. -> (Analysis, status)."""
    if analysis is None:
        raise gr.Error("Run the model first; then click on the overlay to correct it.", print_exception=False)
    point = click_to_image(analysis, display_xy)
    if point is None:
        return analysis, "Click inside the image (not the legend)."
    if CALIPERS.get(choice) == "tangent_point":
        analysis.pending = analysis.pending_for = None
        return change_corrections(model, analysis, dict(analysis.boxes),
                                  {**analysis.points, "tangent_point": point})
    if analysis.pending is None or analysis.pending_for != choice:
        analysis.pending, analysis.pending_for = point, choice
        if choice in CALIPERS:
            return analysis, (f"First end at ({point[0]:.0f}, {point[1]:.0f}); click the symphysis' other end "
                              "(either end first).")
        return analysis, (f"First corner at ({point[0]:.0f}, {point[1]:.0f}); click the opposite corner of the box "
                          f"around the {choice.split(' (')[0].lower()}.")
    first, analysis.pending, analysis.pending_for = analysis.pending, None, None
    if choice in CALIPERS:  # the PS ends: Prediction.adjusted tells the inferior from the superior end
        ends = {key: value for key, value in analysis.points.items() if key == "tangent_point"}
        try:
            moved = analysis.decoded[1].adjusted(ps_ends=(first, point), **ends).adjusted_by_user
        except PSFHInputError as error:
            return analysis, f"\N{WARNING SIGN} Not used: {error}"
        return change_corrections(model, analysis, dict(analysis.boxes), dict(moved))
    (x0, y0), (x1, y1) = first, point
    box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return analysis, "That box is too small: click two opposite corners a few pixels apart."
    return change_corrections(model, analysis, {**analysis.boxes, CORRECTABLE[choice]: box}, dict(analysis.points))


def undo_correction(model: PSFHModel, analysis: Analysis | None, reset: bool = False):
    """Back one correction, a box or a point (or, with ``reset``, to the model's own result).
    -> (Analysis, status)."""
    if analysis is None:
        raise gr.Error("Nothing to undo: run the model first.", print_exception=False)
    analysis.pending = analysis.pending_for = None
    if reset:
        analysis.history, analysis.boxes, analysis.points = [], {}, {}
    elif analysis.history:
        analysis.boxes, analysis.points = analysis.history.pop()
    return apply_corrections(model, analysis)


def run_adjust(model: PSFHModel, image: str | None, tta: bool = True, n_folds: int | None = None,
               ps_ends=None, tangent_point=None, label_map: str | None = None, progress=None,
               stability_check: bool = False, mode: str | None = None):
    """The "/adjust" handler: the AoP re-measured from the user's points -> (label map PNG, label map
    MHA, AoP deg or None, report, Analysis).

    ``ps_ends`` ([[x, y], [x, y]], either order) and ``tangent_point`` ([x, y]) in image pixels, one
    of them at least (Prediction.adjusted). With ``label_map`` (an earlier result's label map file,
    the PNG or MHA /segment or /correct returned) no model runs: that label map is measured on the
    image (its quality check: the image and anatomy checks); without one the image is segmented
    first, as "/segment" does. Bad points raise gr.Error naming the point and the problem.
    """
    if ps_ends is None and tangent_point is None:
        raise gr.Error("give ps_ends [[x, y], [x, y]] and/or tangent_point [x, y], in image pixels",
                       print_exception=False)
    if label_map is None or str(label_map) == "":
        *_, analysis = run_segment(model, image, tta, n_folds, progress, stability_check=stability_check, mode=mode)
    else:
        analysis = analysis_of_label_map(image, label_map)
    try:
        prediction = analysis.prediction.adjusted(ps_ends=ps_ends, tangent_point=tangent_point)
        label_png, label_mha = write_downloads(prediction, analysis.spatial)
    except PSFHInputError as error:
        raise _user_error(error, image) from None
    analysis.prediction, analysis.points = prediction, dict(prediction.adjusted_by_user)
    aop = prediction.aop_deg
    log.info("adjusted %s: %s -> aop=%s", prediction.name, calipers.moved_cell(prediction.adjusted_by_user), aop)
    return (str(label_png), str(label_mha), None if aop is None else round(aop, 1), prediction.report(),
            analysis)


def analysis_of_label_map(image: str | None, label_map: str) -> Analysis:
    """An Analysis of an image and a label map given with it (no model: no embeddings to decode
    again, so its boxes cannot be corrected; its points can)."""
    start = time.perf_counter()
    path = check_upload(image)
    labels_path = check_upload(label_map, "Give the earlier result's label map file, or leave label_map empty.")
    try:
        loaded, warned = read_image(path)
        labels = load_label_map(labels_path)
        spacing = pixel_spacing_mm(loaded)
        prediction = Prediction.from_label_map(labels, as_uint8(loaded), name=loaded.name, spacing_mm=spacing)
    except PSFHInputError as error:
        raise _user_error(_cut_path(error, labels_path), path) from None
    embeddings = ImageEmbeddings(image=as_uint8(loaded), name=loaded.name, folds=[], tta=False, precision="fp32",
                                 per_fold={}, automatic=prediction, spacing_mm=prediction.spacing_mm)
    return Analysis(embeddings, prediction, warned + input_notes(path, loaded), time.perf_counter() - start,
                    spatial=loaded.spatial, decoded=({}, prediction))


def _cut_path(error: PSFHInputError, path: Path) -> PSFHInputError:
    """The error with a second server path (the label map's) cut to its file name."""
    return PSFHInputError(str(error).replace(str(path), Path(path).name))


# ------------------------------------------------------------------------------- the cine clip


CLIP_MISSING = "Upload a clip first: a multi-frame DICOM or a video (or pick the example)."
MAX_FLAGGED_LISTED = 20  # the summary lists this many flagged frames; frames.csv has them all


@dataclass
class ClipView:
    """A clip's run, kept (in a gr.State) for scrubbing without running the model again: the
    frames as shown (N arrays, H x W uint8), the analysis shown (rows, label maps, spacing; with
    the user's adjusted frames), notes on the input, the folder of its downloads, whether the fast
    mode ran, the model's own analysis (Reset), earlier analyses (Undo) and a first PS end clicked
    (frame, (x, y))."""

    frames: list[np.ndarray]
    result: ClipResult
    notes: list[str] = field(default_factory=list)
    folder: Path | None = None
    fast: bool = False
    automatic: ClipResult | None = None
    history: list[ClipResult] = field(default_factory=list)
    pending: tuple[int, tuple[float, float]] | None = None
    tables: Path | None = None  # where the downloads of the adjusted analysis are (None: folder's)


def check_clip(path: Path):
    """A clip's DICOM header (None for a video), read before any frame is decoded.

    Raises PSFHInputError naming the file for what is no clip: another file type, a broken
    DICOM (no pixel data, truncated, not DICOM at all), a single-frame DICOM.
    """
    if image_extension(path) in VIDEO_EXTENSIONS:
        return None
    if not is_dicom(path):
        raise PSFHInputError(
            f"{path}: not a clip: upload a multi-frame DICOM or a video ({' '.join(VIDEO_EXTENSIONS)}); for one "
            "image use the Single frame tab. A folder of frames cannot be uploaded: analyse it with "
            "python -m psfh.cine FOLDER --out RESULTS")
    info = read_dicom_info(path)
    if info.number_of_frames < 2:
        raise PSFHInputError(f"{path}: a single-frame DICOM (one image, not a clip): use the Single frame tab")
    return info


def describe_clip(clip: str | None) -> str:
    """Clip upload -> status text: what the file holds (a DICOM's header only: a video is read at
    Run) or what is wrong with it. Shown, not raised, like :func:`describe_upload`."""
    if not clip:
        return ""
    try:
        path = check_upload(clip, CLIP_MISSING)
        info = check_clip(path)
    except gr.Error as error:
        return f"\N{WARNING SIGN} {error.message}"
    except PSFHInputError as error:
        return f"\N{WARNING SIGN} {_user_error(error, clip).message}"
    if info is None:
        return f"**{path.name}**: a video; its frames are read when you press **Run clip**."
    spacing = ("no pixel spacing (the HSD is drawn, not given in mm)" if info.spacing_mm is None else
               f"pixel spacing {info.spacing_mm[0]:g} \N{MULTIPLICATION SIGN} {info.spacing_mm[1]:g} mm")
    text = (f"**{path.name}**: multi-frame DICOM ({info.modality or 'no modality'}), {info.number_of_frames} frames "
            f"of {info.columns} \N{MULTIPLICATION SIGN} {info.rows} pixels, {spacing}. Press **Run clip**.")
    if info.number_of_frames > CLIP_MAX_FRAMES:
        text += f"\n- The demo analyses the first {CLIP_MAX_FRAMES} frames (python -m psfh.cine reads them all)."
    return text


def run_clip(model: PSFHModel, clip: str | None, fast: bool = True, progress=None):
    """The "/clip" handler: clip file -> (frames CSV, summary dict, ClipView).

    Every frame is segmented by :func:`psfh.batch.cine.analyse_clip` (``fast``: the fold soup x
    flip, or one fold without the flip view when the package has no soup,
    :func:`psfh.batch.cine.fast_options`; else all folds and the package's TTA), with
    ``progress`` told after each frame. frames.csv, summary.json, aop_curve.svg and the label
    maps (also zipped) go into a new request folder; the summary dict is summary.json's.
    Bad input raises gr.Error naming the file and the problem.
    """
    # Not `progress or ...`: a gr.Progress has a length (its iterables), 0 until a tqdm runs.
    progress = no_progress if progress is None else progress
    path = check_upload(clip, CLIP_MISSING)
    progress(0.0, desc="Reading the clip")
    try:
        info = check_clip(path)
        sequence = read_sequence(path, max_frames=CLIP_MAX_FRAMES)
        notes = modality_notes(path, sequence.dicom)
        options = fast_options(model) if fast else {}
        # Past the time limit the frames done so far are kept and shown (not thrown away).
        result = analyse_clip(model, sequence, on_frame=lambda done, total: progress(
            (done, total), desc="Segmenting the frames", unit="frames"), stop_on=(serve.TimeLimitExceeded,),
            **options)
        folder = write_clip(result, _output_folder() / (image_name(path) or "clip"))
    except PSFHInputError as error:
        raise _user_error(error, path) from None
    shutil.make_archive(str(folder / "label_maps"), "zip", folder / "label_maps")
    if info is not None and info.number_of_frames > len(sequence):
        notes.append(f"The first {len(sequence)} of {info.number_of_frames} frames were analysed (the demo's "
                     "limit); python -m psfh.cine reads them all.")
    elif info is None and len(sequence) == CLIP_MAX_FRAMES:
        notes.append(f"At most {CLIP_MAX_FRAMES} frames of a video are analysed here (the demo's limit); "
                     "python -m psfh.cine reads them all.")
    if result.stopped_early:
        notes.insert(0, f"Only the first {len(result.rows)} of {len(sequence)} frames were analysed: "
                        f"{result.stopped_early}")
        log.warning("clip %s stopped early: %s", path.name, result.stopped_early)
    view = ClipView([as_uint8(sequence.image(index)) for index in range(len(result.rows))], result, notes, folder,
                    bool(fast), automatic=result)
    summary = result.summary()
    log.info("clip %s: %d frames, folds=%s tta=%s, max aop %s at frame %s, %.2fs per frame", path.name,
             summary["frames"], result.folds, result.tta, summary["max_aop_deg"], summary["max_aop_frame"],
             summary["seconds_per_frame"])
    return str(folder / "frames.csv"), summary, view


def when(row: dict) -> str:
    """A frame's time in words, " (0.12 s)"; "" for a frame without one."""
    return "" if row["time_s"] is None else f" ({row['time_s']:.2f} s)"


def clip_markdown(view: ClipView) -> str:
    """The clip's summary: the maximum AoP, its frame and time, the frames left out of the curve
    and why, the time per frame and the ensemble used."""
    result = view.result
    top = result.maximum
    if top is None:
        lines = ["### Maximum AoP: none",
                 "No frame has a trusted AoP: each was flagged by the quality check or not measured."]
    else:
        lines = [f"### Maximum AoP: {top['aop_deg']:.1f}\N{DEGREE SIGN} at frame {top['frame']}{when(top)}"]
        if top["hsd_mm"] is not None:
            lines.append(f"HSD at that frame: {top['hsd_mm']:.1f} mm.")
        elif result.spacing_mm is None:
            lines.append("The HSD in mm needs a pixel spacing, which this clip does not give.")
    lines += ["", f"**{len(result.rows)} frames** ({result.source}); {len(result.curve)} in the AoP curve."]
    flagged = [row for row in result.rows if not row["in_curve"]]
    if flagged:
        lines += ["", f"**{len(flagged)} frame(s) left out of the curve** (grey ticks on its axis):"]
        lines += [f"- frame {row['frame']}{when(row)}: "
                  + (row["check"] if row["check"] != "ok" else "the AoP could not be measured")
                  for row in flagged[:MAX_FLAGGED_LISTED]]
        if len(flagged) > MAX_FLAGGED_LISTED:
            lines.append(f"- and {len(flagged) - MAX_FLAGGED_LISTED} more (frames.csv lists them all)")
    if result.adjusted_points:
        lines += ["", f"**Adjusted by you** (hollow dots on the curve): frame(s) "
                      f"{', '.join(str(frame) for frame in sorted(result.adjusted_points))}; the maximum and the "
                      "downloads follow."]
    per_frame = result.summary()["seconds_per_frame"]
    mode = ("fast mode" if view.fast else
            "for long clips, the fast mode runs one adapter instead of one per fold")
    lines += ["", f"**Time:** {result.seconds:.1f} s, **{per_frame:.2f} s per frame**; made by "
                  f"{members_text(result.folds)}, flip TTA {'on' if result.tta else 'off'} ({mode})."]
    lines += [f"- {note}" for note in view.notes]
    return "\n".join(lines) + f"\n\n{DISCLAIMER}"


def frame_view(view: ClipView | None, index) -> tuple[np.ndarray | None, str]:
    """Frame ``index`` (the slider's value) of a run clip -> (overlay, its numbers in words).

    From the kept frame, label map and measurements (no model pass, nothing measured again)."""
    if view is None:
        return None, ""
    count = len(view.frames)
    index = frame_index(view, index)
    row, label_map = view.result.rows[index], view.result.label_maps[index]
    aop, hsd = view.result.measurements[index]
    moved = view.result.adjusted_points.get(index, {})
    pending = view.pending[1] if view.pending is not None and view.pending[0] == index else None
    overlay = render_segmentation(view.frames[index], label_map, aop, hsd=hsd, pending=pending,
                                  user_points=tuple(moved))
    if row["in_curve"]:
        angle = f"AoP {row['aop_deg']:.1f}\N{DEGREE SIGN}"
    elif row["aop_deg_measured"] is not None:
        angle = (f"AoP withheld, left out of the curve: {row['check']} (measured on this segmentation: "
                 f"{row['aop_deg_measured']:.1f}\N{DEGREE SIGN})")
    else:
        angle = f"AoP not measured: {aop.reason}"
    if row["hsd_mm"] is not None:
        distance = f"HSD {row['hsd_mm']:.1f} mm"
    elif not hsd.measured:
        distance = f"HSD not measured ({hsd.reason})"
    elif hsd.distance_mm is None:
        distance = "HSD drawn; in mm it needs a pixel spacing"
    else:
        distance = "HSD withheld with the AoP"
    top = view.result.maximum
    mark = " \N{EM DASH} the clip's maximum" if top is not None and top["frame"] == index else ""
    yours = f" From your points: {calipers.moved_text(moved)} (ringed)." if moved else ""
    return overlay, (f"**Frame {index}** of 0\N{EN DASH}{count - 1}{when(row)}{mark}: {angle}. {distance}."
                     f"{yours}")


def frame_index(view: ClipView, value) -> int:
    """The slider's value -> a frame index of the clip (rounded, clamped)."""
    return min(max(int(round(float(value or 0))), 0), len(view.frames) - 1)


def clip_click(view: ClipView | None, frame, choice: str, display_xy) -> tuple[ClipView, str]:
    """A click on the scrubbed frame's overlay with a CALIPERS choice: the first PS end, the second
    (the frame is adjusted), or the skull tangent point (adjusted). -> (ClipView, status)."""
    if view is None:
        raise gr.Error("Run a clip first; then click on a frame's overlay to adjust its AoP.", print_exception=False)
    index = frame_index(view, frame)
    point = display_to_image(view.frames[index].shape, display_xy)
    if point is None:
        return view, "Click inside the frame (not the legend)."
    if CALIPERS[choice] == "tangent_point":
        view.pending, change = None, {"tangent_point": point}
    elif view.pending is None or view.pending[0] != index:
        view.pending = (index, point)
        return view, (f"Frame {index}: first end at ({point[0]:.0f}, {point[1]:.0f}); click the symphysis' other "
                      "end (either end first).")
    else:
        change, view.pending = {"ps_ends": (view.pending[1], point)}, None
    try:
        adjusted = view.result.adjusted(index, **change)
    except PSFHInputError as error:
        return view, f"\N{WARNING SIGN} Frame {index}, not used: {error}"
    view.history.append(view.result)
    view.result = adjusted
    moved = calipers.moved_text(adjusted.adjusted_points[index])
    return view, f"Frame {index} adjusted: your points: **{moved}**; the curve follows. Undo or Reset go back."


def clip_undo(view: ClipView | None, reset: bool = False) -> tuple[ClipView, str]:
    """Back one adjustment of the clip's frames (``reset``: to the model's own clip). -> (ClipView, status)."""
    if view is None:
        raise gr.Error("Nothing to undo: run a clip first.", print_exception=False)
    view.pending = None
    if reset:
        view.history, view.result = [], view.automatic or view.result
    elif view.history:
        view.result = view.history.pop()
    adjusted = sorted(view.result.adjusted_points)
    return view, (f"Adjusted by you: frame(s) {', '.join(map(str, adjusted))}." if adjusted
                  else "The model's own clip.")


def show_clip_change(view: ClipView, frame, status: str):
    """After a click, Undo or Reset in the clip tab: the state, the curve, the summary, the frame's
    overlay and numbers, the downloads (frames.csv, summary.json and the curve written again) and the
    status."""
    index = frame_index(view, frame)
    view.tables = view.folder if view.result is view.automatic else write_tables(view.result, _output_folder())
    overlay, text = frame_view(view, index)
    summary = view.result.summary()
    return (view, curve_html(view.result), clip_markdown(view), overlay, text, str(view.tables / "frames.csv"),
            clip_downloads(view), summary, status)


def clip_downloads(view: ClipView) -> list[str]:
    """The clip's summary.json and aop_curve.svg (of the adjusted analysis, when adjusted) and the label maps' ZIP."""
    tables = view.tables or view.folder
    return [str(tables / "summary.json"), str(tables / "aop_curve.svg"), str(view.folder / "label_maps.zip")]


def clip_limits_text() -> str:
    """The clip tab's words on this server's limits: frames, time, and single frames going first."""
    limit = (f"runs for at most {CLIP_TIME_LIMIT_S / 60:g} minutes (then the frames done so far are shown)"
             if CLIP_TIME_LIMIT_S > 0 else "has no time limit")
    return (f"Here a clip's first {CLIP_MAX_FRAMES} frames are analysed and a clip {limit}; single images go "
            "first, so a clip slows down while they run. Longer clips: `python -m psfh.cine` on your own machine.")


CURVE_PLACEHOLDER = ('<p class="psfh-curve" style="color: var(--body-text-color-subdued); padding: 1em 0">'
                     "The AoP curve over the clip appears here after <b>Run clip</b>.</p>")


def curve_html(result: ClipResult) -> str:
    """psfh.batch.cine's AoP curve (SVG, also a download), scrolling sideways in a narrow column."""
    return f'<div class="psfh-curve" style="overflow-x: auto">{curve_svg(result)}</div>'


def show_clip(view: ClipView | None):
    """ClipView -> the curve, the summary, the slider (at the maximum's frame), that frame's overlay
    and numbers, the other downloads and the status."""
    if view is None:
        raise gr.Error("No clip result to show; press Run clip again.", print_exception=False)
    count = len(view.frames)
    top = view.result.maximum
    start = top["frame"] if top is not None else 0
    slider = gr.Slider(minimum=0, maximum=max(count - 1, 1), value=start, step=1, interactive=count > 1,
                       label=f"Frame (0\N{EN DASH}{count - 1}): scrub to see each frame's overlay")
    overlay, text = frame_view(view, start)
    files = clip_downloads(view)
    status = f"Done: **{count} frames**."
    return curve_html(view.result), clip_markdown(view), slider, overlay, text, files, status


# ------------------------------------------------------------------------------- the texts


def corrected_text(prediction: Prediction) -> str:
    """The structures a user corrected, in words ("" for the model's own result)."""
    return ", ".join(name.replace("_", " ") for name in prediction.corrected)


def correction_words(prediction: Prediction) -> str:
    """What a user changed, for the status line: "Corrected: **fetal head**; your points: **skull
    tangent**" ("" for the model's own result)."""
    parts = []
    if prediction.corrected:
        parts.append(f"Corrected: **{corrected_text(prediction)}**")
    if prediction.adjusted_by_user:
        parts.append(f"{'y' if parts else 'Y'}our points: **{calipers.moved_text(prediction.adjusted_by_user)}**")
    return "; ".join(parts)


def adjusted_note(prediction: Prediction) -> str:
    """Under an AoP measured from a user's points: which points are the user's and which the model's
    ("" for the model's own construction)."""
    moved = prediction.adjusted_by_user
    if not moved:
        return ""
    model_points = [calipers.POINT_WORDS[name] for name in calipers.POINT_NAMES if name not in moved]
    rest = (f"The {' and the '.join(model_points)} {'is' if len(model_points) == 1 else 'are'} the model's, "
            "from its outlines." if model_points else "Every point of the construction is yours.")
    return (f"**Measured from the points you placed** ({calipers.moved_text(moved)}; ringed in white on the "
            f"picture). {rest} The HSD starts from the inferior end drawn.")


def aop_markdown(prediction: Prediction) -> str:
    """The AoP, or why there is none, and what it means."""
    aop = prediction.aop
    if aop.measured and not prediction.trusted:
        reasons = "".join(f"\n- {reason[:1].upper()}{reason[1:]}." for reason in prediction.quality.reasons)
        headline = (f"### Angle of progression: withheld \N{WARNING SIGN} check this result\n{reasons}\n\n"
                    f"(Measured on this segmentation: {aop.angle_deg:.1f}\N{DEGREE SIGN}; do not use it unchecked.)")
    elif aop.measured:
        # The caveat is about the model's outlines: it goes once every point is the user's.
        caveat = "" if set(prediction.adjusted_by_user) == set(calipers.POINT_NAMES) else PASSED_CHECK_CAVEAT
        headline = f"### Angle of progression: {aop.angle_deg:.1f}\N{DEGREE SIGN}\n\n{caveat}".rstrip()
    else:
        headline = f"### Angle of progression: not measured\n{aop.reason[:1].upper()}{aop.reason[1:]}."
    return "\n\n".join(part for part in (headline, adjusted_note(prediction), hsd_text(prediction), AOP_EXPLAINED,
                                         DISCLAIMER) if part)


def hsd_text(prediction: Prediction) -> str:
    """The HSD in mm, withheld with the AoP when the check fails, or why there is none ("" when
    the prediction has no HSD)."""
    hsd = prediction.hsd
    if hsd is None:
        return ""
    if not hsd.measured:
        return f"**Head-symphysis distance (HSD):** not measured ({hsd.reason})."
    if hsd.distance_mm is None:
        return ("**Head-symphysis distance (HSD):** drawn on the picture; in mm it needs a pixel spacing, which this "
                "file does not give (a DICOM with Pixel Spacing or Ultrasound Regions gives one).")
    if prediction.hsd_mm is None:
        return (f"**HSD:** withheld with the AoP (measured on this segmentation: {hsd.distance_mm:.1f} mm; "
                "do not use it unchecked).")
    return f"**HSD {prediction.hsd_mm:.1f} mm** (head-symphysis distance)."


def fold_markdown(prediction: Prediction) -> str:
    """Each fold's AoP (and on the frame and its mirror image), their spread and the views' gap:
    how much the ensemble's members agree (psfh.measure.quality flags a large gap)."""
    with_views = any(len(angles) == 2 for angles in prediction.view_aop_deg.values())
    rows = ["| fold | AoP | frame | mirror image |" if with_views else "| fold | AoP |",
            "| --- | --- | --- | --- |" if with_views else "| --- | --- |"]
    for fold, angle in prediction.fold_aop_deg.items():
        value = "not measured" if angle is None else f"{angle:.1f}\N{DEGREE SIGN}"
        views = [("-" if a is None else f"{a:.1f}\N{DEGREE SIGN}") for a in prediction.view_aop_deg.get(fold, [])]
        rows.append(f"| {fold} | {value} | " + " | ".join(views) + " |" if with_views else f"| {fold} | {value} |")
    angles = np.array([angle for angle in prediction.fold_aop_deg.values() if angle is not None])
    if len(angles) >= 2:
        spread = (f"Spread over {len(angles)} folds: {angles.min():.1f}\N{DEGREE SIGN} to "
                  f"{angles.max():.1f}\N{DEGREE SIGN} (range {np.ptp(angles):.1f}\N{DEGREE SIGN}), "
                  f"SD {angles.std(ddof=1):.1f}\N{DEGREE SIGN}.")
    elif len(prediction.folds) == 1:
        spread = ("One member: the per-fold AoP spread and the folds' disagreement map come with the fold "
                  "ensemble (Options: Model).")
    else:
        spread = "A spread needs at least two folds with a measured AoP."
    gap = prediction.quality.measures.get("flip_aop_gap") if prediction.quality else None
    if gap is not None:
        spread += (f" Frame vs mirror image: {gap:.1f}\N{DEGREE SIGN} apart on average (a result is flagged "
                   f"above {quality.MAX_FLIP_AOP_GAP:g}\N{DEGREE SIGN}).")
    return "\n".join(rows) + f"\n\n{spread}"


def timing_markdown(analysis: Analysis) -> str:
    prediction = analysis.prediction
    steps = ", ".join(f"{step.replace('_', ' ')} {seconds:.2f} s"
                      for step, seconds in prediction.timings.items() if step != "total")
    return (f"**Time:** {analysis.wall_s:.2f} s for the request; the model took "
            f"{prediction.timings.get('total', 0.0):.2f} s ({steps}). Made by {members_text(prediction.folds)}, "
            f"flip TTA {'on' if prediction.tta else 'off'}.")


def overlay_picture(analysis: Analysis) -> np.ndarray:
    """The overlay with the correction boxes and a pending first corner drawn."""
    boxes = {STRUCTURE_NAMES[key]: box for key, box in analysis.boxes.items()}
    return render_segmentation(analysis.image, analysis.prediction.label_map, analysis.prediction.aop,
                               boxes=boxes, pending=analysis.pending, hsd=analysis.prediction.hsd,
                               user_points=tuple(analysis.prediction.adjusted_by_user))


def show_correction(analysis: Analysis, status: str):
    """After a click, undo or reset: the overlay, AoP, downloads and report of the shown result."""
    prediction = analysis.prediction
    label_png, label_mha = write_downloads(prediction, analysis.spatial)
    report = prediction.report()
    report_file = label_png.parent / f"{prediction.name or 'image'}_report.json"
    write_text_atomic(report_file, json.dumps(report, indent=2))
    aop = prediction.aop_deg
    return (analysis, overlay_picture(analysis), None if aop is None else round(aop, 1), aop_markdown(prediction),
            str(label_png), str(label_mha), report, str(report_file), status)


def show_result(analysis: Analysis | None):
    """Analysis -> the pictures, texts and report file of the page."""
    if analysis is None:
        raise gr.Error("No result to show; press Run again.", print_exception=False)
    prediction = analysis.prediction
    overlay = overlay_picture(analysis)
    heatmap = render_disagreement(analysis.image, prediction.disagreement)
    report_file = _output_folder() / f"{prediction.name or 'image'}_report.json"
    write_text_atomic(report_file, json.dumps(prediction.report(), indent=2))
    status = f"Done: **{prediction.name or 'image'}**."
    status += "".join(f"\n- {note}" for note in analysis.notes)
    changed = correction_words(prediction)
    correction = f"{changed} (as given)." if changed else ""
    return (overlay, aop_markdown(prediction), heatmap, fold_markdown(prediction), timing_markdown(analysis),
            str(report_file), status, correction)


# ------------------------------------------------------------------------------- the page


def build_demo(model: PSFHModel, concurrency_limit: int = CONCURRENCY,
               clip_concurrency_limit: int = CLIP_CONCURRENCY) -> gr.Blocks:
    """The Gradio app around a loaded model (loaded once; every request shares it, through a
    psfh.serve.FairModelLock that lets single frames go before clips). ``concurrency_limit``
    single-frame requests ("/segment", "/correct", "/adjust") and ``clip_concurrency_limit``
    clips run at once; more wait in their queue, which shows them their place."""
    fair = serve.share_fairly(model)
    n_folds = len(model.folds)
    source = model.source.name if model.source is not None else "in memory"
    default_tta = model.default_tta
    examples = sorted(EXAMPLES.glob("*.mha")) if EXAMPLES.is_dir() else []
    clip_examples = sorted(CLIP_EXAMPLES.glob("*.dcm")) if CLIP_EXAMPLES.is_dir() else []

    def segment(image: str | None, tta: bool, n_folds: float, stability_check: bool = STABILITY_CHECK_DEFAULT,
                mode: str = "default", progress=gr.Progress()):
        """Segment PS and FH in one image and measure the AoP.

        Args:
            image: the ultrasound image (.png .jpg .bmp .tif .mha .nii.gz .nrrd, or a single-frame
                DICOM .dcm, whose pixel spacing gives the HSD in mm).
            tta: horizontal-flip test-time augmentation.
            n_folds: how many of the fold adapters to ensemble (1 to all, the first ones), with
                mode "ensemble".
            stability_check: also segment the frame made brighter, darker and zoomed out with the
                first member, and flag the result when its AoP moves too much (three more passes).
            mode: "soup" (the fold soup: one adapter, two encoder passes with the flip) or
                "ensemble" (n_folds folds: the per-fold spread and the disagreement map come with
                it); left out, the page's choice (the package's default). The page's Model choice
                checks it, so "default" (which run_segment takes) is refused through the API.
        Returns:
            The label map as PNG and as MHA (0 background, 1 PS, 2 FH), the AoP in degrees
            (None when it cannot be measured; the report says why) and the JSON report.
        """
        with served(fair, serve.FRAME, progress) as progress:
            return run_segment(model, image, tta, n_folds, progress, stability_check=bool(stability_check),
                               mode=mode)

    with gr.Blocks(title="psfh: angle of progression", analytics_enabled=False,
                   delete_cache=(OUTPUT_MAX_AGE_S, OUTPUT_MAX_AGE_S)) as demo:
        gr.Markdown(f"# {TITLE}\n{DISCLAIMER}")
        soup_text = " and their soup (the default)" if model.soup and model.default_adapters == [model.soup] else ""
        gr.Markdown(f"Model `{source}`: base `{model.config.base}`, {n_folds} fold adapter(s){soup_text}, "
                    f"device `{model.device}`.")
        if not n_folds:
            gr.Markdown("\N{WARNING SIGN} This model package holds the base model only (no fold adapters): "
                        "it cannot segment yet. Set `PSFH_MODEL` to a trained package.")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Single frame", id="single", elem_id="tab-single"):
                analysis = gr.State(None, time_to_live=OUTPUT_MAX_AGE_S)
                with gr.Row():
                    with gr.Column(scale=2):
                        upload = gr.File(label="Ultrasound image (png, jpg, bmp, tif, mha, nii.gz, nrrd, dcm; "
                                               "up to 50 MB)",
                                         file_types=list(SUPPORTED_EXTENSIONS), type="filepath", elem_id="upload")
                        preview = gr.Image(label="Preview", type="numpy", interactive=False, height=280,
                                           elem_id="preview")
                        if examples:
                            gr.Examples([[str(path)] for path in examples], inputs=[upload],
                                        label="Examples (PSFHS test frames)", examples_per_page=8)
                        with gr.Accordion("Options", open=True):
                            tta = gr.Checkbox(default_tta, label="Flip test-time augmentation (twice the time)",
                                              elem_id="tta")
                            soup_is_default = model.soup and model.default_adapters == [model.soup]
                            default_mode = "soup" if soup_is_default else "ensemble"
                            mode = gr.Radio([("Fold soup: one adapter, the folds' mean (fast)", "soup"),
                                             ("Fold ensemble: every fold (per-fold spread, disagreement map)",
                                              "ensemble")],
                                            value=default_mode, label="Model", visible=model.soup is not None,
                                            elem_id="mode")
                            if n_folds > 1:
                                fold_count = gr.Slider(1, n_folds, value=n_folds, step=1, precision=0,
                                                       label="Folds in the ensemble (fewer is faster)",
                                                       elem_id="folds")
                            else:  # a slider needs two ends: with one fold (or none yet) there is no choice
                                fold_count = gr.Number(1, precision=0, minimum=1, maximum=1, interactive=False,
                                                       label="Folds in the ensemble", elem_id="folds")
                            stability_box = gr.Checkbox(
                                STABILITY_CHECK_DEFAULT, elem_id="stability",
                                label="Stability check: flag an AoP that moves when the frame is made brighter, "
                                      "darker or zoomed out (three more passes of one adapter)")
                        run = gr.Button("Run", variant="primary", elem_id="run")
                        status = gr.Markdown(elem_id="status")
                    with gr.Column(scale=3):
                        overlay = gr.Image(label="Segmentation and AoP construction (click to correct, see below)",
                                           type="numpy", interactive=False, format="png", elem_id="overlay")
                        with gr.Group():
                            gr.Markdown("**Correct the result** on the picture above. A structure: pick it, then "
                                        "click two opposite corners of a box around it; it is re-segmented from the "
                                        "box (SAM's box prompt). Or move the AoP's own points, like an ultrasound "
                                        "machine's calipers: **PS ends**, click the symphysis' two ends; **Skull "
                                        "tangent**, click where the line from its inferior end touches the skull. "
                                        "The AoP, the drawing and the downloads follow.")
                            with gr.Row():
                                structure = gr.Radio(list(CORRECTABLE) + list(CALIPERS),
                                                     value=next(iter(CORRECTABLE)),
                                                     label="What a click corrects", elem_id="correct-structure")
                                undo = gr.Button("Undo", size="sm", elem_id="undo")
                                reset = gr.Button("Reset", size="sm", elem_id="reset")
                            correction_status = gr.Markdown(elem_id="correction-status")
                        aop_value = gr.Number(label="Angle of progression (degrees)", precision=1, interactive=False,
                                              elem_id="aop-value")
                        aop_text = gr.Markdown(elem_id="aop-text")
                        heatmap = gr.Image(label="Fold disagreement: where the ensemble's members disagree",
                                           type="numpy", interactive=False, format="png", elem_id="heatmap")
                        fold_table = gr.Markdown(elem_id="fold-aop")
                        timing = gr.Markdown(elem_id="timing")
                        label_png = gr.File(label="Label map (PNG; 0 background, 1 PS, 2 FH)", interactive=False,
                                            elem_id="label-png")
                        label_mha = gr.File(label="Label map (MHA, with the image's geometry)", interactive=False,
                                            elem_id="label-mha")
                        report_file = gr.File(label="Report (JSON)", interactive=False, elem_id="report-file")
                        with gr.Accordion("Report", open=False):
                            report = gr.JSON(label="Report", elem_id="report")
            with gr.Tab("Cine clip", id="clip", elem_id="tab-clip"):
                clip_state = gr.State(None, time_to_live=OUTPUT_MAX_AGE_S)
                gr.Markdown(
                    "Every frame of a clip is segmented and measured: the AoP over time, its maximum and the frame "
                    "where it occurs. Frames the quality check flags are left out of the curve and marked (grey "
                    "ticks). Then scrub through the frames to see each one's overlay. Each frame costs one encoder "
                    "pass per adapter and flip view: the **fast** mode (one adapter) is the one for long clips. "
                    + clip_limits_text())
                with gr.Row():
                    with gr.Column(scale=2):
                        clip_upload = gr.File(
                            label="Cine clip (multi-frame DICOM .dcm; video .mp4 .avi .mov .mkv; up to 50 MB)",
                            file_types=list(CLIP_EXTENSIONS), type="filepath", elem_id="clip-upload")
                        gr.Markdown("A folder of frames cannot be uploaded: analyse it with "
                                    "`python -m psfh.cine FOLDER --out RESULTS`. One image: the Single frame tab.")
                        if clip_examples:
                            gr.Examples([[str(path)] for path in clip_examples], inputs=[clip_upload],
                                        label="Example (a cine made of PSFHS frames)")
                        fast_text = ("the fold soup with the flip view (two encoder passes a frame)" if model.soup
                                     else "one fold, no flip view (one encoder pass a frame)")
                        clip_fast = gr.Checkbox(True, label=f"Fast: {fast_text}; off: all folds and the package's "
                                                            "flip setting", elem_id="clip-fast")
                        clip_run = gr.Button("Run clip", variant="primary", elem_id="clip-run")
                        clip_status = gr.Markdown(elem_id="clip-status")
                        clip_summary = gr.Markdown(elem_id="clip-summary")
                    with gr.Column(scale=3):
                        clip_curve = gr.HTML(CURVE_PLACEHOLDER, min_height=60, elem_id="clip-curve")
                        clip_frame = gr.Slider(0, 1, value=0, step=1, precision=0, interactive=False,
                                               label="Frame: run a clip, then scrub", elem_id="clip-frame")
                        clip_overlay = gr.Image(label="The frame's segmentation, AoP and HSD construction (click to "
                                                      "adjust, see below)",
                                                type="numpy", interactive=False, format="png", elem_id="clip-overlay")
                        clip_frame_text = gr.Markdown(elem_id="clip-frame-text")
                        with gr.Group():
                            gr.Markdown("**Adjust this frame's AoP** on the picture above, like an ultrasound "
                                        "machine's calipers: **PS ends**, click the symphysis' two ends; **Skull "
                                        "tangent**, click where the line from its inferior end touches the skull. "
                                        "The curve, its maximum and the downloads follow.")
                            with gr.Row():
                                clip_caliper = gr.Radio(list(CALIPERS), value=next(iter(CALIPERS)),
                                                        label="What a click places", elem_id="clip-caliper")
                                clip_undo_button = gr.Button("Undo", size="sm", elem_id="clip-undo")
                                clip_reset_button = gr.Button("Reset", size="sm", elem_id="clip-reset")
                            clip_adjust_status = gr.Markdown(elem_id="clip-adjust-status")
                        clip_csv = gr.File(label="Frames (CSV: time, AoP, check, HSD per frame)", interactive=False,
                                           elem_id="clip-csv")
                        clip_files = gr.File(label="Summary (JSON), AoP curve (SVG), label maps (ZIP)",
                                             file_count="multiple", interactive=False, elem_id="clip-files")
                        with gr.Accordion("Summary (JSON)", open=False):
                            clip_report = gr.JSON(label="Summary", elem_id="clip-report")
        with gr.Accordion("About the angle of progression and the head-symphysis distance", open=False):
            gr.Markdown(AOP_EXPLAINED + "\n\n" + HSD_EXPLAINED + "\n\n" + DISCLAIMER)

        results = [overlay, aop_value, aop_text, heatmap, fold_table, timing, label_png, label_mha,
                   report_file, report, correction_status]
        # A new upload clears the last result, so a picture never sits beside another file's name.
        upload.change(lambda image: (*describe_upload(image), *[None] * len(results)), inputs=upload,
                      outputs=[preview, status, *results], api_visibility="private", concurrency_limit=4)
        shown = [overlay, aop_text, heatmap, fold_table, timing, report_file, status, correction_status]
        run.click(segment, inputs=[upload, tta, fold_count, stability_box, mode],
                  outputs=[label_png, label_mha, aop_value, report, analysis], api_name="segment",
                  concurrency_limit=concurrency_limit, concurrency_id="psfh-model",
                  ).success(show_result, inputs=analysis, outputs=shown, api_visibility="private", concurrency_limit=4)

        # The page's correction: clicks on the overlay, Undo, Reset (kept embeddings, no encoder pass).
        corrected = [analysis, overlay, aop_value, aop_text, label_png, label_mha, report, report_file,
                     correction_status]

        # A box decodes again (no encoder pass): a single frame's turn at the model, before clips.
        def on_click(state: Analysis | None, chosen: str, event: gr.SelectData):
            with fair.frame():
                return show_correction(*correct_click(model, state, chosen, event.index))

        def on_undo(state: Analysis | None, reset: bool = False):
            with fair.frame():
                return show_correction(*undo_correction(model, state, reset=reset))

        overlay.select(on_click, inputs=[analysis, structure], outputs=corrected, api_visibility="private",
                       concurrency_limit=4)
        undo.click(on_undo, inputs=analysis, outputs=corrected, api_visibility="private", concurrency_limit=4)
        reset.click(lambda state: on_undo(state, reset=True), inputs=analysis, outputs=corrected,
                    api_visibility="private", concurrency_limit=4)

        # "/correct" for API callers: the image and a box per structure, in one stateless call.
        ps_box, fh_box = gr.JSON(visible=False), gr.JSON(visible=False)
        correct_button = gr.Button(visible=False)

        def correct(image: str | None, tta: bool, n_folds: float, ps_box: list | None, fh_box: list | None,
                    progress=gr.Progress()):
            """Segment one image with the structures given a box re-segmented from it (SAM's box prompt).

            Args:
                image: the ultrasound image, as for /segment.
                tta, n_folds: as for /segment.
                ps_box, fh_box: [x0, y0, x1, y1] in image pixels around the pubic symphysis / the
                    fetal head, or None to keep the model's own outline.
            Returns:
                As /segment; the report's "corrected_by_user" names the boxed structures.
            """
            boxes = {key: box for key, box in (("ps", ps_box), ("fh", fh_box)) if box is not None}
            if not boxes:
                raise gr.Error("give ps_box and/or fh_box: [x0, y0, x1, y1] in image pixels", print_exception=False)
            with served(fair, serve.FRAME, progress) as progress:
                return run_segment(model, image, tta, n_folds, progress, boxes=boxes)

        correct_button.click(correct, inputs=[upload, tta, fold_count, ps_box, fh_box],
                             outputs=[label_png, label_mha, aop_value, report, analysis], api_name="correct",
                             concurrency_limit=concurrency_limit, concurrency_id="psfh-model",
                             ).success(show_result, inputs=analysis, outputs=shown, api_visibility="private",
                                       concurrency_limit=4)

        # "/adjust" for API callers: the AoP from the user's own points, on the image's segmentation
        # or on an earlier result's label map (then no model runs).
        ps_ends_input, tangent_input = gr.JSON(visible=False), gr.JSON(visible=False)
        label_map_input = gr.File(visible=False, type="filepath")
        adjust_button = gr.Button(visible=False)

        def adjust(image: str | None, tta: bool, n_folds: float, ps_ends: list | None, tangent_point: list | None,
                   label_map: str | None = None, stability_check: bool = STABILITY_CHECK_DEFAULT,
                   mode: str = "default", progress=gr.Progress()):
            """The AoP re-measured from points of its construction that the user places (calipers).

            Args:
                image: the ultrasound image, as for /segment.
                tta, n_folds: as for /segment (not used with label_map).
                ps_ends: [[x, y], [x, y]] in image pixels, the pubic symphysis' two ends (either
                    order: the one nearer the head is the inferior end), or None to keep the model's.
                tangent_point: [x, y] in image pixels, where the line from the inferior end touches
                    the skull (on or outside the head outline's far side), or None to keep the model's.
                label_map: an earlier result's label map file (the PNG or MHA of /segment or
                    /correct): measured on it, no model call; None: the image is segmented first.
                stability_check, mode: as for /segment (not used with label_map).
            Returns:
                As /segment; the report's "adjusted_by_user" gives the points placed, the label map
                files' header "psfh_adjusted_by_user" too.
            """
            with served(fair, serve.FRAME, progress) as progress:
                return run_adjust(model, image, tta, n_folds, ps_ends, tangent_point, label_map, progress,
                                  stability_check=bool(stability_check), mode=mode)

        adjust_button.click(adjust, inputs=[upload, tta, fold_count, ps_ends_input, tangent_input, label_map_input,
                                            stability_box, mode],
                            outputs=[label_png, label_mha, aop_value, report, analysis], api_name="adjust",
                            concurrency_limit=concurrency_limit, concurrency_id="psfh-model",
                            ).success(show_result, inputs=analysis, outputs=shown, api_visibility="private",
                                      concurrency_limit=4)

        # The Cine clip tab: "/clip" runs the whole clip; the slider then only draws kept frames.
        clip_results = [clip_summary, clip_overlay, clip_frame_text, clip_csv, clip_files, clip_report]
        clip_upload.change(lambda clip: (describe_clip(clip), None, CURVE_PLACEHOLDER, *[None] * len(clip_results)),
                           inputs=clip_upload, outputs=[clip_status, clip_state, clip_curve, *clip_results],
                           api_visibility="private", concurrency_limit=4)

        def analyse(clip: str | None, fast: bool, progress=gr.Progress()):
            """Segment every frame of a cine clip and follow the AoP over time.

            Args:
                clip: a multi-frame DICOM (.dcm) or a video (.mp4 .avi .mov .mkv).
                fast: the fold soup x flip (two encoder passes a frame; one fold without the
                    flip view in a package without a soup; for long clips); False: all folds and
                    the package's flip setting.
            Returns:
                frames.csv (one row per frame: time, AoP, whether it is in the curve, the
                quality check, HSD in mm, areas) and the summary: the maximum AoP, its frame
                and time, the frames flagged, seconds per frame, folds and TTA used.
            """
            with served(fair, serve.CLIP, progress) as progress:
                return run_clip(model, clip, fast, progress)

        # Clips queue apart from single frames, and leave the model to them between model calls.
        clip_run.click(analyse, inputs=[clip_upload, clip_fast], outputs=[clip_csv, clip_report, clip_state],
                       api_name="clip", concurrency_limit=clip_concurrency_limit, concurrency_id="psfh-clip",
                       show_progress_on=[clip_curve, clip_csv],
                       ).success(show_clip, inputs=clip_state,
                                 outputs=[clip_curve, clip_summary, clip_frame, clip_overlay, clip_frame_text,
                                          clip_files, clip_status], api_visibility="private", concurrency_limit=4)
        clip_frame.change(frame_view, inputs=[clip_state, clip_frame], outputs=[clip_overlay, clip_frame_text],
                          api_visibility="private", concurrency_limit=4)

        # The scrubbed frame's calipers: clicks on its overlay, Undo, Reset (no model runs).
        clip_changed = [clip_state, clip_curve, clip_summary, clip_overlay, clip_frame_text, clip_csv, clip_files,
                        clip_report, clip_adjust_status]

        def on_clip_click(view: ClipView | None, frame: float, chosen: str, event: gr.SelectData):
            view, status = clip_click(view, frame, chosen, event.index)
            return show_clip_change(view, frame, status)

        def on_clip_undo(view: ClipView | None, frame: float, reset: bool = False):
            view, status = clip_undo(view, reset=reset)
            return show_clip_change(view, frame, status)

        clip_overlay.select(on_clip_click, inputs=[clip_state, clip_frame, clip_caliper], outputs=clip_changed,
                            api_visibility="private", concurrency_limit=4)
        clip_undo_button.click(on_clip_undo, inputs=[clip_state, clip_frame], outputs=clip_changed,
                               api_visibility="private", concurrency_limit=4)
        clip_reset_button.click(lambda view, frame: on_clip_undo(view, frame, reset=True),
                                inputs=[clip_state, clip_frame], outputs=clip_changed, api_visibility="private",
                                concurrency_limit=4)
    demo.queue(max_size=64)
    return demo


def create_app(model_source: str | os.PathLike | None = None, backend: str | None = None) -> gr.Blocks:
    """Load the model once (``model_source``, else $PSFH_MODEL, else the embedded package: a
    folder or a hub repo id, offline from the HF cache when HF_HUB_OFFLINE=1) on ``backend``
    (else $PSFH_BACKEND, else torch; see PSFHModel.from_pretrained) and build the app."""
    source = model_source or os.environ.get("PSFH_MODEL") or None
    backend = backend or os.environ.get("PSFH_BACKEND") or "torch"
    return build_demo(PSFHModel.from_pretrained(source, backend=backend))


# System font stacks: the default theme would fetch web fonts, which an offline machine cannot.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def launch_options() -> dict:
    """What every launch of the app needs (tests pass these too): the upload limit, the theme."""
    return {"max_file_size": MAX_UPLOAD, "theme": THEME}


def launch_locally(demo: gr.Blocks) -> str:
    """Launch ``demo`` without blocking, on a free port of 127.0.0.1 (tests, measurements);
    returns its URL. ``demo.close()`` stops it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options())
    return f"http://127.0.0.1:{port}/"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up checks, one line each
    demo = create_app()
    # Spaces route traffic to 0.0.0.0:7860; both can be overridden the usual Gradio way.
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), **launch_options())


if __name__ == "__main__":
    main()
