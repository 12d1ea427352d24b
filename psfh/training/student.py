"""A student: ONE adapter distilled from a package's fold ensemble (issue 26, parts 5 and 6).

The teacher is a trained package's fold ensemble as the product runs it (every fold x {identity,
horizontal flip}, probabilities averaged). Its class probabilities of every training frame are
computed once, on the frame as it is; the student, one adapter of the same recipe, then trains
on ALL frames (nothing held out) with the expert's labels and those soft labels, moved together
by the batched augmentation (:func:`psfh.training.loss.distillation_loss`). At inference it
costs what one fold or the soup costs (one encoder pass per view) instead of the ensemble's ten.

The student is written as a package of its own whose only adapter is ``student`` (its folds list
``["student"]``, its default adapters too), so ``PSFHModel.from_pretrained`` loads it as any
package. It saw every frame: it has no out-of-fold predictions, and judging it needs frames that
no fold saw (the test frames, or a holdout).
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from psfh.core.errors import PSFHInputError
from psfh.model import inference
from psfh.model.psfh_model import PSFHModel

STUDENT = "student"  # the student's adapter name, and its folder in the package


def check_student_options(config, args) -> None:
    """Refuse what a student run cannot do (before any work)."""
    if config.recipe != "paper":
        raise PSFHInputError("--distil-from trains on images: use the paper recipe")
    if args.fold is not None or args.resume:
        raise PSFHInputError("--distil-from trains one adapter on every frame: no --fold or --resume")
    if args.init_adapters and not args.init_from:
        raise PSFHInputError("a student starts from scratch or from a named adapter: add --init-from (e.g. fold_0)")
    if not config.augment or config.augment_on != "device":  # training batches are told apart by augmentation
        raise PSFHInputError("--distil-from moves the soft labels with the images in the batched augmentation: "
                             "add --augment-on device (and no --no-augment)")
    if not 0 <= config.distil_weight <= 1:
        raise PSFHInputError(f"--distil-weight must be between 0 and 1, not {config.distil_weight}")


def load_teacher(package, student: PSFHModel, device) -> PSFHModel:
    """The teacher package (its fold adapters), checked to see images as the student does."""
    teacher = PSFHModel.from_pretrained(package, device=device)
    if len(teacher.folds) < 1:
        raise PSFHInputError(f"--distil-from {package}: the package has no fold adapters")
    same = (teacher.config.input_size, teacher.config.pixel_mean, teacher.config.pixel_std)
    if same != (student.config.input_size, student.config.pixel_mean, student.config.pixel_std):
        raise PSFHInputError(f"--distil-from {package}: its input size and normalisation {same} differ from the "
                             "student's base")
    return teacher


def teacher_probabilities(teacher: PSFHModel, source, mixed_precision: str = "no", progress: bool = False,
                          batch_size: int = 16):
    """The teacher's ensemble (every fold x flip, mean) of each image of an ImageSource, on the
    model grid: N x 3 x S x S float16 (the memory of 978 frames: 385 MB). Batches of ``batch_size``
    frames: the first GPU draw's one-frame-at-a-time pass (978 x 10 views) did not end in 4 minutes."""
    precision = "bf16" if mixed_precision == "bf16" else "fp32"
    out = []
    started = time.perf_counter()
    starts = range(0, len(source), batch_size)
    for number, start in enumerate(tqdm(starts, desc="teacher", disable=not progress, unit="batch"), 1):
        unit = source.images[start:start + batch_size].cpu()  # B x 1 x S x S in [0, 1], not augmented
        pixel_values = inference.normalize(unit, teacher.config.pixel_mean, teacher.config.pixel_std)
        probabilities = teacher.ensemble_probabilities(pixel_values.to(teacher.device), folds=teacher.folds,
                                                       tta=True, precision=precision)
        out.append(probabilities.to(torch.float16).cpu())
        if number == 1 or number % 10 == 0 or number == len(starts):  # a log line a device call's tail shows
            print(f"teacher: {min(start + batch_size, len(source))}/{len(source)} frames "
                  f"({time.perf_counter() - started:.1f} s)", flush=True)
    return torch.cat(out)


def describe_student(config, teacher: PSFHModel, package, weight: float) -> None:
    """Record in the student package's config what it is and what it was distilled from."""
    config.default_adapters = [STUDENT]
    config.training["student"] = {
        "teacher": str(package), "teacher_adapters": list(teacher.folds), "teacher_tta": "identity + horizontal flip",
        "distil_weight": weight,
        "loss": f"{1 - weight:g} x (the recipe's Dice + CE on the expert labels) + {weight:g} x soft cross-entropy "
                "against the ensemble's probabilities",
        "frames": "every training frame, none held out: the epochs' 'val' Dice is on the training frames, and "
                  "the last epoch is kept",
    }
