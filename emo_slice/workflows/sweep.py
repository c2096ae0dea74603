"""The memory-accuracy sweep: how much of the full model's score each K keeps, against random experts.

`run_sweep(model, keeps=[...], ...)` profiles the model once (or reads a profile), scores the full model
ONCE, then for every K writes the slice the profile chooses (to a temporary folder, or `keep_slices`),
scores it on the very same items and compares it with the full model; `controls` random slices per K
(experts drawn per layer by a seeded generator, `select.rank_experts`, seeds seed, seed+1, ...) are the
control arm. Every evaluation goes through `eval.harness.simple_evaluate` with the same options, so a
sweep row equals `emo-slice extract` + `emo-slice eval SLICE --against FULL` on the same items.

Held-out items: when the calibration input is a multiple-choice task that is also evaluated (the
profile's `inputs.source` is the task's file), the calibration items (the profile's demonstration ids)
are removed from that task before anything is scored, and `held_out` records the split.

The results dict (`format: emo-slice-sweep`) holds per row: K, kind (profile / random, with the seed),
bytes of weights and their share of the full model's, every metric, the share of the full model's score
kept (`eval.metrics.compare`), tokens/s and the original ids of the experts kept.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from emo_slice.errors import UsageError

Progress = Callable[[str, int, Optional[int]], None]
FORMAT = "emo-slice-sweep"
# the metric a table shows per task by default: bits per byte for texts, accuracy per character for tasks
HEADLINE = ("acc_per_char", "bits_per_byte")


def parse_keeps(text: str | list, ckpt) -> list[int]:
    """'8,16,32' or '12.5%,25%' (or a list) -> experts kept per layer, ascending, each validated once."""
    from emo_slice.slicing.select import parse_keep

    cfg = ckpt.config
    E_min = min(cfg.experts_in_layer(l) for l in range(cfg.num_hidden_layers))
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else map(str, text)) if str(p).strip()]
    if not parts:
        raise UsageError("--keep lists no K; write e.g. --keep 8,16,32 or --keep 12.5%,25%,50%")
    return sorted({parse_keep(p, E_min, cfg.num_shared_experts) for p in parts})


def evaluate(model, **opts) -> dict:
    """simple_evaluate with the options it takes (None: its default); an option it lacks is refused if given
    (not None/False). Device placement, and streaming layers when a model does not fit, are its own."""
    from emo_slice.eval.harness import simple_evaluate

    params = inspect.signature(simple_evaluate).parameters
    unknown = [k for k, v in opts.items() if k not in params and v not in (None, False)]
    if unknown:
        raise UsageError(f"--{unknown[0].replace('_', '-')} is not supported by this version's evaluation; drop it")
    return simple_evaluate(str(model), **{k: v for k, v in opts.items() if k in params and v is not None})


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
    from emo_slice.data.sources import file_hash

    source = calib.get("source")
    if source is None:
        return False
    if spec == source:
        return True
    a, b = Path(spec).expanduser(), Path(source).expanduser()
    if a.exists() and b.exists() and a.resolve() == b.resolve():
        return True
    return a.is_file() and calib.get("file_hash") is not None and file_hash(a) == calib["file_hash"]


def held_out_tasks(
    specs, calibrations: list[dict], folder: Path, fields=None, fmt: str = "auto", split: str | None = None
) -> tuple[list[str], list[dict], dict]:
    """Task specs with the calibration items removed: if any task is a calibration source, every task is
    written as plain JSONL under folder (so one format reads them all). Returns (specs, split records,
    overrides of simple_evaluate's field_map/fmt)."""
    from dataclasses import asdict

    from emo_slice.data.sources import items_hash
    from emo_slice.data.tasks import load_items, task_name

    calib = [c for c in calibrations if c and c.get("kind") == "multiple-choice"]
    if not any(_same_source(s, c) for s in specs for c in calib):
        return list(specs), [], {}
    out_specs, records = [], []
    for i, spec in enumerate(specs):
        items, _ = load_items(spec, fields, fmt, split)
        drop = {str(x) for c in calib if _same_source(spec, c) for x in c.get("ids", [])}
        rest = [it for it in items if it.id not in drop]
        if any(it.contexts for it in rest):
            raise UsageError(f"--task {spec} has per-choice contexts; calibrate on another source than the task")
        if not rest:
            raise UsageError(f"--task {spec}: every item was used for calibration; nothing is left to score")
        path = folder / str(i) / f"{task_name(spec)}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "".join(json.dumps({k: v for k, v in asdict(it).items() if k != "contexts"}) + "\n" for it in rest)
        )
        out_specs.append(str(path))
        if drop:
            records.append(
                {
                    "task": spec,
                    "calibration_ids": sorted(drop),
                    "items": len(items),
                    "held_out": len(rest),
                    "held_out_hash": items_hash(rest),
                }
            )
    return out_specs, records, {"field_map": None, "fmt": "auto"}


def score_full(ckpt, tasks, lm, calibrations: list, eval_opts: dict | None, folder: Path) -> tuple[dict, list, dict]:
    """Hold the calibration items out of `tasks` (copies under folder), then score the full model once. Returns its
    results, the held-out records (held_out_tasks) and the evaluation options every slice is scored with."""
    opts = dict(eval_opts or {})
    specs, split, over = held_out_tasks(
        list(tasks), calibrations, folder, opts.get("field_map"), opts.get("fmt", "auto"), opts.get("split")
    )
    opts.update(over, tasks=specs, lm=list(lm))
    return evaluate(ckpt.path, **opts), split, opts


# ---- one slice, scored against the full model -------------------------------------------------------


def score_slice(
    ckpt, plan, path: Path, full: dict, eval_opts: dict, keep: bool = False, overwrite: bool = False
) -> dict:
    """Write the plan's slice to path, score it with eval_opts, compare with the full model's results."""
    from emo_slice.eval.metrics import compare
    from emo_slice.slicing.extract import extract

    manifest = extract(ckpt, plan, path, overwrite=overwrite)
    try:
        data = evaluate(path, **eval_opts)
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


def label_of(model) -> str:
    p = Path(str(model))
    name = p.parent.name if p.name in ("final", "latest") else p.name
    name = f"{p.parent.name}-{p.name}" if p.name.startswith("step-") else name
    return name or "model"


# ---- the sweep ----------------------------------------------------------------------------------------


def _profile(ckpt, profile_path, settings, method: str, progress: Progress | None) -> dict:
    from emo_slice.slicing.profile import profile_model
    from emo_slice.slicing.profile_file import check_profile_matches, load_profile

    if method == "random":
        raise UsageError("--method random is the control arm (--controls N); choose a scored method to sweep")
    if (profile_path is None) == (settings is None):
        raise UsageError("say how to choose the experts: --examples SRC (profiled once) or --profile FILE")
    if profile_path is not None:
        prof = load_profile(profile_path)
        check_profile_matches(prof, ckpt)
        if prof.get("greedy"):
            raise UsageError("a --greedy profile holds for one K only; sweep with a one-pass profile")
        return prof
    cb = None if progress is None else (lambda done, total: progress("profiling", done, total))
    return profile_model(ckpt, settings, progress=cb)


def _original_specs(described: dict, specs: list[str]) -> None:
    """Task descriptions name the user's spec (and its file's hash), not the temporary held-out copy."""
    from emo_slice.data.sources import file_hash

    for info, spec in zip(described.values(), specs):
        if info.get("spec") != spec:
            info.update(spec=spec, file_hash=file_hash(spec) if Path(spec).is_file() else None, held_out_copy=True)


def _arms(ks: list[int], controls: int, seed: int) -> list[tuple[int, str, int | None]]:
    return [
        (k, kind, s) for k in ks for kind, s in [("profile", None)] + [("random", seed + c) for c in range(controls)]
    ]


def run_sweep(
    model,
    *,
    keeps,
    tasks=(),
    lm=(),
    profile_path=None,
    settings=None,
    method: str = "mean-prob",
    controls: int = 1,
    seed: int = 0,
    keep_slices: str | os.PathLike | None = None,
    overwrite: bool = False,
    eval_opts: dict | None = None,
    progress: Progress | None = None,
) -> dict:
    """Sweep one model over `keeps` (see the module docstring); returns its results dict."""
    from emo_slice.artifacts import provenance
    from emo_slice.io.checkpoint import Checkpoint

    ckpt = Checkpoint(model)
    ks = parse_keeps(keeps, ckpt)
    if controls < 0:
        raise UsageError(f"--controls {controls} must be 0 or more")
    if not tasks and not lm:
        raise UsageError("nothing to score: give at least one --task FILE or --lm FILE")
    prof = _profile(ckpt, profile_path, settings, method, progress)
    arms = _arms(ks, controls, seed)
    with tempfile.TemporaryDirectory(prefix="emo-slice-sweep-") as tmp:
        full, split, opts = score_full(ckpt, tasks, lm, [prof["inputs"]], eval_opts, Path(tmp) / "tasks")
        root = Path(keep_slices) if keep_slices is not None else Path(tmp)
        rows = _score_arms(
            ckpt, model, prof, method, arms, root, full, opts, keep_slices is not None, overwrite, progress
        )
    _original_specs(full["tasks"], list(tasks))
    return {
        "model": str(ckpt.path),
        "label": label_of(model),
        "fingerprint": ckpt.fingerprint(),
        "method": method,
        "keeps": ks,
        "num_experts": ckpt.config.num_experts,
        "controls": {"n": controls, "seeds": [seed + c for c in range(controls)], "method": "random"},
        "profile": {
            "path": str(profile_path) if profile_path else None,
            "inputs": prof.get("inputs"),
            "tokens": prof.get("tokens"),
        },
        "held_out": split,
        **_full_record(full),
        "rows": rows,
        "provenance": provenance(command="emo-slice sweep"),
    }


def _full_record(full: dict) -> dict:
    """The full model's part of a sweep's results: tasks, settings and its scores."""
    desc = full["models"]["model"]
    return {
        "tasks": full["tasks"],
        "settings": full["settings"],
        "full": {
            "bytes": desc["weight_bytes"],
            "results": full["results"],
            "tokens_per_s": desc["tokens_per_s"],
            "model": desc,
        },
    }


def _score_arms(ckpt, model, prof, method, arms, root: Path, full, opts, keep: bool, overwrite, progress) -> list[dict]:
    """One row per arm (K, kind, seed): the slice the profile (or the seeded random control) chooses, written
    under root and scored against the full model."""
    from emo_slice.slicing.select import plan_slice

    rows = []
    for i, (k, kind, s) in enumerate(arms):
        if progress is not None:
            progress("slices scored", i, len(arms))
        plan = plan_slice(ckpt, k, profile=prof, method=method if kind == "profile" else "random", seed=s or 0)
        name = f"{label_of(model)}-{k}" + (f"-random{s}" if kind == "random" else "")
        row = score_slice(ckpt, plan, root / name, full, opts, keep, overwrite)
        rows.append({"kind": kind, "seed": s, **row})
    if progress is not None:
        progress("slices scored", len(arms), len(arms))
    return rows


def sweep_models(models, **kwargs) -> dict:
    """The same sweep for each model in turn (each profiled on the same input): {format, sweeps}."""
    from emo_slice.artifacts import provenance

    keep_slices = kwargs.pop("keep_slices", None)
    sweeps = []
    for m in models:
        where = None if keep_slices is None else Path(keep_slices) / (label_of(m) if len(models) > 1 else "")
        sweeps.append(run_sweep(m, keep_slices=where, **kwargs))
    return {
        "format": FORMAT,
        "format_version": 1,
        "sweeps": sweeps,
        "provenance": provenance(command="emo-slice sweep"),
    }


# ---- the picture ----------------------------------------------------------------------------------------

PLOT_HINT = "matplotlib is not installed, so no PNG was written: pip install 'emo-slice[plot]'"


def write_plot(data: dict, path: str | os.PathLike, metrics: list[str] | None = None) -> bool:
    """Score vs share of the full model's bytes, one panel per shown metric: the profile's slices (line), the
    random controls (x) and the full model (star) of every model. False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from emo_slice.artifacts import atomic_output_file

    panels = [(t, m) for t, ms in headline_metrics(data["sweeps"][0]["full"]["results"], metrics).items() for m in ms]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 4), squeeze=False)
    for ax, (task, metric) in zip(axes[0], panels):
        for i, sw in enumerate(data["sweeps"]):
            color = f"C{i}"
            mine = [r for r in sw["rows"] if r["kind"] == "profile"]
            ctrl = [r for r in sw["rows"] if r["kind"] == "random"]
            ax.plot(
                [r["share_of_bytes"] for r in mine],
                [r["results"][task][metric] for r in mine],
                "o-",
                color=color,
                label=f"{sw['label']}: experts chosen by the profile",
            )
            if ctrl:
                ax.plot(
                    [r["share_of_bytes"] for r in ctrl],
                    [r["results"][task][metric] for r in ctrl],
                    "x",
                    color=color,
                    markersize=8,
                    label=f"{sw['label']}: random experts (control)",
                )
            ax.plot(
                [1.0],
                [sw["full"]["results"][task][metric]],
                "*",
                color=color,
                markersize=14,
                label=f"{sw['label']}: full model",
            )
        ax.set_xlabel("share of the full model's bytes of weights")
        ax.set_ylabel(metric + (" (lower is better)" if "bits" in metric or "perplexity" in metric else ""))
        ax.set_title(task)
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_output_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True
