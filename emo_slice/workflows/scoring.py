"""Scoring slices against their full model, shared by sweep and auto-K.

`score_full` holds the calibration items out of the tasks (a task that is the calibration's source becomes a
Task object of its other items, handed over in memory) and scores the full model once; `score_slice` writes a
slice, scores it on the very same tasks with the same `EvalSettings` and compares it with the full model
(`eval.metrics.compare`: the share of the full score kept); `headline_metrics` picks what a table shows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from emo_slice.data.sources import file_hash, items_hash
from emo_slice.data.tasks import load_items, parse_map, task_of_items
from emo_slice.errors import UsageError
from emo_slice.eval.metrics import compare
from emo_slice.eval.settings import EvalSettings

# the metric a table shows per task by default: bits per byte for texts, accuracy per character for tasks
HEADLINE = ("acc_per_char", "bits_per_byte")


def evaluate(model, tasks: list, lm: list, settings: EvalSettings) -> dict:
    """simple_evaluate of one model on tasks (specs or Task objects) and lm texts with the sweep's settings.
    Device placement, and streaming layers when a model does not fit, are its own."""
    from emo_slice.eval.harness import simple_evaluate  # torch-free --help

    return simple_evaluate(str(model), tasks=tasks, lm=lm, settings=settings)


def headline_metrics(results: dict, chosen: list[str] | None = None) -> dict[str, list[str]]:
    """task -> the metrics a table shows: `chosen` (those the task has), else the first of HEADLINE it has."""
    out = {}
    for name, metrics in results.items():
        pick = [m for m in (chosen or []) if m in metrics]
        if not chosen:
            pick = [m for m in HEADLINE if m in metrics][:1]
        out[name] = pick
    return out


# ---- held-out items ---------------------------------------------------------------------------------


def _same_source(spec: str, calib: dict) -> bool:
    """Whether a task spec is the calibration's source: the same spec, the same file, or a file of the same bytes."""
    source = calib.get("source")
    if source is None:
        return False
    if spec == source:
        return True
    a, b = Path(spec).expanduser(), Path(source).expanduser()
    if a.exists() and b.exists() and a.resolve() == b.resolve():
        return True
    return a.is_file() and calib.get("file_hash") is not None and file_hash(a) == calib["file_hash"]


def held_out_tasks(specs, calibrations: list[dict], settings: EvalSettings) -> tuple[list, list[dict]]:
    """The tasks to score, with the calibration items removed: a task that is a calibration source becomes a Task
    object of its other items (few-shot draw and limit as settings say); the others stay specs. Returns
    (tasks, split records)."""
    calib = [c for c in calibrations if c and c.get("kind") == "multiple-choice"]
    out, records = [], []
    for spec in specs:
        drop = {str(x) for c in calib if _same_source(spec, c) for x in c.get("ids", [])}
        if not drop:
            out.append(spec)
            continue
        items, fmt = load_items(spec, parse_map(settings.field_map), settings.fmt, settings.split)
        rest = [it for it in items if it.id not in drop]
        if not rest:
            raise UsageError(f"`tasks` {spec}: every item was used for calibration; nothing is left to score")
        out.append(task_of_items(spec, fmt, rest, settings.shots, settings.seed, settings.limit))
        held = {"items": len(items), "held_out": len(rest), "held_out_hash": items_hash(rest)}
        records.append({"task": spec, "calibration_ids": sorted(drop), **held})
    return out, records


def score_full(ckpt, tasks, lm, calibrations: list, settings: EvalSettings) -> tuple[dict, list, list]:
    """Hold the calibration items out of `tasks`, then score the full model once. Returns its results, the
    held-out records (held_out_tasks) and the tasks every slice is scored on (the same objects)."""
    scored, split = held_out_tasks(list(tasks), calibrations, settings)
    full = evaluate(ckpt.path, scored, list(lm), settings)
    held = {r["task"] for r in split}
    for info in full["tasks"].values():  # a held-out task is the user's spec minus the calibration items
        if info.get("spec") in held:
            info["held_out"] = True
    return full, split, scored


# ---- one slice, scored against the full model -------------------------------------------------------


def score_slice(ckpt, plan, path: Path, full: dict, scoring: tuple, keep: bool = False, overwrite=False) -> dict:
    """Write the plan's slice to path, score it (scoring: tasks, lm, settings), compare with the full model's."""
    from emo_slice.slicing.extract import extract  # torch-free --help

    manifest = extract(ckpt, plan, path, overwrite=overwrite)
    try:
        data = evaluate(path, *scoring)
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
    desc = data["models"]["model"]
    full_bytes = full["models"]["model"]["weight_bytes"]
    return {
        "keep": manifest["keep"],
        "bytes": desc["weight_bytes"],
        "share_of_bytes": desc["weight_bytes"] / full_bytes,
        "results": data["results"],
        "kept": {
            n: {m: c["kept"] for m, c in compare(data["results"][n], full["results"][n]).items()}
            for n in data["results"]
        },
        "tokens_per_s": desc["tokens_per_s"],
        "kept_experts": manifest["kept_experts"],
        "path": str(path) if keep else None,
    }
