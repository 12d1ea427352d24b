"""A time limit per request, checked where the request reports its progress.

A forward pass cannot be interrupted, but every handler of the demo tells a progress bar
between its steps (and a clip after each frame): :class:`Deadline` wraps that progress
callback and ends the request there, with :class:`TimeLimitExceeded`, once it has run longer
than its limit. The message says what was done, what the limit is and what to try instead.

    deadline = Deadline(120, "frame")
    progress = deadline.watch(progress)     # hand this to the handler in place of its own
    ...                                     # raises TimeLimitExceeded at the first call past 120 s
"""

from __future__ import annotations

import time
from collections.abc import Callable

# What a user can do instead, by kind of request.
ADVICE = {
    "frame": ("The server is busy or the settings are slow: try again, with fewer folds or the fold soup, or run "
              "psfh-predict on your own machine (README, Usage)."),
    "clip": ("Use the fast mode or a shorter clip, or analyse it on your own machine with "
             "python -m psfh.cine CLIP --out RESULTS (no time limit)."),
}


class TimeLimitExceeded(RuntimeError):
    """A request ran past its time limit; the message is meant for the user."""


class Deadline:
    """A request's time limit, counted from its creation (when the request starts running, not
    while it waits in the queue).

    Args:
        limit_s: seconds the request may run; None or <= 0: no limit.
        kind: "frame" or "clip" (picks the advice in the message).
        setting: the name of the setting that holds the limit, for the message.
    """

    def __init__(self, limit_s: float | None, kind: str = "frame", setting: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.limit_s = float(limit_s) if limit_s and limit_s > 0 else None
        self.kind = kind
        self.setting = setting
        self._clock = clock
        self.start = clock()
        self.step = "starting"
        self.done: tuple[int, int] | None = None

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self.start

    def check(self) -> None:
        """Raise TimeLimitExceeded when the request has run past its limit."""
        if self.limit_s is None or self.elapsed_s <= self.limit_s:
            return
        elapsed = self.elapsed_s
        what = {"frame": "This image", "clip": "This clip"}.get(self.kind, "This request")
        setting = f" ({self.setting})" if self.setting else ""
        message = (f"{what} ran for {elapsed:.0f} s, past the demo's time limit of {self.limit_s:.0f} s per "
                   f"request{setting}, and was stopped")
        if self.done is not None and self.done[0]:
            done, total = self.done
            message += f" after {done} of {total} frames ({elapsed / done:.1f} s a frame)"
        else:
            message += f" at: {self.step}"
        raise TimeLimitExceeded(f"{message}. {ADVICE.get(self.kind, '')}".rstrip())

    def watch(self, progress: Callable) -> Callable:
        """``progress`` (a gr.Progress or any callable with its signature) that checks the limit
        after passing each report on: (fraction or (done, total), desc=..., ...)."""

        def report(value=None, desc: str | None = None, *args, **kwargs):
            if desc:
                self.step = desc
            if isinstance(value, tuple) and len(value) == 2:
                self.done = (int(value[0]), int(value[1]))
            result = progress(value, *args, desc=desc, **kwargs)
            self.check()
            return result

        return report
