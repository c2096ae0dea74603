"""The run's log (out/log.jsonl, one JSON record per line) and the progress bar on stderr.

Records are {"kind": "train" | "eval", "step": ..., figures...}; a train record has "mfu" (model FLOPs
utilisation, train/mfu.py) when the device's peak is known. On resume the log is cut back to the
checkpoint's step, so a resumed run's log equals the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from emo_slice.artifacts import atomic_write_text
from emo_slice.errors import DataError
from emo_slice.io.safefiles import folder_file
from emo_slice.safejson import read_jsonl

LOG_FILE = "log.jsonl"


def append_record(out: Path, rec: dict) -> None:
    with open(out / LOG_FILE, "a") as f:
        f.write(json.dumps(rec) + "\n")


def read_log(out: Path) -> list[tuple[int, dict]]:
    """(line number, record) of the run's log (none when it has no log); a last record cut short by a kill is
    left out; any other damage is one DataError line naming the file and line."""
    log = out / LOG_FILE
    if not os.path.lexists(log):
        return []
    hint = "repair or remove that line (the log is not needed to resume)"
    path = folder_file(out, LOG_FILE, "training log", kind="run folder", error=DataError, hint=hint)
    recs = list(read_jsonl(path, hint=hint, allow_nan=True, partial_last=True))
    for n, rec in recs:
        if type(rec.get("step")) is not int:
            raise DataError(f"{log}:{n} has no integer 'step'; {hint}")
    return recs


def trim_log(out: Path, step: int) -> None:
    """Drop records after `step` (written after the checkpoint a resume starts from) and a last record cut short;
    the others are kept as written (json.dumps of the parsed record gives back its line)."""
    if os.path.lexists(out / LOG_FILE):
        keep = [json.dumps(rec) + "\n" for _, rec in read_log(out) if rec["step"] <= step]
        atomic_write_text(out / LOG_FILE, "".join(keep))


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
