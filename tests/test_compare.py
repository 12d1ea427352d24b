"""Paired differences with exam-block bootstrap intervals (psfh.measure.compare)."""

from __future__ import annotations

import numpy as np
import pytest

from psfh.measure.compare import exam_of, paired_difference

IDS = [f"{n:05d}" for n in range(1000, 1060)]  # three runs of 20 consecutive ids


def test_exams_are_blocks_of_consecutive_ids_of_the_whole_numbering():
    exams = exam_of(IDS)
    assert len(set(exams.values())) == 3 and exams["01000"] == exams["01019"] != exams["01020"]
    # Every 4th id keeps its exam when the blocks come from all ids.
    assert len({exams[i] for i in IDS[::4]}) == 3


def test_a_constant_difference_has_a_zero_width_interval():
    before = {i: float(n) for n, i in enumerate(IDS)}
    after = {i: v + 2.0 for i, v in before.items()}
    difference = paired_difference(after, before, exam_of(IDS))
    assert difference.mean == pytest.approx(2.0) and difference.low == pytest.approx(2.0)
    assert difference.high == pytest.approx(2.0) and (difference.frames, difference.exams) == (60, 3)


def test_the_interval_resamples_exams_not_frames():
    # One exam much better than the two others: the interval spans the exam means' range of draws.
    exams = exam_of(IDS)
    after = {i: (3.0 if exams[i] == 0 else 0.0) for i in IDS}
    before = {i: 0.0 for i in IDS}
    difference = paired_difference(after, before, exams, samples=4000)
    assert difference.mean == pytest.approx(1.0)
    assert difference.low == pytest.approx(0.0) and difference.high == pytest.approx(3.0)
    assert str(difference) == "+1.000 [+0.000, +3.000]"


def test_unmeasured_frames_are_left_out_and_nothing_shared_is_an_error():
    exams = exam_of(IDS)
    after = {IDS[0]: 1.0, IDS[1]: None, IDS[2]: float("nan"), IDS[3]: 4.0}
    before = {IDS[0]: 0.0, IDS[1]: 0.0, IDS[2]: 0.0, IDS[3]: 1.0}
    assert paired_difference(after, before, exams).frames == 2
    with pytest.raises(ValueError, match="no frame is measured by both"):
        paired_difference({IDS[0]: None}, before, exams)
    assert np.isfinite(paired_difference(after, before, exams).mean)
