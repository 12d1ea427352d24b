"""Batch inference: segment PS and FH in many images, write label maps and an AoP table.

    python -m psfh.predict scans/ extra.png --out results/
    python -m psfh.predict scan.mha --model owner/psfh-model --out results/ --folds fold_0 fold_1 --no-tta

Inputs are files or folders; a folder contributes every supported image directly inside it
(non-recursive, sorted by name); its other files are listed as skipped, hidden files ignored.
For each input NAME.EXT the label map goes to OUT/NAME.mha when the input was read by SimpleITK
(.mha .mhd .nii .nii.gz .nrrd: the label map keeps the input's spacing, origin and direction) or
is a DICOM (.dcm .dicom: the .mha keeps its pixel spacing, nothing else of the file), and to
OUT/NAME.png otherwise. The HSD is given in mm when the input's spacing is known (a DICOM's, a
SimpleITK file's unless it is the placeholder 1 x 1) or given with --spacing-mm. A cine clip (a
multi-frame DICOM, a video) is refused with a pointer to ``python -m psfh.cine``, which
segments every frame and draws the AoP curve. OUT/aop.csv gets one row per input (see CSV_COLUMNS), written and
flushed as each image finishes, so an interrupted run keeps the rows of what it wrote; when the
run ends the table is rewritten in the inputs' order. ``--resume`` keeps the rows of an earlier
run into the same --out whose label map is there and which had no error, and predicts the rest
(it does not check that the model or options were the same). ``--manifest LIST.csv`` adds the
files a CSV lists (see :func:`read_manifest`). ``--engine ray`` runs the same per-image function
on a pool of Ray workers, on this machine or a cluster (:mod:`psfh.batch.ray_engine`).

Inputs are never overwritten. An item is refused, with an error in its row, when its output
would be one of the inputs (e.g. --out is the input folder and the input is NAME.png), or when
an earlier input in the run already claimed the same output: inputs are taken in order (files in
the order given, folders sorted), so of a.jpg and a.png in one folder, a.jpg writes a.png and
a.png is refused. Output names are compared case-insensitively, since A.png and a.png are one
file on macOS and Windows.

Exit status: 0 when every input gave a label map; 1 when some failed (each failure is named on
stderr and in the error column); 2 when nothing could start (bad model, arguments or --out).
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from psfh.core.errors import PSFHInputError
from psfh.core.files import earlier_claimants, format_cell, write_csv_atomic
from psfh.core.options import check_precision
from psfh.io.images import (
    DICOM_EXTENSIONS,
    SITK_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    image_extension,
    image_name,
    load_image,
    save_label_map,
)
from psfh.io.sequence import is_sequence
from psfh.measure.hsd import check_spacing

CSV_NAME = "aop.csv"
CSV_COLUMNS = ("name", "input", "label_map", "aop_deg", "aop_reason", "check", "aop_deg_measured", "hsd_mm",
               "hsd_px", "pixel_spacing_mm", "ps_area_px", "fh_area_px",
               "mean_disagreement", "fold_aop_min", "fold_aop_max", "flip_aop_gap", "stability_gap", "seconds",
               "error")
MAX_LISTED_SKIPPED = 10  # skipped files named per folder; the rest are counted
MANIFEST_COLUMNS = ("path", "input")  # the column a manifest lists its files in ("input": an earlier aop.csv)


@dataclass(frozen=True)
class Item:
    """One input file and where its label map goes; `refused` says why it must not be written."""

    path: Path
    output: Path
    refused: str | None = None


# --- planning ----------------------------------------------------------------------------------


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """(files to predict, unsupported files skipped in folders).

    A folder gives its supported images (sorted, non-recursive); a path given as a file is kept
    whatever it is, so that a missing or unsupported file becomes an error row naming it rather
    than vanishing. A file reached twice (given twice, or given and inside a given folder) is
    predicted once.
    """
    files, skipped, seen = [], [], set()
    for given in inputs:
        path = Path(given)
        found = _folder_images(path, skipped) if path.is_dir() else [path]
        for file in found:
            key = _identity(file)
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files, skipped


def _folder_images(folder: Path, skipped: list[Path]) -> list[Path]:
    images = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue  # hidden files (.DS_Store, our own temporaries) and subfolders are not inputs
        (images if image_extension(path) in SUPPORTED_EXTENSIONS else skipped).append(path)
    return images


def _identity(path: Path) -> tuple:
    """What makes two paths one file: the inode when it exists (hard links, symlinks), else the path."""
    try:
        status = path.stat()
        return ("inode", status.st_dev, status.st_ino)
    except OSError:
        return ("path", str(path.resolve()))


def read_manifest(manifest: str | os.PathLike) -> list[Path]:
    """The files a manifest lists: a CSV with a ``path`` (or ``input``) column, or one path a line.

    Relative paths are taken from the manifest's own folder, so a manifest travels with its
    archive. Empty cells are skipped. A listed file that is missing or unsupported is kept: it
    becomes an error row naming it, as when given on the command line.

    Raises:
        PSFHInputError (naming the manifest): missing or unreadable, not text, no paths, or rows
        of several cells without a ``path`` / ``input`` header.
    """
    manifest = Path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PSFHInputError(f"{manifest}: cannot read the manifest ({error})") from error
    header = [cell.strip().casefold() for cell in rows[0]] if rows else []
    column = next((header.index(name) for name in MANIFEST_COLUMNS if name in header), None)
    if column is not None:
        cells = [row[column].strip() if column < len(row) else "" for row in rows[1:]]
    else:
        wide = next((number for number, row in enumerate(rows, 1) if len(row) > 1), None)
        if wide is not None:
            raise PSFHInputError(f"{manifest}: line {wide} has {len(rows[wide - 1])} cells; a manifest is one "
                                 "path a line, or a CSV whose header names a 'path' (or 'input') column")
        cells = [row[0].strip() for row in rows]
    paths = [manifest.parent / cell for cell in cells if cell]
    if not paths:
        raise PSFHInputError(f"{manifest}: the manifest lists no files")
    return paths


def output_path(path: Path, out_dir: Path) -> Path:
    """OUT/NAME.mha for SimpleITK and DICOM inputs (geometry kept), OUT/NAME.png for the others."""
    suffix = ".mha" if image_extension(path) in (*SITK_EXTENSIONS, *DICOM_EXTENSIONS) else ".png"
    return out_dir / f"{image_name(path)}{suffix}"


def plan_outputs(files: Sequence[Path], out_dir: Path) -> list[Item]:
    """One Item per file, refusing outputs that are inputs or that an earlier file claimed."""
    inputs = {_identity(path): path for path in files}
    outputs = [output_path(path, out_dir) for path in files]
    clashes = [inputs.get(_identity(output)) for output in outputs]
    earlier = earlier_claimants(files, [o if clash is None else None for o, clash in zip(outputs, clashes)])
    items = []
    for path, output, clash, claimant in zip(files, outputs, clashes, earlier):
        refused = None
        if clash is not None:
            target = "the input itself" if clash == path else f"the input {clash}"
            refused = f"its label map {output} would overwrite {target}; choose another --out folder"
        elif claimant is not None:
            refused = (f"its label map {output} is already the output of {claimant} "
                       "(same name); rename one of them or predict them into different --out folders")
        items.append(Item(path, output, refused))
    return items


def _check_csv_target(out_dir: Path, files: Sequence[Path]) -> Path:
    csv_path = out_dir / CSV_NAME
    if _identity(csv_path) in {_identity(path) for path in files}:
        raise PSFHInputError(f"{csv_path} is one of the inputs; choose another --out folder")
    if csv_path.is_dir():
        raise PSFHInputError(f"{csv_path} is a folder; choose another --out folder")
    return csv_path


@dataclass
class Plan:
    """What a run will do: one Item per input (in order), the table's path, and the rows an
    earlier run finished (``kept``, by item index; only with resume)."""

    items: list[Item]
    csv_path: Path
    kept: dict[int, dict] = field(default_factory=dict)

    @property
    def todo(self) -> list[tuple[int, Item]]:
        """(index, item) of the items still to predict."""
        return [(index, item) for index, item in enumerate(self.items) if index not in self.kept]


def plan_run(inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, resume: bool = False) -> Plan:
    """Collect the inputs, check and create ``out_dir``, plan the outputs, and (resume) find the
    rows an earlier run into ``out_dir`` finished. Shared by every engine.

    Raises:
        PSFHInputError: no inputs, an unusable out_dir, an earlier table that is not psfh's.
    """
    files, skipped = collect_inputs(inputs)
    _note_skipped(skipped)
    if not files:
        raise PSFHInputError("no input images (supported: " + " ".join(SUPPORTED_EXTENSIONS) + ")")
    out_dir = Path(out_dir)
    csv_path = _check_csv_target(out_dir, files)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PSFHInputError(f"{out_dir}: cannot create the output folder ({error})") from error
    items = plan_outputs(files, out_dir)
    kept = finished_rows(csv_path, items) if resume else {}
    if kept:
        print(f"resuming: {len(kept)} of {len(items)} images were done by an earlier run into {out_dir}",
              file=sys.stderr)
    return Plan(items, csv_path, kept)


def finished_rows(csv_path: Path, items: Sequence[Item]) -> dict[int, dict]:
    """The rows of an earlier ``aop.csv`` that need no new prediction, by item index: same input,
    same label map (which is on disk), no error. Cells are the table's text (None when empty)."""
    if not csv_path.is_file():
        return {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"input", "label_map", "error"} - set(reader.fieldnames or ())
            if missing:
                raise PSFHInputError(f"{csv_path}: not a psfh-predict table (no {', '.join(sorted(missing))} "
                                     "column); move it away or run without --resume")
            done = {(row["input"], row["label_map"]): row for row in reader if not row["error"] and row["label_map"]}
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PSFHInputError(f"{csv_path}: cannot read the earlier table ({error})") from error
    kept = {}
    for index, item in enumerate(items):
        row = done.get((str(item.path), str(item.output)))
        if row is not None and item.refused is None and item.output.is_file():
            kept[index] = {key: row.get(key) or None for key in CSV_COLUMNS}
    return kept


class ResultTable:
    """OUT/aop.csv while a run goes on, in any engine.

    It starts with the rows kept from an earlier run; each new row is appended and flushed as it
    arrives (so an interrupted run keeps what it wrote, and --resume finds it), in whatever order
    the items finish; :meth:`finish` rewrites the table atomically in the inputs' order.
    """

    def __init__(self, plan: Plan):
        self.path = plan.csv_path
        self.rows: dict[int, dict] = dict(plan.kept)
        write_csv_atomic(self.path, CSV_COLUMNS, [self.rows[index] for index in sorted(self.rows)])
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=CSV_COLUMNS)

    def add(self, index: int, row: dict) -> None:
        self.rows[index] = row
        self._writer.writerow({key: format_cell(row.get(key)) for key in CSV_COLUMNS})
        self._file.flush()

    def finish(self) -> list[dict]:
        """Close the table, rewrite it in the inputs' order, and return its rows in that order."""
        self._file.close()
        ordered = [self.rows[index] for index in sorted(self.rows)]
        write_csv_atomic(self.path, CSV_COLUMNS, ordered)
        return ordered

    def __enter__(self) -> ResultTable:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()  # after finish() this does nothing; after an error the appended rows stay


# --- running -----------------------------------------------------------------------------------


def predict_paths(model, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                  folds: Sequence[str] | None = None, tta: bool | None = None,
                  precision: str = "fp32", progress: bool = True,
                  spacing_mm: tuple[float, float] | None = None, stability_check: bool = False,
                  resume: bool = False) -> list[dict]:
    """Predict every input (files or folders), write the label maps and OUT/aop.csv.

    Args:
        model: a PSFHModel (anything with ``.folds`` and ``.predict``), loaded once by the caller.
        inputs: image files and/or folders of images.
        out_dir: the output folder (created if needed).
        folds, tta, precision: passed to ``model.predict`` (default: all folds, the package's TTA).
        progress: show a tqdm bar on stderr.
        spacing_mm: (row, col) mm per pixel for every input (default: each file's own, if any).
        stability_check: also run :mod:`psfh.measure.stability`'s check on each image (three more passes
            of one fold each).
        resume: keep the rows of an earlier run into ``out_dir`` that are done (see :func:`finished_rows`).
    Returns:
        One dict per input, in the inputs' order, keyed by CSV_COLUMNS (None for empty cells; a
        row kept by ``resume`` holds the table's text); ``error`` is None for the inputs that gave a
        label map. Per-input problems go in the rows (and on stderr); they never stop the batch.
    Raises:
        PSFHInputError: no inputs, a model without the folds asked for, an unusable out_dir.
    """
    check_precision(precision)
    check_spacing(spacing_mm)  # a bad --spacing-mm stops the run, not every row
    folds = model.members(folds)
    plan = plan_run(inputs, out_dir, resume)
    with ResultTable(plan) as table:
        for index, item in tqdm(plan.todo, desc="predicting", unit="image", disable=not progress):
            row = predict_item(model, item, folds, tta, precision, spacing_mm, stability_check)
            report_error(item, row)
            table.add(index, row)
        return table.finish()


def report_error(item: Item, row: dict) -> None:
    """An input's failure on stderr, named (the row's error column has it too)."""
    if row["error"]:
        tqdm.write(f"error: {item.path}: {row['error']}", file=sys.stderr)


def _note_skipped(skipped: list[Path]) -> None:
    if not skipped:
        return
    shown = ", ".join(str(path) for path in skipped[:MAX_LISTED_SKIPPED])
    more = f", ... ({len(skipped)} in all)" if len(skipped) > MAX_LISTED_SKIPPED else ""
    print(f"skipped {len(skipped)} unsupported file(s): {shown}{more}", file=sys.stderr)


def predict_item(model, item: Item, folds: list[str] | None, tta: bool | None, precision: str,
                 spacing_mm: tuple[float, float] | None = None, stability_check: bool = False) -> dict:
    """Predict and write one input; every failure becomes the row's error, never an exception.

    The one per-image step of every engine (a Ray worker calls it too). A refused item fails
    without touching ``model``."""
    start = time.perf_counter()
    row = dict.fromkeys(CSV_COLUMNS)
    row.update(name=image_name(item.path), input=str(item.path))
    try:
        if item.refused:
            raise PSFHInputError(item.refused)
        if is_sequence(item.path, folders=False):
            raise PSFHInputError(f"a cine clip: run python -m psfh.cine {item.path} --out DIR for one row per "
                                 "frame and the AoP curve")
        row.update(_write_prediction(model, item, folds, tta, precision, spacing_mm, stability_check))
    except PSFHInputError as error:
        row["error"] = _without_path(str(error), item.path)
    except Exception as error:  # noqa: BLE001 - one odd file must not end a batch of thousands
        row["error"] = f"{type(error).__name__}: {error}"
    row["seconds"] = time.perf_counter() - start
    return row


def failed_row(item: Item, reason: str) -> dict:
    """The row of an input that got no result (an engine's worker died with it, ...), with why."""
    row = dict.fromkeys(CSV_COLUMNS)
    row.update(name=image_name(item.path), input=str(item.path), error=reason)
    return row


def _write_prediction(model, item: Item, folds: list[str], tta: bool | None, precision: str,
                      spacing_mm: tuple[float, float] | None = None, stability_check: bool = False) -> dict:
    # Read the file here, once, for its geometry; predict takes what was read.
    loaded = load_image(item.path)
    prediction = model.predict(loaded, folds=folds, tta=tta, precision=precision, spacing_mm=spacing_mm,
                               stability_check=stability_check)
    save_label_map(prediction.label_map, item.output, spatial=loaded.spatial, overwrite=True)
    return {"label_map": str(item.output), **prediction.table_cells()}


def _without_path(message: str, path: Path) -> str:
    """The error without a leading "PATH: ", since the row (and stderr line) already names it."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


# --- command line ------------------------------------------------------------------------------
