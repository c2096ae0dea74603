"""The run's log (out/log.jsonl, one JSON record per line) and the progress bar on stderr.

Records are {"kind": "train" | "eval", "step": ..., figures...}; a train record has "mfu" (model FLOPs
utilisation, train/mfu.py) when the device's peak is known. On resume the log is cut back to the
checkpoint's step, so a resumed run's log equals the uninterrupted run's.
"""

from __future__ import annotations

import json
from pathlib import Path

from emo_slice.artifacts import atomic_write_text

LOG_FILE = "log.jsonl"


def append_record(out: Path, rec: dict) -> None:
    with open(out / LOG_FILE, "a") as f:
        f.write(json.dumps(rec) + "\n")


def trim_log(out: Path, step: int) -> None:
    """Drop records after `step` (written after the checkpoint a resume starts from)."""
    log = out / LOG_FILE
    if log.exists():
        keep = [ln for ln in log.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        atomic_write_text(log, "".join(ln + "\n" for ln in keep))


def mfu_text(rec: dict) -> str:
    """The progress bar's MFU field: 'MFU 38.2%', or '' when no peak is known (CPUs without peak_tflops)."""
    return f"MFU {rec['mfu']:.1%}" if rec.get("mfu") is not None else ""


def progress_bar(enabled: bool, label: str = "pretrain"):
    """A rich progress bar with loss, tokens/s and MFU fields (disabled: a no-op with the same interface)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TextColumn("{task.fields[mfu]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
