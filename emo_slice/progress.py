"""Progress as plain lines: what a long run says where no terminal shows a bar (a log file, a CI job, a pipe).

The library reports progress through one callback, `progress(label, done, total, tokens=None, unit=None)`:
`tokens` is how many tokens the loop that does the work has pushed through the model for this label so
far (the loop counts them; tokens/s is taken from them), `unit` what `done` counts ("layers", "items",
"bytes", ...). `LineProgress` stays quiet for the first `quiet` seconds of a run (a run refused on bad input
says one line, its error; a run this short needs no progress) and then says where each label stands, then
prints at most one line every `every` seconds per label, and each label's last one (done == total):

    eval model code: layer 3/16, 1,204 tokens/s, 0:00:41 elapsed, ~0:02:58 left

On a terminal the CLI draws the same reports as bars (emo_slice/cli/display.py). Torch-free.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, TextIO

EVERY_S = 5.0  # seconds between two lines of one label
QUIET_S = 2.0  # no line before this many seconds into a run


def clock_text(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _amount(n: float, unit: str) -> str:
    return f"{n / 1e9:.2f} GB" if unit == "bytes" else f"{int(n):,}"


def progress_text(label: str, done: float, total: Optional[float], tokens, unit: str, elapsed: float) -> str:
    """'label: layer 3/16, 1,204 tokens/s, 0:00:41 elapsed, ~0:02:58 left' (the parts that are known)."""
    of = "?" if total is None else _amount(total, unit)
    if unit == "layers":
        count = f"layer {int(done)}/{of}"
    elif unit == "bytes":
        count = f"{_amount(done, unit)}/{of}"
    else:
        count = f"{_amount(done, unit)}/{of} {unit}"
    parts = [count]
    if tokens and elapsed > 0:
        parts.append(f"{tokens / elapsed:,.0f} tokens/s")
    parts.append(f"{clock_text(elapsed)} elapsed")
    if total is not None and 0 < done < total and elapsed > 0:
        parts.append(f"~{clock_text(elapsed * (total - done) / done)} left")
    return f"{label}: " + ", ".join(parts)


@dataclass
class _Label:
    start: float
    last: Optional[float] = None
    finished: bool = False


@dataclass
class LineProgress:
    """progress(label, done, total, tokens=None, unit=None) printed as plain lines on `stream` (stderr)."""

    stream: Optional[TextIO] = None
    every: float = EVERY_S
    quiet: float = QUIET_S
    units: dict = field(default_factory=dict)  # label -> unit, where the report does not name one
    clock: Callable[[], float] = time.monotonic
    _labels: dict = field(default_factory=dict)
    _start: Optional[float] = None
    _pending: dict = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __call__(self, label: str, done, total=None, tokens=None, unit: Optional[str] = None) -> None:
        with self._lock:  # the quiet start's timer reports from its own thread
            self._report(label, done, total, tokens, unit)

    def _report(self, label: str, done, total, tokens, unit: Optional[str]) -> None:
        now = self.clock()
        if self._start is None:
            self._start = now
            if self.quiet > 0:  # what was reported meanwhile is said when the quiet start ends
                timer = threading.Timer(self.quiet, self._flush)
                timer.daemon = True
                timer.start()
        st = self._labels.setdefault(label, _Label(now))
        finished = total is not None and done >= total
        if st.finished and not finished:  # the label starts again (a second pass)
            st = self._labels[label] = _Label(now)
        if now - self._start < self.quiet:  # a run that ends (or is refused) this soon needs no progress
            self._pending[label] = (done, total, tokens, unit)
            return
        self._pending.pop(label, None)
        if st.finished or (st.last is not None and now - st.last < self.every and not finished):
            return
        st.last, st.finished = now, finished
        text = progress_text(label, done, total, tokens, unit or self.units.get(label, "items"), now - st.start)
        print(text, file=self.stream or sys.stderr, flush=True)

    def _flush(self) -> None:
        """The latest report of each label that came during the quiet start (so the first line comes at its
        end, not only after the next report, which a slow first layer may hold back for minutes)."""
        try:
            for label, args in list(self._pending.items()):
                if label in self._pending:
                    self(label, *args)
        except (ValueError, OSError):  # the run has ended and closed its stream: nothing left to say
            pass


__all__ = ["LineProgress", "progress_text", "clock_text", "EVERY_S", "QUIET_S"]
