"""`emo-slice sweep`: how much of the full model's score each K keeps, against random experts.

`run(SweepSpec(...))` profiles each model once (or reads a profile), scores the full model ONCE, then for every K
writes the slice the profile chooses (to a temporary folder, or `keep_slices`), scores it on the very same
items and compares it with the full model; `controls` random slices per K (experts drawn per layer by a
seeded generator, `select.rank_experts`, seeds seed, seed+1, ...) are the control arm, summarised per K by
`control_stats` (mean, sample standard deviation, min and max over the draws). Every evaluation goes
through `eval.harness.simple_evaluate` with the same `EvalSettings`, so a sweep row equals `emo-slice extract`
+ `emo-slice eval SLICE --against FULL` on the same items. It then writes the results (JSON) and the picture.

Held-out items: when the calibration input is a multiple-choice task that is also evaluated (the
profile's `inputs.source` is the task's file), the calibration items (the profile's demonstration ids)
are removed from that task before anything is scored (the task is handed to every evaluation as a Task
object, in memory), and `held_out` records the split.

The results dict (`format: emo-slice-sweep`) holds per row: K, kind (profile / random, with the seed),
bytes of weights and their share of the full model's, every metric, the share of the full model's score
kept (`eval.metrics.compare`), tokens/s and the original ids of the experts kept; `control_stats` holds per K
the spread of the random draws' scores and shares kept.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from emo_slice import __version__
from emo_slice.errors import UsageError
from emo_slice.eval.settings import EvalSettings
from emo_slice.ownership import PNG_SOFTWARE
from emo_slice.slicing.profile_settings import ProfileSettings
from emo_slice.specs import INPUT, METHOD, MODEL, OUTPUT, OVERWRITE, RESCALE, Spec, param
from emo_slice.workflows.common import PROFILING, SCORED, Progress, phase
from emo_slice.workflows.paths import check_spec_paths, local_path
from emo_slice.workflows.scoring import HEADLINE, headline_metrics, score_full, score_slice  # noqa: F401

FORMAT = "emo-slice-sweep"
KEEPS = "Experts kept per layer at each step, counts or shares: 8,16,32,64 or 12.5%,25%,50%."
METRIC = "Metric(s) the table and picture show (default: acc_per_char / bits_per_byte)."


@dataclass(frozen=True)
class SweepSpec(Spec):
    """The models `emo-slice sweep` slices, at which K, chosen how, scored on what, and its files."""

    models: tuple[str, ...] = param(
        doc=MODEL + " Several: the same sweep for each, side by side.", flag="MODEL", role=INPUT
    )
    keeps: str = param(doc=KEEPS, flag="--keep")
    tasks: tuple[str, ...] = param((), "Task scored at every K (as in `eval --task`). Repeatable.", flag="--task")
    lm: tuple[str, ...] = param((), "Text scored by bits per byte at every K (as in `eval --lm`). Repeatable.")
    profile: str | None = param(
        None, "Profile file from `emo-slice profile` of the (one) model, instead of --examples.", role=INPUT
    )
    calibration: ProfileSettings | None = param(None, "How each model is profiled (--examples and its options).")
    method: str = param("mean-prob", METHOD + " The swept slices' ranking (random: see --controls).")
    rescale: str = param("auto", RESCALE)
    controls: int = param(
        5,
        "Random-expert slices per K (seeds --seed, --seed+1, ...): the table shows their mean and standard deviation, "
        "the results their min and max too. One draw says little (its spread is unknown); 0 for none.",
    )
    seed: int = param(0, "Random seed of the random controls and of the demonstrations draw.")
    scoring: EvalSettings = param(EvalSettings(), "How every slice and the full model are scored.")
    metric: tuple[str, ...] = param((), METRIC)
    keep_slices: str | None = param(None, "Keep the slices in this folder (default: a temporary one).", role=OUTPUT)
    out: str | None = param(None, "Write the results here (JSON).", role=OUTPUT)
    plot: str | None = param(
        None, "PNG of score vs memory (default: --out with .png; needs emo-slice[plot]).", role=OUTPUT
    )
    overwrite: bool = param(False, OVERWRITE)

    def inputs(self) -> list[tuple[str, str]]:
        texts = [("--task", p) for p in map(local_path, self.tasks) if p] + [("--lm", p) for p in self.lm]
        return super().inputs() + texts

    def png(self) -> str | None:
        """The picture's path: --plot, else --out with .png, else none."""
        return self.plot if self.plot is not None else (str(Path(self.out).with_suffix(".png")) if self.out else None)

    def outputs(self) -> list[tuple[str, str]]:
        pairs = [("--out", self.out), ("--plot", self.png()), ("--keep-slices", self.keep_slices)]
        return [(f, p) for f, p in pairs if p is not None]


def parse_keeps(text: str | list, ckpt) -> list[int]:
    """'8,16,32' or '12.5%,25%' (or a list) -> experts kept per layer, ascending, each validated once."""
    from emo_slice.slicing.select import parse_keep  # torch-free --help: torch loads when a sweep runs

    cfg = ckpt.config
    E_min = cfg.fewest_experts()
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else map(str, text)) if str(p).strip()]
    if not parts:
        raise UsageError("`keeps` lists no K; write e.g. 8,16,32 or 12.5%,25%,50%")
    return sorted({parse_keep(p, E_min, cfg.num_shared_experts) for p in parts})


def label_of(model) -> str:
    p = Path(str(model))
    name = p.parent.name if p.name in ("final", "latest") else p.name
    name = f"{p.parent.name}-{p.name}" if p.name.startswith("step-") else name
    return name or "model"


def labels_of(models) -> list[str]:
    """One distinct label per model (its table row and its slices' folder): label_of, and where two models
    share it (a/emo and b/emo), the folder above put first (a-emo, b-emo), then a number."""
    base = [label_of(m) for m in models]
    up = [Path(str(m)).resolve().parent for m in models]
    up = [p.parent if Path(str(m)).name in ("final", "latest") else p for p, m in zip(up, models)]
    named = [f"{u.name}-{b}" if base.count(b) > 1 and u.name else b for b, u in zip(base, up)]
    return [f"{n}-{named[: i + 1].count(n)}" if named.count(n) > 1 else n for i, n in enumerate(named)]


# ---- the sweep ----------------------------------------------------------------------------------------


def _profile(ckpt, spec: SweepSpec, progress: Progress | None) -> dict:
    from emo_slice.slicing.profile import profile_model  # torch-free --help
    from emo_slice.slicing.profile_file import check_profile_matches, load_profile

    if spec.method == "random":
        raise UsageError("`method=random` is the control arm (`controls`); choose a scored method to sweep")
    if (spec.profile is None) == (spec.calibration is None):
        raise UsageError("say how to choose the experts: `examples` (profiled once) or `profile` (a file)")
    if spec.profile is not None:
        prof = load_profile(spec.profile)
        check_profile_matches(prof, ckpt)
        if prof.get("greedy"):
            raise UsageError("a greedy profile holds for one K only; sweep with a one-pass profile")
        return prof
    return profile_model(ckpt, spec.calibration, progress=phase(progress, PROFILING))


def _arms(ks: list[int], controls: int, seed: int) -> list[tuple[int, str, int | None]]:
    return [
        (k, kind, s) for k in ks for kind, s in [("profile", None)] + [("random", seed + c) for c in range(controls)]
    ]


def sweep_one(
    model, spec: SweepSpec, keep_slices: Path | None, progress: Progress | None = None, label: str | None = None
) -> dict:
    """Sweep one model over spec.keeps (see the module docstring); returns its results dict. label: its name in
    the table and its slices' folder names (default label_of(model); sweep_all gives each model a distinct one)."""
    from emo_slice.artifacts import provenance  # torch-free --help
    from emo_slice.io.checkpoint import Checkpoint

    ckpt = Checkpoint(model)
    ks = parse_keeps(spec.keeps, ckpt)
    if spec.controls < 0:
        raise UsageError(f"`controls={spec.controls}` must be 0 or more")
    if not spec.tasks and not spec.lm:
        raise UsageError("nothing to score: give at least one of `tasks` or `lm`")
    prof = _profile(ckpt, spec, progress)
    arms = _arms(ks, spec.controls, spec.seed)
    full, split, scored = score_full(ckpt, spec.tasks, spec.lm, [prof["inputs"]], spec.scoring)
    with tempfile.TemporaryDirectory(prefix="emo-slice-sweep-") as tmp:
        root = keep_slices if keep_slices is not None else Path(tmp)
        scoring = (scored, list(spec.lm), spec.scoring)
        label = label or label_of(model)
        rows = _score_arms(ckpt, label, prof, spec, arms, root, full, scoring, keep_slices is not None, progress)
    return {
        "model": str(ckpt.path),
        "label": label,
        "fingerprint": ckpt.fingerprint(),
        "method": spec.method,
        "keeps": ks,
        "num_experts": ckpt.config.num_experts,
        "controls": {"n": spec.controls, "seeds": [spec.seed + c for c in range(spec.controls)], "method": "random"},
        "profile": {"path": spec.profile, "inputs": prof.get("inputs"), "tokens": prof.get("tokens")},
        "held_out": split,
        **_full_record(full),
        "rows": rows,
        "control_stats": control_stats(rows, ks),
        "provenance": provenance(command="emo-slice sweep"),
    }


def spread(values: list) -> dict:
    """n, mean, sample standard deviation (n - 1 in the denominator; None below two values), min and max of the
    values that are numbers (None and text such as an "N/A" stderr are left out; all None when none is left)."""
    xs = [float(x) for x in values if isinstance(x, (int, float)) and not isinstance(x, bool)]
    n = len(xs)
    if not n:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd, "min": min(xs), "max": max(xs)}


def control_stats(rows: list[dict], ks: list[int]) -> list[dict]:
    """Per K, the spread (`spread`) of the random controls' scores (`results`) and shares of the full model's
    score kept (`kept`), task by task and metric by metric; empty without controls."""
    out = []
    for k in ks:
        ctrl = [r for r in rows if r["kind"] == "random" and r["keep"] == k]
        if not ctrl:
            continue
        rec = {"keep": k, "n": len(ctrl), "seeds": [r["seed"] for r in ctrl]}
        for part in ("results", "kept"):
            by_task = {
                task: {m: spread([r[part][task].get(m) for r in ctrl]) for m in metrics}
                for task, metrics in ctrl[0][part].items()
            }
            rec[part] = {t: {m: s for m, s in ms.items() if s["n"]} for t, ms in by_task.items()}
        out.append(rec)
    return out


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


def _score_arms(ckpt, label, prof, spec, arms, root: Path, full, scoring, keep: bool, progress) -> list[dict]:
    """One row per arm (K, kind, seed): the slice the profile (or the seeded random control) chooses, written
    under root and scored against the full model."""
    from emo_slice.slicing.rescale import rescale  # torch-free --help
    from emo_slice.slicing.select import plan_slice

    rows = []
    for i, (k, kind, s) in enumerate(arms):
        if progress is not None:
            progress(SCORED, i, len(arms))
        plan = plan_slice(ckpt, k, profile=prof, method=spec.method if kind == "profile" else "random", seed=s or 0)
        rescale(plan, ckpt.config, [prof], spec.rescale)  # the controls too: the comparison is of the choice alone
        name = f"{label}-{k}" + (f"-random{s}" if kind == "random" else "")
        row = score_slice(ckpt, plan, root / name, full, scoring, keep, spec.overwrite)
        rows.append({"kind": kind, "seed": s, **row})
    if progress is not None:
        progress(SCORED, len(arms), len(arms))
    return rows


def sweep_all(spec: SweepSpec, progress: Progress | None = None) -> dict:
    """The same sweep for each model in turn (each profiled on the same input): {format, sweeps}."""
    from emo_slice.artifacts import provenance  # torch-free --help

    sweeps = []
    for m, label in zip(spec.models, labels_of(spec.models)):
        where = None
        if spec.keep_slices is not None:
            where = Path(spec.keep_slices) / (label if len(spec.models) > 1 else "")
        sweeps.append(sweep_one(m, spec, where, progress, label))
    return {
        "format": FORMAT,
        "format_version": 1,
        "sweeps": sweeps,
        "provenance": provenance(command="emo-slice sweep"),
    }


def check_outputs(spec: SweepSpec) -> None:
    """Every output of the sweep checked before any work (no output on an input, each writable and, without
    overwrite, absent)."""
    from emo_slice.artifacts import check_output  # torch-free --help
    from emo_slice.io.checkpoint import resolve_checkpoint

    if spec.profile is not None and len(spec.models) > 1:
        raise UsageError("`profile` belongs to one model; with several models give `examples` (each is profiled)")
    if len(set(spec.models)) != len(spec.models):
        raise UsageError("a model is listed twice; list each once")
    check_spec_paths(spec)
    inputs = [resolve_checkpoint(m) for m in spec.models]
    png = spec.png()
    if spec.out is not None:
        check_output(spec.out, inputs=inputs, overwrite=spec.overwrite, kind="sweep")
    if png is not None:
        check_output(png, inputs=inputs, overwrite=spec.overwrite, flag="--plot", kind="png")
    if spec.keep_slices is not None:
        check_output(spec.keep_slices, inputs=inputs, overwrite=spec.overwrite, flag="--keep-slices", folder=True)


def run(spec: SweepSpec, progress: Progress | None = None, warn=None) -> dict:
    """Check every path, sweep every model (locked outputs), write --out and the picture; returns the results."""
    import json

    from emo_slice.artifacts import atomic_write_text, locked  # torch-free --help

    check_outputs(spec)
    png = spec.png()
    with locked((spec.out, "--out"), (png, "--plot"), (spec.keep_slices, "--keep-slices")):
        data = sweep_all(spec, progress)
        if spec.out is not None:
            atomic_write_text(spec.out, json.dumps(data, indent=1, default=str) + "\n")
        if png is not None and not write_plot(data, png, list(spec.metric) or None) and warn is not None:
            warn(PLOT_HINT)
    return data


def run_sweep(model, *, keeps, progress=None, **options) -> dict:
    """The keyword form of one model's sweep (earlier versions' run_sweep): SweepSpec's fields as keywords, with
    `profile_path` for `profile`, `settings` (ProfileSettings) for `calibration` and `eval_opts` (a dict of
    EvalSettings fields) for `scoring`. Writes no file (except the slices kept in keep_slices)."""
    spec = _spec_of([model], keeps, options)
    return sweep_one(model, spec, None if spec.keep_slices is None else Path(spec.keep_slices), progress)


def sweep_models(models, *, keeps, progress=None, **options) -> dict:
    """The keyword form of `sweep_all` (earlier versions' sweep_models): run_sweep's keywords for each model."""
    return sweep_all(_spec_of(list(models), keeps, options), progress)


def _spec_of(models: list, keeps, options: dict) -> SweepSpec:
    renamed = {"profile_path": "profile", "settings": "calibration"}
    fields = {renamed.get(k, k): v for k, v in options.items() if k != "eval_opts"}
    scoring = replace(EvalSettings(), **{k: v for k, v in (options.get("eval_opts") or {}).items() if v is not None})
    for k in ("tasks", "lm", "metric"):
        fields[k] = tuple(fields.get(k) or ())
    for k in ("profile", "keep_slices"):
        fields[k] = None if fields.get(k) is None else str(fields[k])
    return SweepSpec(models=tuple(map(str, models)), keeps=keeps, scoring=scoring, **fields)


# ---- the picture ----------------------------------------------------------------------------------------

PLOT_HINT = "matplotlib is not installed, so no PNG was written: pip install 'emo-slice[plot]'"


def write_plot(data: dict, path: str | os.PathLike, metrics: list[str] | None = None) -> bool:
    """Score vs share of the full model's bytes, one panel per shown metric: the profile's slices (line), the
    random controls (each draw a faint x; their mean with an error bar of one standard deviation) and the full
    model (star) of every model. False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from emo_slice.artifacts import atomic_output_file  # torch-free --help

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
                _plot_controls(ax, ctrl, task, metric, color, sw["label"])
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
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": f"{PNG_SOFTWARE} {__version__}"})
    plt.close(fig)
    return True


def _plot_controls(ax, ctrl: list[dict], task: str, metric: str, color: str, label: str) -> None:
    """The random draws of every K as faint x, and per K their mean with a one-standard-deviation error bar."""
    ax.plot(
        [r["share_of_bytes"] for r in ctrl],
        [r["results"][task][metric] for r in ctrl],
        "x",
        color=color,
        alpha=0.35,
        markersize=6,
    )
    xs, means, sds = [], [], []
    for k in sorted({r["keep"] for r in ctrl}):
        at_k = [r for r in ctrl if r["keep"] == k]
        st = spread([r["results"][task][metric] for r in at_k])
        xs.append(at_k[0]["share_of_bytes"])
        means.append(st["mean"])
        sds.append(st["sd"] or 0.0)
    n = len(ctrl) // max(1, len(xs))
    ax.errorbar(
        xs,
        means,
        yerr=sds,
        fmt="s--",
        color=color,
        mfc="white",
        capsize=4,
        label=f"{label}: random experts, mean ± sd of {n}",
    )
