"""The files of an evaluation: output paths checked before any work, results (JSON, `format`
emo-slice-results) and per-item samples (JSONL, each record's `format` emo-slice-predictions) written
atomically; the formats let `--overwrite` tell a file emo-slice wrote from any other."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from emo_slice.artifacts import atomic_write_text, check_output
from emo_slice.errors import UsageError
from emo_slice.io.checkpoint import resolve_checkpoint

RESULTS_FORMAT = "emo-slice-results"  # the `format` of a results file (emo_slice.ownership recognises it)
PREDICTIONS_FORMAT = "emo-slice-predictions"  # carried by every predictions record


def check_result_paths(
    models: Sequence[str | None],
    *,
    out: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> None:
    """Refuse, before any work, a results/predictions file inside a model folder, already there (without
    overwrite; with it, a file that is not .json / .jsonl), or in a folder that cannot be written."""
    inputs = [resolve_checkpoint(m) for m in models if m is not None]
    if out is not None and predictions is not None and Path(out).absolute() == Path(predictions).absolute():
        raise UsageError(f"--out and --predictions are both {out}; give two different files")
    for path, flag, kind in ((out, "--out", "results"), (predictions, "--predictions", "predictions")):
        if path is not None:
            check_output(path, inputs=inputs, overwrite=overwrite, flag=flag, kind=kind)


def without_samples(data: dict) -> dict:
    """The results dict as saved and printed: everything but the per-item samples."""
    return {k: v for k, v in data.items() if k != "samples"}


def save_results(
    data: dict, out: str | os.PathLike | None = None, predictions: str | os.PathLike | None = None
) -> list[Path]:
    """Write the results (JSON) to out and the per-item samples (JSONL) to predictions, each atomically."""
    written = []
    if out is not None:
        written.append(atomic_write_text(out, json.dumps(without_samples(data), indent=2, default=str) + "\n"))
    if predictions is not None:
        if "samples" not in data:
            raise UsageError("no per-item predictions to write: evaluate with log_samples=True")
        lines = "".join(json.dumps({"format": PREDICTIONS_FORMAT, **s}) + "\n" for s in data["samples"])
        written.append(atomic_write_text(predictions, lines))
    return written
