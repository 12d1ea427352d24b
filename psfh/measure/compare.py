"""Paired comparisons of two ways to predict the same frames, with exam-block bootstrap intervals.

Frames of one examination are alike (consecutive PSFHS ids are often frames of one exam), so
they are not independent samples: the interval resamples whole exams (blocks of consecutive ids,
:func:`psfh.io.dataset.id_blocks`), not frames.

    exams = exam_of(every_id_of_the_data_set)
    difference = paired_difference(errors_b, errors_a, exams)   # b - a, mean and 95 % interval
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from psfh.io.dataset import id_blocks

BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Difference:
    """The mean of a paired per-frame difference and its exam-block bootstrap interval."""

    mean: float
    low: float
    high: float
    frames: int
    exams: int

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def exam_of(ids: Iterable[str], block_size: int = 20) -> dict[str, int]:
    """{id: its exam's index}: exams are the blocks of consecutive ids of :func:`id_blocks`.
    Give every id of the data set, not the measured subset: blocks are cut on the whole numbering
    (every 4th id alone would be a gap after each frame)."""
    return {sample_id: n for n, block in enumerate(id_blocks(ids, block_size)) for sample_id in block}


def paired_difference(after: Mapping[str, float | None], before: Mapping[str, float | None],
                      exams: Mapping[str, int], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> Difference:
    """Mean of ``after[id] - before[id]`` over the ids both measured (not None, not NaN), with the
    2.5th and 97.5th percentiles of that mean over ``samples`` resamplings of whole exams."""
    ids = [i for i in after if i in before and _finite(after[i]) and _finite(before[i])]
    if not ids:
        raise ValueError("no frame is measured by both")
    difference = np.array([after[i] - before[i] for i in ids], dtype=np.float64)
    groups = np.array([exams[i] for i in ids])
    labels, group_index = np.unique(groups, return_inverse=True)
    sums = np.bincount(group_index, weights=difference, minlength=len(labels))
    counts = np.bincount(group_index, minlength=len(labels)).astype(np.float64)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(labels), size=(samples, len(labels)))
    means = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Difference(float(difference.mean()), float(low), float(high), len(ids), len(labels))


def _finite(value) -> bool:
    return value is not None and bool(np.isfinite(value))
