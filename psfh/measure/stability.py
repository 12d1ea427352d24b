"""Does the AoP survive small changes of the frame? The model's stability, as a quality measure (issue 12).

The flip TTA shows where the model disagrees with its own mirror image; many wrong AoPs pass that
test (model card, "Trust"). A second look: the frame as another gain setting or a wider field of
view would show it: brighter (gamma 0.6), darker (gamma 1.6; the black background stays black in
both) and zoomed out (10 % black margin on every side, so the anatomy is smaller on the model's
input). One fold segments each of the three (no flip), and the measure is the mean over them of
|AoP(perturbed) - AoP(frame)| with the same fold on the frame as given (90 deg where the
perturbed frame has no AoP). Out of fold, wrong AoPs move more: the bound is
:data:`psfh.measure.quality.MAX_STABILITY_GAP`, its calibration ``python -m
experiments.measure_stability`` and its catch rate the model card's "Trust".

Cost: three more passes of one fold (timed in the model card's "Trust"), which is why it is
optional (``predict(..., stability_check=True)``, the CLI's ``--stability-check``). It judges the
model's own result only: a structure a user re-segmented with a box is the user's outline, so a
box-corrected result is refused (:func:`refuse_corrected`, which ``PSFHModel.predict`` and the
demo ask too).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from psfh.core.errors import PSFHInputError
from psfh.measure import quality

PERTURBATIONS = ("brighter", "darker", "zoomed out")
GAMMA = {"brighter": 0.6, "darker": 1.6}
ZOOM_MARGIN = 0.1  # of the frame's height / width, on each side
NO_AOP_GAP_DEG = 90.0


def perturb(image: np.ndarray, kind: str) -> np.ndarray:
    """An H x W uint8 frame as another gain (same size) or a wider view (H + 2m x W + 2m, black margin m)."""
    image = np.asarray(image)
    if kind in GAMMA:
        # Pixels that were black stay black (the background outside the sector); no other pixel becomes 0.
        scaled = np.clip(255.0 * (image / 255.0) ** GAMMA[kind], 1, 255)
        return np.where(image > 0, scaled, 0).astype(np.uint8)
    if kind == "zoomed out":
        rows, cols = int(image.shape[0] * ZOOM_MARGIN), int(image.shape[1] * ZOOM_MARGIN)
        return np.pad(image, ((rows, rows), (cols, cols)))
    raise ValueError(f"unknown perturbation {kind!r}; one of {PERTURBATIONS}")


def aop_gap(reference_deg: float | None, perturbed_deg: dict[str, float | None]) -> float | None:
    """Mean |AoP(perturbed) - AoP(reference)| in degrees, 90 for a perturbation without an AoP;
    None when the frame itself has no AoP (nothing to withhold) or nothing was perturbed."""
    if reference_deg is None or not perturbed_deg:
        return None
    return float(np.mean([NO_AOP_GAP_DEG if angle is None else abs(angle - reference_deg)
                          for angle in perturbed_deg.values()]))


def perturbed_aops(model, image: np.ndarray, fold: str) -> dict[str, float | None]:
    """{perturbation: AoP in degrees or None} of ``fold`` alone (no flip) on each perturbed frame."""
    return {kind: model.predict(perturb(image, kind), folds=[fold], tta=False).aop.angle_deg
            for kind in PERTURBATIONS}


def reference_aop(prediction, fold: str) -> float | None:
    """The AoP of ``fold`` on the frame as given (its identity view), from a prediction that used it."""
    if prediction.view_aop_deg.get(fold):
        return prediction.view_aop_deg[fold][0]
    return prediction.fold_aop_deg.get(fold)


def refuse_corrected(boxes) -> None:
    """Raise PSFHInputError when ``boxes`` (box prompts, or a prediction's ``corrected``) is not
    empty: the check judges the model's own result, and a boxed structure is the user's."""
    if boxes:
        raise PSFHInputError("stability_check judges the model's own result; it does not apply with box prompts")


def checked(model, prediction, image: np.ndarray):
    """``prediction`` (the model's own, uncorrected) with the stability gap among its quality
    measures and judged with them; the first of its folds runs the three perturbed frames.

    Args:
        model: the :class:`psfh.model.psfh_model.PSFHModel` that made ``prediction``.
        prediction: its :class:`psfh.model.psfh_model.Prediction` of ``image``, with its quality check (as
            predict and decode make it).
        image: the H x W uint8 frame as the model saw it (``ImageEmbeddings.image``).
    Raises:
        PSFHInputError: ``prediction`` was corrected with box prompts (:func:`refuse_corrected`).
    """
    refuse_corrected(prediction.corrected)
    start = time.perf_counter()
    fold = prediction.folds[0]
    gap = aop_gap(reference_aop(prediction, fold), perturbed_aops(model, image, fold))
    if gap is None:
        return prediction
    measures = {**prediction.quality.measures, "stability_gap": gap}
    return replace(prediction, quality=quality.QualityCheck(reasons=quality.judge(measures), measures=measures),
                   timings={**prediction.timings, "stability_check": time.perf_counter() - start})
