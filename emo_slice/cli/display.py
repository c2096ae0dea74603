"""What the commands print: progress bars on stderr and result tables on stdout (rich).

The library reports progress through one plain callback, `progress(label, done, total)`; `progress_bars`
turns it into rich bars (one per label, added on first report). Tables read the library's result dicts
and nothing else, so `--json` and the tables always show the same numbers.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Optional

from rich.filesize import decimal
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from emo_slice.cli import err_console

ProgressFn = Callable[[str, int, Optional[int]], None]


class _Count(ProgressColumn):
    """'3/8 layers', '1.2/4.0 MB' or '40/200 items, 35.1 items/s', by the task's unit."""

    def render(self, task) -> Text:
        unit = task.fields.get("unit", "items")
        total = "?" if task.total is None else (decimal(int(task.total)) if unit == "bytes" else int(task.total))
        done = decimal(int(task.completed)) if unit == "bytes" else int(task.completed)
        rate = f", {task.speed:.1f} {unit}/s" if unit == "items" and task.speed else ""
        return Text(f"{done}/{total}" + ("" if unit == "bytes" else f" {unit}") + rate, style="cyan")


@contextlib.contextmanager
def progress_bars(units: dict[str, str] | None = None, enabled: bool = True) -> Iterator[ProgressFn | None]:
    """Yield a `progress(label, done, total)` callback drawing one transient bar per label on stderr.

    units: label -> unit ('layers', 'bytes'); other labels count items. enabled=False, or stderr not a
    terminal (a live bar would only leave blank lines in a log), yields None.
    """
    if not enabled or not err_console.is_terminal:
        yield None
        return
    units = units or {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        _Count(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        ids: dict[str, int] = {}

        def update(label: str, done: int, total: int | None) -> None:
            if label not in ids:
                ids[label] = bar.add_task(label, total=total, unit=units.get(label, "items"))
            bar.update(ids[label], completed=done, total=total)

        yield update


# ---- info ----------------------------------------------------------------------------------------------


def human(n: float, unit: str = "B") -> str:
    for p in ["", "K", "M", "G", "T"]:
        if abs(n) < 1000 or p == "T":
            return f"{n:.3g} {p}{unit}" if p else f"{n:.0f} {unit}"
        n /= 1000 if unit != "B" else 1024
    return str(n)


def info_tables(data: dict) -> list[Table]:
    a, e, p = data["architecture"], data["experts"], data["parameters"]
    per_layer = e["per_layer"]
    layers_txt = f"{per_layer[0]} in every layer" if len(set(per_layer)) == 1 else ", ".join(map(str, per_layer))
    t = Table(title=f"{data['path']}  ({data['model_type']}, fingerprint {data['fingerprint']})", show_header=False)
    t.add_row("layers / hidden / expert hidden", f"{a['layers']} / {a['hidden_size']} / {a['intermediate_size']}")
    t.add_row("heads / kv heads / head dim", f"{a['heads']} / {a['kv_heads']} / {a['head_dim']}")
    t.add_row("vocab", str(a["vocab_size"]))
    t.add_row("experts per layer", f"{layers_txt} ({e['shared']} shared, last)")
    t.add_row("experts per token", f"{e['per_token']} ({e['routed_per_token']} routed + {e['shared']} shared)")
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
    """The routing concentration of a profile summary (emo_slice.slicing.pipeline.profile_summary)."""
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


def _task_table(data: dict, tname: str, names: list[str]) -> Table:
    from emo_slice.eval.metrics import HIGHER_IS_BETTER

    metrics, against = data["results"][tname], len(names) > 1
    t = Table(
        title=_task_title(tname, data["tasks"][tname], metrics),
        caption="↓ lower is better; kept: share of the --against score kept" if against else None,
    )
    t.add_column("metric")
    for col in names + ["difference", "kept"] if against else names:
        t.add_column(col, justify="right")
    for m, hib in HIGHER_IS_BETTER.items():
        if m not in metrics:
            continue
        label = m + ("" if hib else " ↓")
        if not against:
            t.add_row(label, _fmt(m, metrics[m]))
            continue
        c = data["comparison"][tname][m]
        diff = f"{c['diff'] * 100:+.1f} pts" if m.startswith("acc") else f"{c['diff']:+.4g}"
        kept = f"{c['kept']:.1%}" if c["kept"] is not None else "-"
        t.add_row(label, _fmt(m, c["model"]), _fmt(m, c["against"]), diff, kept)
    return t


def eval_tables(data: dict) -> list[Table]:
    """One table per task (both models side by side with --against), then the models."""
    roles = list(data["models"])
    names = [model_label(data["models"][r]["path"]) for r in roles]
    if len(names) == 2 and names[0] == names[1]:
        names = [f"{names[0]} (model)", f"{names[1]} (against)"]
    tables = [_task_table(data, tname, names) for tname in data["results"]]
    t = Table(title="Models")
    t.add_column("")
    for n in names:
        t.add_column(n, justify="right")
    ms = [data["models"][r] for r in roles]
    t.add_row("parameters loaded", *[f"{m['parameters']:,}" for m in ms])
    t.add_row("bytes of weights", *[f"{m['weight_bytes']:,}" for m in ms])
    t.add_row("tokens/s", *[f"{m['tokens_per_s']:,.0f}" if m["tokens_per_s"] else "-" for m in ms])
    t.add_row("fingerprint", *[m["fingerprint"] for m in ms])
    return tables + [t]


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
