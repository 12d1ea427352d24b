"""psfh.serve: the fair model lock (single frames before clips) and the per-request time limit.

Threads stand in for requests; a clip's model calls are plain ``with lock:`` blocks, as PSFHModel
takes its lock. The app's use of both, through its API, is in tests/test_app_serving.py.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

import numpy as np
import pytest

from psfh import serve
from psfh.serve.fair import FairModelLock, share_fairly
from psfh.serve.limits import Deadline, TimeLimitExceeded

SETTLE_S = 0.3  # long enough for a thread that could go on to do so


def start(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def clip_call(lock: FairModelLock, done: list):
    """One model call of a clip: waits for single frames in progress."""
    def run():
        with lock.clip(), lock:
            done.append(time.monotonic())
    return run


def test_a_clip_waits_while_a_single_frame_is_in_progress_then_goes_on():
    lock = FairModelLock(max_wait_s=30)
    done = []
    with lock.frame():
        thread = start(clip_call(lock, done))
        time.sleep(SETTLE_S)
        assert done == [] and thread.is_alive()  # the model is free, but a single frame is in progress
        with lock:  # the single frame takes the model at once
            pass
        time.sleep(SETTLE_S)
        assert done == []  # between the frame's model calls the clip still waits
    thread.join(5)
    assert len(done) == 1 and lock.waits == 1 and lock.overdue == 0


def test_a_single_frame_takes_the_model_before_a_waiting_clip():
    lock = FairModelLock(max_wait_s=30)
    order = []
    lock.acquire()  # a call in progress (e.g. a clip's frame) when both arrive

    def clip():
        with lock.clip(), lock:
            order.append("clip")

    def frame():
        with lock.frame(), lock:
            order.append("frame")
            time.sleep(0.1)

    threads = [start(clip)]
    time.sleep(0.1)  # the clip is first in line ...
    threads.append(start(frame))
    time.sleep(0.1)
    lock.release()  # ... yet the frame goes first
    for thread in threads:
        thread.join(5)
    assert order == ["frame", "clip"]


def test_a_clip_takes_the_model_after_max_wait_even_with_single_frames_in_progress():
    lock = FairModelLock(max_wait_s=0.2)
    done = []
    with lock.frame():
        began = time.monotonic()
        thread = start(clip_call(lock, done))
        thread.join(5)
    assert len(done) == 1 and 0.15 < done[0] - began < 3.0
    assert lock.overdue == 1


def test_the_lock_lets_one_call_at_a_time_whatever_the_role():
    lock = FairModelLock(max_wait_s=0.05)
    inside, most, calls = [0], [0], []

    def worker(role):
        def run():
            with role():
                for _ in range(20):
                    with lock:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                        time.sleep(0.001)
                        inside[0] -= 1
                        calls.append(1)
        return run

    roles = [lock.frame, lock.clip, lock.frame, lock.clip, nullcontext]  # nullcontext: neither (a script)
    threads = [start(worker(role)) for role in roles]
    for thread in threads:
        thread.join(30)
    assert most[0] == 1 and len(calls) == 100
    assert lock.frames_in_progress == 0 and not lock.locked()
    with pytest.raises(RuntimeError, match="unheld"):
        lock.release()


def test_a_model_lock_must_be_usable_in_with(tiny_model):
    with pytest.raises(TypeError, match="not a context manager"):
        tiny_model.use_model_lock(object())
    with pytest.raises(TypeError, match="has no model lock"):
        share_fairly(object())


def test_share_fairly_puts_the_lock_in_the_model_and_every_prediction_takes_it(tiny_model, one_torch_thread):
    lock = share_fairly(tiny_model, max_wait_s=30)
    assert share_fairly(tiny_model, max_wait_s=30) is lock and tiny_model.model_lock is lock
    image = np.random.default_rng(0).integers(0, 255, (64, 80), dtype=np.uint8)
    results = []

    def clip():
        with lock.clip():
            results.append(tiny_model.predict(image))

    with lock.frame():
        thread = start(clip)
        time.sleep(SETTLE_S)
        assert results == []  # the clip's prediction waits at the model's own lock
        frame = tiny_model.predict(image)  # a single frame's goes ahead
    thread.join(30)
    assert len(results) == 1 and lock.waits >= 1
    assert (results[0].label_map == frame.label_map).all()
    with pytest.raises(TypeError, match="no model lock"):
        share_fairly(object())


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_deadline_passes_progress_on_and_stops_a_clip_past_its_limit_with_what_was_done():
    clock, told = FakeClock(), []
    deadline = Deadline(60, "clip", "PSFH_CLIP_TIME_LIMIT_S", clock=clock)
    progress = deadline.watch(lambda value, desc=None, **kw: told.append((value, desc, kw)))
    progress(0.0, desc="Reading the clip")
    clock.now += 30
    progress((12, 100), desc="Segmenting the frames", unit="frames")
    assert told == [(0.0, "Reading the clip", {}), ((12, 100), "Segmenting the frames", {"unit": "frames"})]
    clock.now += 31
    with pytest.raises(TimeLimitExceeded) as stopped:
        progress((25, 100), desc="Segmenting the frames", unit="frames")
    message = str(stopped.value)
    assert "ran for 61 s, past the demo's time limit of 60 s per request (PSFH_CLIP_TIME_LIMIT_S)" in message
    assert "after 25 of 100 frames (2.4 s a frame)" in message and "python -m psfh.cine" in message


def test_the_deadline_names_the_step_of_a_single_frame_and_none_means_no_limit():
    clock = FakeClock()
    deadline = Deadline(10, "frame", clock=clock)
    progress = deadline.watch(lambda *args, **kwargs: None)
    progress(0.2, desc="Segmenting with the fold soup")
    clock.now += 11
    with pytest.raises(TimeLimitExceeded, match="This image ran for 11 s.*stopped at: Segmenting with the fold soup"):
        progress(0.7, desc=None)
    for unlimited in (None, 0):
        free = Deadline(unlimited, "frame", clock=clock)
        clock.now += 10_000
        free.check()  # no limit: never raises


def test_request_scopes_a_frame_or_a_clip_and_refuses_other_kinds():
    lock = FairModelLock()
    with serve.request(lock, serve.FRAME, None, lambda *a, **k: None) as progress:
        assert lock.frames_in_progress == 1
        progress(0.5, desc="half")
    assert lock.frames_in_progress == 0
    with serve.request(lock, serve.CLIP, None, lambda *a, **k: None):
        assert lock.frames_in_progress == 0
    with pytest.raises(ValueError, match="kind must be"):
        with serve.request(lock, "batch", None, lambda *a, **k: None):
            pass
