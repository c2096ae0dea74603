"""What the workflows share: the progress callback and its labels."""

from __future__ import annotations

from typing import Callable, Optional

Progress = Callable[[str, int, Optional[int]], None]  # progress(label, done, total or None)
PROFILING, WRITING, SCORED = "profiling", "writing slice", "slices scored"


def phase(progress: Progress | None, label: str):
    """progress with its label bound: (done, total) -> None; None without a progress callback."""
    return None if progress is None else (lambda done, total, tokens=None: progress(label, done, total, tokens))
