"""What the commands print: progress bars on stderr and result tables on stdout (rich).

The library reports progress through one plain callback, `progress(label, done, total, tokens=None, unit=None)`
(emo_slice/progress.py); `progress_bars` turns it into rich bars on a terminal (one per label, added on first
report) and into plain lines elsewhere. Tables read the library's result dicts
and nothing else, so `--json` and the tables always show the same numbers.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

from rich.filesize import decimal
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from emo_slice import progress
from emo_slice.cli import err_console
from emo_slice.eval.metrics import HIGHER_IS_BETTER

ProgressFn = Callable[..., None]  # progress(label, done, total, tokens=None, unit=None): emo_slice/progress.py


def tokens_per_s(task) -> float | None:
    """Tokens/s of a model-running task: the tokens its loop reported (frozen when it finishes) over its
    elapsed time."""
    tokens = task.fields.get("tokens")
    elapsed = task.finished_time if task.finished else task.elapsed
    return tokens / elapsed if tokens and elapsed else None


class _Count(ProgressColumn):
    """'layer 3/16, 5,120 tokens/s', '1.2/4.0 MB' or '40/200 items, 35.1 items/s, 9,800 tokens/s', by the task's
    unit, then the time left when it can be told."""

    def render(self, task) -> Text:
        unit = task.fields.get("unit", "items")
        total = "?" if task.total is None else (decimal(int(task.total)) if unit == "bytes" else int(task.total))
        done = decimal(int(task.completed)) if unit == "bytes" else int(task.completed)
        if unit == "layers":
            text = f"layer {done}/{total}"
        else:
            text = f"{done}/{total}" + ("" if unit == "bytes" else f" {unit}")
        text += f", {task.speed:.1f} {unit}/s" if unit == "items" and task.speed else ""
        tps = tokens_per_s(task)
        text += f", {tps:,.0f} tokens/s" if tps else ""
        if task.total and 0 < task.completed < task.total and task.elapsed:
            text += f", ~{progress.clock_text(task.elapsed * (task.total - task.completed) / task.completed)} left"
        return Text(text, style="cyan")


@contextlib.contextmanager
def progress_bars(units: dict[str, str] | None = None, enabled: bool = True) -> Iterator[ProgressFn | None]:
    """Yield a `progress(label, done, total, tokens=None, unit=None)` callback: on a terminal one transient bar
    per label on stderr; elsewhere (a log, a pipe) plain lines, a label's first at once and then at most one
    every few seconds (emo_slice.progress.LineProgress). units: label -> unit ('layers', 'bytes') where the
    report names none; other labels count items. enabled=False yields None."""
    if not enabled:
        yield None
        return
    units = units or {}
    if not err_console.is_terminal:
        quiet = float(os.environ.get("EMO_SLICE_PROGRESS_QUIET", progress.QUIET_S))  # seconds; tests raise it
        yield progress.LineProgress(err_console.file, progress.EVERY_S, quiet, units)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        _Count(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        ids: dict[str, int] = {}

        def update(label: str, done, total=None, tokens=None, unit=None) -> None:
            unit = unit or units.get(label, "items")
            if label not in ids:
                ids[label] = bar.add_task(label, total=total, unit=unit, tokens=None)
            fields = {} if tokens is None else {"tokens": tokens}
            bar.update(ids[label], completed=done, total=total, **fields)

        yield update


# ---- info ----------------------------------------------------------------------------------------------


def human(n: float, unit: str = "B") -> str:
    for p in ["", "K", "M", "G", "T"]:
        if abs(n) < 1000 or p == "T":
            return f"{n:.3g} {p}{unit}" if p else f"{n:.0f} {unit}"
        n /= 1000 if unit != "B" else 1024
    return str(n)


def family_text(fam: dict) -> str:
    """One line: the stock class and how the family's layers differ (q/k norm, biases, routing, extras)."""
    bias = fam["attention_bias"]
    parts = [
        fam["architecture"],
        f"q/k norm {fam['qk_norm']}",
        "q/k/v/o biases" if bias["o"] else ("q/k/v biases" if bias["qkv"] else "no biases"),
        {"softmax-topk": "softmax then top-k", "topk-softmax": "top-k then softmax"}[fam["routing"]]
        + (" (renormalised)" if fam["norm_topk_prob"] or fam["routing"] == "topk-softmax" else ""),
    ]
    if fam["shared_expert_mlp"]:
        parts.append(f"gated shared expert (width {fam['shared_expert_mlp']})")
    if fam["dense_layers"]:
        parts.append(f"dense layers {fam['dense_layers']}")
    if fam["sliding_window"]:
        parts.append(f"sliding window {fam['sliding_window']}")
    return "; ".join(parts)


def info_tables(data: dict) -> list[Table]:
    a, e, p = data["architecture"], data["experts"], data["parameters"]
    per_layer = e["per_layer"]
    t = Table(title=f"{data['path']}  ({data['model_type']}, fingerprint {data['fingerprint']})", show_header=False)
    t.add_row("layers / hidden / expert hidden", f"{a['layers']} / {a['hidden_size']} / {a['intermediate_size']}")
    t.add_row("heads / kv heads / head dim", f"{a['heads']} / {a['kv_heads']} / {a['head_dim']}")
    t.add_row("vocab", str(a["vocab_size"]))
    fam = data.get("family")
    if fam is not None:
        t.add_row("family", family_text(fam))
    moe = [E for E in per_layer if E]
    layers_txt = ", ".join(map(str, per_layer))
    if len(set(moe)) == 1:
        layers_txt = f"{moe[0]} in every layer" if len(moe) == len(per_layer) else f"{moe[0]} in every MoE layer"
    if e["shared"]:
        t.add_row("experts per layer", f"{layers_txt} ({e['shared']} shared, last)")
        t.add_row("experts per token", f"{e['per_token']} ({e['routed_per_token']} routed + {e['shared']} shared)")
    else:
        t.add_row("experts per layer", layers_txt)
        t.add_row("experts per token", str(e["per_token"]))
    t.add_row("parameters total", f"{p['total']:,} ({human(p['total'], '')})")
    t.add_row("active per token", f"{p['active']:,} ({human(p['active_non_embedding'], '')} without embeddings)")
    t.add_row("on disk", f"{human(data['bytes_on_disk'])} in {data['tensors']} tensors, {data['stored_dtype']}")
    s = Table(title="What a slice would weigh (same K in every layer, shared experts kept)")
    for col in ("share of experts", "K (experts/layer)", "parameters", "bytes", "of the full model"):
        s.add_column(col, justify="right")
    for row in data["slices"]:
        s.add_row(
            f"{row['share']:.1%}",
            str(row["keep"]),
            human(row["params_total"], ""),
            human(row["bytes"]),
            f"{row['share_of_bytes']:.1%}",
        )
    return [t, s]


# ---- profile -------------------------------------------------------------------------------------------


def _share_style(v: float, base: float) -> str:
    return "bold green" if v >= 2 * base else "green" if v >= 1.4 * base else "yellow" if v >= 1.1 * base else "red"


def concentration_table(summary: dict) -> Table:
    """The routing concentration of a profile summary (emo_slice.workflows.slice.profile_summary)."""
    rows = summary["concentration"]
    n = rows[0]["routed"] if rows else 0
    t = Table(title=f"Routing concentration ({summary['tokens']:,} tokens; share of router probability mass)")
    t.add_column("layer", justify="right")
    t.add_column(f"top 25% ({rows[0]['n_0.25'] if rows else 0} of {n})", justify="right")
    t.add_column(f"top 12.5% ({rows[0]['n_0.125'] if rows else 0} of {n})", justify="right")
    t.add_column("experts used", justify="right")
    for r in rows:
        cells = [
            f"[{_share_style(r[key], base)}]{r[key]:.0%}[/]" for key, base in (("top_0.25", 0.25), ("top_0.125", 0.125))
        ]
        t.add_row(str(r["layer"]), *cells, f"{r['used']}/{r['routed']}")
    return t


# ---- eval ----------------------------------------------------------------------------------------------


def model_label(path: str) -> str:
    """A column title for a model: its folder name, with the run folder for pretrain's final/step-N."""
    p = Path(path)
    if p.name in ("final", "latest") or p.name.startswith("step-"):
        return f"{p.parent.name}/{p.name}"
    return p.name or path


def _fmt(metric: str, v) -> str:
    if v is None:
        return "-"
    return f"{v:.1%}" if metric.startswith("acc") else f"{v:.4g}"


def _task_title(tname: str, info: dict, metrics: dict) -> str:
    if "items_scored" in info:
        return (
            f"{tname}: {info['items_scored']} items, {info['shots']}-shot, "
            f"{metrics['truncated']} cut from the left to fit"
        )
    return f"{tname}: {info['documents']} documents, {metrics['tokens']} tokens, {info['mode']}"


def _shown_metrics(metrics: dict) -> list[str]:
    return [m for m in HIGHER_IS_BETTER if m in metrics]


def _metric_label(m: str) -> str:
    return m + ("" if HIGHER_IS_BETTER[m] else " ↓")


def _metric_cells(data: dict, tname: str, m: str, against: bool) -> list[str]:
    """One metric of one result: the model's value; with --against both, the difference and the share kept."""
    if not against:
        return [_fmt(m, data["results"][tname][m])]
    c = data["comparison"][tname][m]
    diff = f"{c['diff'] * 100:+.1f} pts" if m.startswith("acc") else f"{c['diff']:+.4g}"
    kept = f"{c['kept']:.1%}" if c["kept"] is not None else "-"
    return [_fmt(m, c["model"]), _fmt(m, c["against"]), diff, kept]


def _value_columns(t: Table, names: list[str]) -> None:
    for col in names + ["difference", "kept"] if len(names) > 1 else names:
        t.add_column(col, justify="right")


AGAINST_CAPTION = "↓ lower is better; kept: share of the --against score kept"


def _task_table(data: dict, tname: str, names: list[str]) -> Table:
    metrics, against = data["results"][tname], len(names) > 1
    t = Table(title=_task_title(tname, data["tasks"][tname], metrics), caption=AGAINST_CAPTION if against else None)
    t.add_column("metric")
    _value_columns(t, names)
    for m in _shown_metrics(metrics):
        t.add_row(_metric_label(m), *_metric_cells(data, tname, m, against))
    return t


def group_rows(data: dict) -> dict[str, list[tuple[str, int, bool]]]:
    """Each aggregated group inside no other (mmlu, or mmlu_stem alone) -> its rows as (result name, depth,
    is a group), lm-eval's order: the group, then each group inside it (alphabetical) followed by its
    subtasks, then the subtasks in no inner group."""
    groups = {n: i["group"] for n, i in data["tasks"].items() if "group" in i and n in data["results"]}
    inside = {g: [h for h in groups if h != g and set(groups[h]) < set(groups[g])] for g in groups}
    out = {}
    for top in (g for g in groups if not any(g in inner for inner in inside.values())):
        rows, covered = [(top, 0, True)], set()
        for g in sorted(inside[top]):
            rows += [(g, 1, True)] + [(m, 2, False) for m in groups[g] if m in data["results"]]
            covered |= set(groups[g])
        rows += [(m, 1, False) for m in groups[top] if m not in covered and m in data["results"]]
        out[top] = rows
    return out


def _group_table(data: dict, top: str, rows: list, names: list[str], per_subtask: bool) -> Table:
    """One table for a group: its aggregate and its inner groups' (and, with per_subtask, every subtask's
    rows, indented under their group), each metric side by side as in a task's table."""
    against = len(names) > 1
    n_sub = sum(not is_group for _, _, is_group in rows)
    how = "subtasks below their groups" if per_subtask else f"--per-subtask to show its {n_sub} subtasks"
    caption = f"groups: item-weighted means of their subtasks ({how})"
    t = Table(
        title=_task_title(top, data["tasks"][top], data["results"][top]),
        caption=caption + ("\n" + AGAINST_CAPTION if against else ""),
    )
    t.add_column("task")
    t.add_column("metric")
    _value_columns(t, names)
    for name, depth, is_group in rows:
        if not (is_group or per_subtask):
            continue
        shown = _shown_metrics(data["results"][name])
        label = Text("  " * (depth - 1) + " - " + name if depth else name)
        for i, m in enumerate(shown):
            cells = _metric_cells(data, name, m, against)
            t.add_row(label if i == 0 else "", _metric_label(m), *cells, end_section=i == len(shown) - 1)
    return t


def _models_table(data: dict, names: list[str]) -> Table:
    t = Table(title="Models")
    t.add_column("")
    for n in names:
        t.add_column(n, justify="right")
    ms = [data["models"][r] for r in data["models"]]
    t.add_row("parameters loaded", *[f"{m['parameters']:,}" for m in ms])
    t.add_row("bytes of weights", *[f"{m['weight_bytes']:,}" for m in ms])
    t.add_row("tokens/s", *[f"{m['tokens_per_s']:,.0f}" if m["tokens_per_s"] else "-" for m in ms])
    t.add_row("device", *[f"{m.get('device', 'cpu')} ({m.get('placement', '-')}), {m['dtype']}" for m in ms])
    t.add_row("fingerprint", *[m["fingerprint"] for m in ms])
    return t


def model_names(data: dict) -> list[str]:
    """The column title of each model (model, against), told apart when their folders have the same name."""
    names = [model_label(m["path"]) for m in data["models"].values()]
    if len(names) == 2 and names[0] == names[1]:
        names = [f"{names[0]} (model)", f"{names[1]} (against)"]
    return names


def eval_tables(data: dict, per_subtask: bool = False) -> list[Table]:
    """One table per task (both models side by side with --against), one per group with its inner groups
    (and with per_subtask its subtasks: lm-eval's layout) where its first subtask would be, each generative
    task's table, then the models. The results keep every subtask whatever is shown."""
    names = model_names(data)
    gen = [n for n in data["results"] if n in data["settings"].get("gen_tasks", [])]
    families = group_rows(data)
    owner = {name: top for top, rows in families.items() for name, _, _ in rows}
    tables, shown = [], set()
    for tname in (n for n in data["results"] if n not in gen):
        top = owner.get(tname)
        if top is None:
            tables.append(_task_table(data, tname, names))
        elif top not in shown:
            shown.add(top)
            tables.append(_group_table(data, top, families[top], names, per_subtask))
    if gen:
        from emo_slice.eval.generative import gen_table  # torch-free --help

        tables += [gen_table(data, n, names) for n in gen]
    return tables + [_models_table(data, names)]


def eval_output(data: dict, per_subtask: bool = False, out=None) -> list:
    """What `emo-slice eval` prints: the tables (`eval_tables`), a byte-level tokenizer's note, where the
    results were written."""
    lines: list = eval_tables(data, per_subtask)
    tok = data["models"]["model"]["tokenizer"]
    if tok.startswith("byte-level"):
        lines.append(f"tokenizer: {tok}")
    if out:
        lines.append(f"results written to {out}")
    return lines


def generation_table(result: dict, names: dict[str, str]) -> Table:
    """Prompts and each model's continuation, side by side."""
    labels = list(result["completions"])
    s = result["settings"]
    how = "greedy" if s["greedy"] else f"sampled (temperature {s['temperature']}, top-p {s['top_p']}, seed {s['seed']})"
    t = Table(title=f"{s['max_new_tokens']} new tokens, {how}, {s['dtype']} on {s['device']}", show_lines=True)
    t.add_column("prompt")
    for label in labels:
        t.add_column(names.get(label) or label)
    for i, p in enumerate(result["prompts"]):
        t.add_row(Text(p), *[Text(result["completions"][label][i]) for label in labels])
    return t
