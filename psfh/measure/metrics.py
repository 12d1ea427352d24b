"""Per-image segmentation metrics, the AoP error and the PS-FH-AOP 2023 challenge score.

Label maps are H x W integer arrays with the values of :mod:`psfh.core.labels`.
Each image is scored on three structures: PS, FH and "all" (PS and FH merged into one
foreground), with MONAI's Dice, Hausdorff distance (100th percentile, the challenge's) and
average symmetric surface distance. Distances are in pixels.

Edge cases (MONAI returns nan or inf for them; we replace those so that means stay finite):

* a structure absent from both maps: Dice 1.0, HD 0.0, ASD 0.0 (nothing to find, nothing missed);
* a structure absent from one map only: Dice 0.0, HD and ASD = the image diagonal
  ``hypot(H, W)``, a finite worst case no real distance in the image can exceed.
"""

from __future__ import annotations

import math
import statistics
import warnings

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

from psfh.core.errors import PSFHInputError
from psfh.core.labels import FH, PS, SHORT_NAMES, STRUCTURE_VALUES, check_label_map
from psfh.measure.aop import measure_aop
from psfh.measure.aop_error_sources import ERROR_SOURCE_COLUMNS, error_sources
from psfh.measure.aop_challenge import challenge_aop

# What is scored, in the channel order of :func:`structure_one_hot`: each structure, by its short
# name in lower case ("ps", "fh"), and the two together ("all").
SCORED_REGIONS = (*(SHORT_NAMES[value].lower() for value in STRUCTURE_VALUES), "all")
METRIC_KEYS = tuple(f"{metric}_{region}" for metric in ("dice", "hd", "asd") for region in SCORED_REGIONS)
# One scored image (score_label_map), the columns of psfh.batch.evaluate's per_image.csv.
SCORE_COLUMNS = ("id", *METRIC_KEYS, "aop_pred", "aop_true", "aop_error", *ERROR_SOURCE_COLUMNS,
                 "aop_challenge_pred", "aop_challenge_true", "aop_challenge_error", "seconds")
# An AoP off by more than this many degrees is a bad one (the share of them is summarized).
BAD_AOP_ERROR_DEG = 15.0


def structure_one_hot(label_map: np.ndarray) -> torch.Tensor:
    """Turn an H x W label map into MONAI's layout: a 1 x 3 x H x W float one-hot tensor.

    Channels are PS, FH and all (PS or FH). There is no background channel: the challenge does
    not score background, so every MONAI call uses ``include_background=True`` on these three.
    The channels are not mutually exclusive ("all" overlaps the others), which MONAI's
    per-channel metrics do not require.
    """
    masks = [label_map == PS, label_map == FH, (label_map == PS) | (label_map == FH)]
    return torch.from_numpy(np.stack(masks)[None].astype(np.float32))


def segmentation_metrics(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Score one predicted H x W label map against its H x W ground truth.

    Returns a dict with the keys of :data:`METRIC_KEYS` (``dice_ps``, ``dice_fh``, ``dice_all``,
    ``hd_ps``, ... ``asd_all``) as Python floats; HD and ASD in pixels. See the module docstring
    for structures absent from one or both maps. Raises :class:`PSFHInputError` when the shapes
    differ, a map is not 2-D, or it holds a label other than 0, 1, 2.
    """
    prediction = np.asarray(prediction)
    target = np.asarray(target)
    if prediction.shape != target.shape:
        raise PSFHInputError(
            f"prediction and target shapes differ: prediction {prediction.shape}, target {target.shape}"
        )
    prediction = check_label_map(prediction, "prediction")
    target = check_label_map(target, "target")

    y_pred, y = structure_one_hot(prediction), structure_one_hot(target)
    in_pred = y_pred.flatten(2).any(-1)[0].tolist()
    in_target = y.flatten(2).any(-1)[0].tolist()
    in_both = [p and t for p, t in zip(in_pred, in_target)]

    # Only structures present in both maps go to MONAI, so it never warns about (or returns
    # nan/inf for) an empty mask; the edge cases are filled in below.
    measured = iter(())
    if any(in_both):
        channels = torch.tensor(in_both)
        p, t = y_pred[:, channels], y[:, channels]
        with warnings.catch_warnings():
            # MONAI 1.6 passes a deprecated argument to its own get_mask_edges on every call.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            dice = compute_dice(p, t, include_background=True)[0]
            hd = compute_hausdorff_distance(p, t, include_background=True)[0]
            asd = compute_average_surface_distance(p, t, include_background=True, symmetric=True)[0]
        measured = zip(dice.tolist(), hd.tolist(), asd.tolist())  # one (dice, hd, asd) per in_both channel

    diagonal = math.hypot(*prediction.shape)
    metrics = {}
    for structure, pred_has, target_has, both in zip(SCORED_REGIONS, in_pred, in_target, in_both):
        if both:
            values = next(measured)
        elif not pred_has and not target_has:
            values = (1.0, 0.0, 0.0)
        else:
            values = (0.0, diagonal, diagonal)
        for name, value in zip(("dice", "hd", "asd"), values):
            metrics[f"{name}_{structure}"] = float(value)
    return metrics


def aop_error(predicted_deg: float | None, target_deg: float | None) -> float | None:
    """Absolute AoP error in degrees; None when either angle could not be measured."""
    if predicted_deg is None or target_deg is None:
        return None
    return float(abs(predicted_deg - target_deg))


def score_label_map(sample_id: str, predicted, target, seconds: float | None = None) -> dict:
    """One row of SCORE_COLUMNS for a predicted H x W label map and its target: the segmentation
    metrics, both AoP definitions (psfh.measure.aop's clinical one, psfh.measure.aop_challenge's ellipse one)
    with their errors, where the clinical AoP's error comes from (:mod:`psfh.measure.aop_error_sources`:
    the PS axis error, the apex distance, the AoP with the expert's PS or head); ``seconds`` is the
    prediction's time, when known."""
    aop_pred, aop_true = measure_aop(predicted).angle_deg, measure_aop(target).angle_deg
    challenge_pred, challenge_true = challenge_aop(predicted), challenge_aop(target)
    return {
        "id": sample_id,
        **segmentation_metrics(predicted, target),
        "aop_pred": aop_pred,
        "aop_true": aop_true,
        "aop_error": aop_error(aop_pred, aop_true),
        **error_sources(predicted, target),
        "aop_challenge_pred": challenge_pred,
        "aop_challenge_true": challenge_true,
        "aop_challenge_error": aop_error(challenge_pred, challenge_true),
        "seconds": seconds,
    }


def challenge_score(
    dice_ps: float,
    dice_fh: float,
    dice_all: float,
    hd_ps: float,
    hd_fh: float,
    hd_all: float,
    asd_ps: float,
    asd_fh: float,
    asd_all: float,
    aop_error: float,
) -> float:
    """The PS-FH-AOP 2023 challenge score (FACTS.md); 1.0 for a perfect result.

    Score = 0.25 * mean(Dice PS, FH, all)
          + 0.25 * (0.5 * mean(1 - HD / 100) + 0.5 * mean(1 - ASD / 100))
          + 0.5 * (1 - AoP error / 180),
    with HD and ASD in pixels and the AoP error in degrees. It is not clipped: distances over
    100 pixels make their terms negative, as in the formula.
    """
    dice_term = (dice_ps + dice_fh + dice_all) / 3
    hd_term = sum(1 - d / 100 for d in (hd_ps, hd_fh, hd_all)) / 3
    asd_term = sum(1 - d / 100 for d in (asd_ps, asd_fh, asd_all)) / 3
    return float(0.25 * dice_term + 0.25 * (0.5 * hd_term + 0.5 * asd_term) + 0.5 * (1 - aop_error / 180))


def summarize(rows: list[dict]) -> dict:
    """Summarize per-image rows into one JSON-able dict of plain Python numbers.

    Each row holds the :data:`METRIC_KEYS` (as from :func:`segmentation_metrics`) and
    ``aop_error`` (float, or None where an angle could not be measured). Returns:

    * each metric key -> its mean over all rows;
    * ``aop_error_mean``, ``aop_error_median`` over rows with an AoP error (None if none);
    * ``aop_measured``: how many rows have one; ``aop_error_over_15``: the share of those off by more
      than :data:`BAD_AOP_ERROR_DEG`; ``n``: how many rows;
    * with rows that hold the :data:`ERROR_SOURCE_COLUMNS`: each one's ``_mean``, ``_median`` and
      ``_p90`` (90th percentile) over the rows that measure it (None if none);
    * with rows that hold ``aop_challenge_error`` (the challenge's ellipse definition,
      :mod:`psfh.measure.aop_challenge`): ``aop_challenge_error_mean``, ``_median``, ``aop_challenge_measured``;
    * ``score``: :func:`challenge_score` of the means (None when no AoP was measured, since the
      score's largest term would be undefined).
    """
    if not rows:
        raise PSFHInputError("summarize needs at least one per-image row, got none")
    missing = [key for key in (*METRIC_KEYS, "aop_error") if any(key not in row for row in rows)]
    if missing:
        raise PSFHInputError(f"summarize: rows lack keys {missing}")

    summary: dict = {key: float(np.mean([row[key] for row in rows])) for key in METRIC_KEYS}
    errors = [float(row["aop_error"]) for row in rows if row["aop_error"] is not None]
    summary["aop_error_mean"] = float(np.mean(errors)) if errors else None
    summary["aop_error_median"] = float(statistics.median(errors)) if errors else None
    summary["aop_measured"] = len(errors)
    summary["aop_error_over_15"] = float(np.mean(np.array(errors) > BAD_AOP_ERROR_DEG)) if errors else None
    for key in ERROR_SOURCE_COLUMNS:
        if any(key in row for row in rows):
            values = [float(row[key]) for row in rows if row.get(key) is not None]
            summary[f"{key}_mean"] = float(np.mean(values)) if values else None
            summary[f"{key}_median"] = float(statistics.median(values)) if values else None
            summary[f"{key}_p90"] = float(np.percentile(values, 90)) if values else None
    challenge = [float(row["aop_challenge_error"]) for row in rows if row.get("aop_challenge_error") is not None]
    if any("aop_challenge_error" in row for row in rows):
        summary["aop_challenge_error_mean"] = float(np.mean(challenge)) if challenge else None
        summary["aop_challenge_error_median"] = float(statistics.median(challenge)) if challenge else None
        summary["aop_challenge_measured"] = len(challenge)
    summary["n"] = len(rows)
    summary["score"] = (
        challenge_score(**{key: summary[key] for key in METRIC_KEYS}, aop_error=summary["aop_error_mean"])
        if errors
        else None
    )
    return summary
