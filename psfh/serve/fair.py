"""Fair access to one shared model: single-frame requests before clips.

A PSFHModel runs every forward pass under one lock (adapters are hot-swapped on a shared base).
A plain lock is taken by whichever thread gets there first, so a clip (hundreds of frames, a
model call or two each) that asks again the moment it lets go can hold the model for minutes
while a single-frame request waits. :class:`FairModelLock` replaces that lock: a thread marked
as a clip (:meth:`FairModelLock.clip`) takes the model only while no single-frame request
(:meth:`FairModelLock.frame`) is in progress, so a clip is cut into chunks of one model call,
and a single frame waits at most for the call that holds the model when it arrives. A clip
that has waited ``max_wait_s`` for one call takes the model anyway, so a steady stream of
single frames slows clips down but cannot stop them.

    lock = share_fairly(model)          # once, before serving
    with lock.frame():                  # a single-frame request's whole handler
        model.predict(image)
    with lock.clip():                   # a clip's handler: each model call waits its turn
        analyse_clip(model, sequence)

Threads that are neither (tests, scripts) take the model as with a plain lock.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

FRAME, CLIP = "frame", "clip"
# A clip waits at most this long for one model call while single frames go first.
DEFAULT_MAX_WAIT_S = 60.0


class FairModelLock:
    """A lock for ``with`` (PSFHModel's ``_lock``) that lets single-frame requests go before clips.

    Not re-entrant, like the threading.Lock it replaces. Counts what it did, for tests and
    measurements: ``waits`` (calls by a clip that found single frames in progress), ``overdue``
    (calls by a clip that took the model after ``max_wait_s``) and, now, :attr:`clips_waiting`.
    """

    def __init__(self, max_wait_s: float = DEFAULT_MAX_WAIT_S):
        self.max_wait_s = float(max_wait_s)
        self._condition = threading.Condition()
        self._held = False
        self._frames = 0  # single-frame requests in progress, waiting for the model or not
        self._clips_waiting = 0  # clips' model calls waiting for the model
        self._role = threading.local()
        self.waits = 0
        self.overdue = 0

    # ----------------------------------------------------------------------------- roles
    @contextmanager
    def frame(self):
        """A single-frame request's scope: while it lasts, clips leave the model to it."""
        with self._condition:
            self._frames += 1
        previous, self._role.kind = getattr(self._role, "kind", None), FRAME
        try:
            yield self
        finally:
            self._role.kind = previous
            with self._condition:
                self._frames -= 1
                self._condition.notify_all()

    @contextmanager
    def clip(self):
        """A clip's scope: each model call in it waits while single-frame requests are in progress."""
        previous, self._role.kind = getattr(self._role, "kind", None), CLIP
        try:
            yield self
        finally:
            self._role.kind = previous

    @property
    def frames_in_progress(self) -> int:
        return self._frames

    @property
    def clips_waiting(self) -> int:
        return self._clips_waiting

    # ----------------------------------------------------------------------------- the lock
    def acquire(self) -> bool:
        """Take the model; in a clip's scope, only once no single frame is in progress (or after
        ``max_wait_s``)."""
        with self._condition:
            if getattr(self._role, "kind", None) == CLIP:
                start = time.monotonic()
                waited = bool(self._frames)
                self.waits += waited
                self._clips_waiting += 1
                try:
                    while self._held or self._frames:
                        left = self.max_wait_s - (time.monotonic() - start)
                        if not self._held and left <= 0:
                            self.overdue += 1
                            break
                        self._condition.wait(timeout=left if left > 0 else None)
                finally:
                    self._clips_waiting -= 1
            else:
                while self._held:
                    self._condition.wait()
            self._held = True
        return True

    def release(self) -> None:
        with self._condition:
            if not self._held:
                raise RuntimeError("release of an unheld FairModelLock")
            self._held = False
            self._condition.notify_all()

    def locked(self) -> bool:
        return self._held

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def share_fairly(model, max_wait_s: float = DEFAULT_MAX_WAIT_S) -> FairModelLock:
    """Give ``model`` (a PSFHModel) a :class:`FairModelLock` in place of its plain lock, or
    return the one it has (``max_wait_s`` set again). Call it before the model is shared: a call
    holding the old lock at that moment would not exclude the new one.

    PSFHModel takes its ``model_lock`` around every forward pass and adapter switch and nowhere
    else (tests/test_serving.py checks that predictions go through it)."""
    if not hasattr(model, "use_model_lock"):
        raise TypeError(f"{type(model).__name__} has no model lock to replace")
    lock = model.model_lock
    if isinstance(lock, FairModelLock):
        lock.max_wait_s = float(max_wait_s)
        return lock
    lock = FairModelLock(max_wait_s)
    model.use_model_lock(lock)
    return lock
