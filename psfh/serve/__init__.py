"""Serving one shared model to many users (the demo, app.py): fair access and time limits.

- :mod:`psfh.serve.fair`: :class:`~psfh.serve.fair.FairModelLock`, the model's lock with
  single-frame requests going before clips (a clip is cut into chunks of one model call).
- :mod:`psfh.serve.limits`: :class:`~psfh.serve.limits.Deadline`, a time limit per request,
  checked where the request reports its progress.

:func:`request` puts both around one request's handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from psfh.serve.fair import CLIP, FRAME, FairModelLock, share_fairly
from psfh.serve.limits import Deadline, TimeLimitExceeded

__all__ = ["CLIP", "FRAME", "Deadline", "FairModelLock", "TimeLimitExceeded", "request", "share_fairly"]


@contextmanager
def request(lock: FairModelLock, kind: str, limit_s: float | None, progress: Callable,
            setting: str | None = None) -> Iterator[Callable]:
    """One request's scope: ``kind`` "frame" (goes before clips) or "clip" (waits for single
    frames at each model call), with a time limit of ``limit_s`` seconds (None: none; ``setting``
    names where it is set, for the message). Yields the progress callback to hand to the
    handler: it raises :class:`TimeLimitExceeded` once the request runs past its limit."""
    if kind not in (FRAME, CLIP):
        raise ValueError(f"kind must be {FRAME!r} or {CLIP!r}, not {kind!r}")
    deadline = Deadline(limit_s, kind, setting)
    with (lock.frame() if kind == FRAME else lock.clip()):
        yield deadline.watch(progress)
