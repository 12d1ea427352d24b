"""Evaluate a model package on a labelled data set: per-image metrics and the challenge summary.

    python -m psfh.evaluate --data ../shared/data/psfhs --out runs/eval
    python -m psfh.evaluate --model some/folder --data DIR --out DIR --ids-file held_out.txt --limit 50
    python -m psfh.evaluate --model some/folder --data DIR --out DIR --out-of-fold      # cross-validation
    python -m psfh.evaluate --predictions maps/ --data DIR --out DIR    # score label maps, no model
    python -m psfh.predict DIR/image_mha --out maps/ && python -m psfh.evaluate --predictions maps/ --data DIR --out DIR

The data folder is a labelled data set in either layout of :mod:`psfh.io.dataset`. Every image goes
through the full inference (the fold ensemble, TTA, largest components) exactly as
``python -m psfh.predict`` runs it; the result is scored against its label with
:mod:`psfh.measure.metrics` and the AoP of both maps is measured with :func:`psfh.measure.aop.measure_aop`.

Writes OUT/per_image.csv (id, the nine metrics, aop_pred, aop_true, aop_error, the same three
for the challenge's ellipse definition of the AoP (:mod:`psfh.measure.aop_challenge`), seconds; then
the quality check of :mod:`psfh.measure.quality` — trusted, its reasons and its measures, so that flags
can be calibrated on out-of-fold rows and judged against the AoP error; empty cells where an
angle or a measure is not available) and OUT/summary.json (the means of
:func:`psfh.measure.metrics.summarize`, the score, n, and what was run: model, folds, tta (the
package's setting unless --no-tta), precision, data, date). Both are written to a temporary
file and renamed, so a failed run never leaves half a file. Every pair is read and checked before inference starts, so a bad file stops the
run at once, not after an hour of inference.

--predictions reads the label maps psfh.predict writes (NAME.png, or NAME.mha for SimpleITK and
DICOM inputs; any label-map format of :data:`psfh.io.images.LABEL_EXTENSIONS`), matched to the
samples by id (the file name without its extension); --save-label-maps writes them as psfh.predict
would (OUT/label_maps/NAME.mha keeping an .mha input's geometry, NAME.png otherwise), so the two
commands chain both ways.

Exit status: 0 on success, 2 with an error message for bad input (a folder that is not a
labelled data set, unknown ids, a model without fold adapters, unreadable files).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from psfh.core.errors import PSFHInputError
from psfh.core.files import write_csv_atomic, write_text_atomic
from psfh.core.options import check_precision
from psfh.io.dataset import Sample, validate_samples
from psfh.batch.predict import output_path
from psfh.io.images import LABEL_EXTENSIONS, as_uint8, image_extension, image_name, load_image, load_label_map, save_label_map
from psfh.measure import quality
from psfh.measure.metrics import SCORE_COLUMNS, score_label_map, summarize
from psfh.model.package import read_fold_assignment

ROWS_NAME = "per_image.csv"
SUMMARY_NAME = "summary.json"
QUALITY_COLUMNS = ("trusted", "quality_reasons", *quality.MEASURES)
ROW_COLUMNS = (*SCORE_COLUMNS, *QUALITY_COLUMNS)


def evaluate(model, samples: Sequence[Sample], folds: Sequence[str] | None = None, tta: bool | None = None,
             precision: str = "fp32", progress: bool = True, out_of_fold: bool = False,
             label_map_dir: Path | None = None) -> tuple[list[dict], dict]:
    """Predict every sample with `model`, score it, and summarise.

    Args:
        model: a PSFHModel (anything with ``.folds``, ``.members`` and ``.predict``; ``.source`` is recorded).
        samples: labelled pairs, e.g. from :func:`psfh.io.dataset.find_samples`.
        folds: the adapters to use (default: the package's, ``model.members``); tta, precision: as in ``model.predict``
            (tta None: the package's setting, ``model.default_tta``).
        progress: show tqdm bars (checking, then evaluating) on stderr.
        out_of_fold: predict each sample with the one fold adapter that did not train on it
            (the package's folds.json), the cross-validation estimate; ``folds`` must be None.
        label_map_dir: also write each predicted label map there, named and typed as psfh.predict
            names them (:func:`psfh.batch.predict.output_path`: NAME.mha for .mha / DICOM inputs, with
            their geometry; NAME.png otherwise).
    Returns:
        (rows, summary): one dict per sample keyed by ROW_COLUMNS (None where an AoP could not
        be measured), and :func:`psfh.measure.metrics.summarize` of the rows plus model, folds, tta,
        precision and date.
    Raises:
        PSFHInputError: no samples, a bad pair (listed all together, before any inference),
        a model without the folds asked for.
    """
    if not samples:
        raise PSFHInputError("no samples to evaluate")
    check_precision(precision)
    tta = model.default_tta if tta is None else bool(tta)
    if out_of_fold:
        if folds:
            raise PSFHInputError("out-of-fold evaluation picks each image's fold itself: give no folds")
        fold_of = held_out_fold(model, [sample.id for sample in samples])
    else:
        folds = model.members(folds)
    validate_samples(list(samples), progress=progress)
    if label_map_dir is not None:
        Path(label_map_dir).mkdir(parents=True, exist_ok=True)
    rows = [_evaluate_sample(model, sample, [fold_of[sample.id]] if out_of_fold else folds, tta, precision,
                             label_map_dir)
            for sample in tqdm(samples, desc="evaluating", unit="image", disable=not progress)]
    if out_of_fold:
        folds = sorted(set(fold_of.values()))
    summary = {
        **summarize(rows),
        "model": None if getattr(model, "source", None) is None else str(model.source),
        "folds": folds,
        "tta": tta,
        "out_of_fold": out_of_fold,
        "precision": precision,
        "backend": getattr(model, "backend", "torch"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return rows, summary


def held_out_fold(model, ids: Sequence[str]) -> dict[str, str]:
    """{id: the fold adapter that did not see it in training}, from the package's folds.json."""
    source = getattr(model, "source", None)
    if source is None:
        raise PSFHInputError("out-of-fold evaluation needs the package's folds.json (written by train.py)")
    fold_of = read_fold_assignment(Path(source))
    missing = [i for i in ids if i not in fold_of]
    if missing:
        raise PSFHInputError(f"{len(missing)} id(s) were in no fold's validation set, e.g. {missing[:5]}: "
                             "out-of-fold evaluation only covers the package's training images")
    unknown = sorted({fold_of[i] for i in ids} - set(model.folds))
    if unknown:
        raise PSFHInputError(f"folds.json names folds the package lacks: {unknown}")
    return {i: fold_of[i] for i in ids}


def _evaluate_sample(model, sample: Sample, folds: list[str], tta: bool, precision: str,
                     label_map_dir: Path | None = None) -> dict:
    start = time.perf_counter()
    prediction = model.predict(sample.image_path, folds=folds, tta=tta, precision=precision)
    seconds = time.perf_counter() - start  # inference only: the scoring below is not the model's cost
    if label_map_dir is not None:  # as psfh.predict writes it: name, format and an .mha input's geometry
        save_label_map(prediction.label_map, output_path(sample.image_path, Path(label_map_dir)),
                       spatial=load_image(sample.image_path).spatial)
    return {**score_label_map(sample.id, prediction.label_map, load_label_map(sample.label_path), seconds),
            **quality_cells(prediction.quality)}


def quality_cells(checked: quality.QualityCheck | None) -> dict:
    """The QUALITY_COLUMNS of one row (empty when no check ran)."""
    if checked is None:
        return dict.fromkeys(QUALITY_COLUMNS)
    return {"trusted": checked.trusted, "quality_reasons": "; ".join(checked.reasons),
            **{key: checked.measures.get(key) for key in quality.MEASURES}}


def find_label_maps(folder: Path, ids: Sequence[str]) -> dict[str, Path]:
    """{id: its label map in ``folder``} for every id: the file named ``<id>`` with any label-map
    extension (psfh.predict's NAME.png or NAME.mha, or another format). Raises PSFHInputError when
    the folder is missing, when an id has no label map (the first few are named), or when it has
    two (e.g. NAME.png and NAME.mha: which one to score is not clear)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PSFHInputError(f"{folder}: not a folder of label maps")
    wanted, found = set(ids), {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or image_extension(path) not in LABEL_EXTENSIONS:
            continue
        sample_id = image_name(path)
        if sample_id not in wanted:
            continue
        if sample_id in found:
            raise PSFHInputError(f"{folder}: two label maps for '{sample_id}': {found[sample_id].name} and "
                                 f"{path.name}; keep one")
        found[sample_id] = path
    missing = [i for i in ids if i not in found]
    if missing:
        raise PSFHInputError(f"{folder}: no label map for {len(missing)} sample(s), e.g. "
                             f"{', '.join(missing[:5])} (looked for <id> with {', '.join(LABEL_EXTENSIONS)})")
    return found


def score_predictions(samples: Sequence[Sample], predictions: Path, progress: bool = True) -> tuple[list[dict], dict]:
    """Score label maps written earlier (``predictions/<id>.<ext>``, e.g. by ``psfh.predict``,
    ``--save-label-maps`` or another method; :func:`find_label_maps`) against the samples' labels,
    with no model: -> (rows, summary)."""
    if not samples:
        raise PSFHInputError("no samples to evaluate")
    label_maps = find_label_maps(Path(predictions), [s.id for s in samples])
    rows = []
    for sample in tqdm(samples, desc="scoring", unit="image", disable=not progress):
        predicted = load_label_map(label_maps[sample.id])
        target = load_label_map(sample.label_path)
        if predicted.shape != target.shape:
            raise PSFHInputError(f"{label_maps[sample.id]}: {predicted.shape} label map for a "
                                 f"{target.shape} label")
        image = as_uint8(load_image(sample.image_path))
        # No model here: the image and anatomy checks only (no views or folds to compare).
        rows.append({**score_label_map(sample.id, predicted, target), **quality_cells(quality.check(image, predicted))})
    summary = {**summarize(rows), "predictions": str(predictions),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return rows, summary


# --- writing ---------------------------------------------------------------------------------


def write_rows(rows: list[dict], path: Path) -> Path:
    """OUT/per_image.csv: one row per image, ROW_COLUMNS (written atomically)."""
    return write_csv_atomic(path, ROW_COLUMNS, rows)


def write_summary(summary: dict, path: Path) -> Path:
    """OUT/summary.json (written atomically)."""
    return write_text_atomic(path, json.dumps(summary, indent=2) + "\n")
