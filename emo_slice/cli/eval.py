"""`emo-slice eval`: score a model (and, with --against, the full model) on the same items, side by side."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from emo_slice.cli import app, cli_errors, console, err_console, print_json

EPILOG = """Examples:

  emo-slice eval ./slice --against ./full --task tasks/code.jsonl --task tasks/docs.jsonl

  emo-slice eval ./slice --against ./full --task hf:allenai/ai2_arc:ARC-Easy --shots 5 --limit 200

  emo-slice eval ./model --task arc.jsonl --map context=question,choices=choices.text,label=answerKey

  emo-slice eval ./slice --against ./full --lm valid.jsonl --lm-mode packed --json --out results.json
"""


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} items/s" if task.speed else "", style="cyan")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _label(path: str) -> str:
    """A column title for a model: its folder name, with the run folder for pretrain's final/step-N."""
    p = Path(path)
    if p.name in ("final", "latest") or p.name.startswith("step-"):
        return f"{p.parent.name}/{p.name}"
    return p.name or path


def _fmt(metric: str, v) -> str:
    if v is None:
        return "-"
    if metric.startswith("acc"):
        return f"{v:.1%}"
    return f"{v:.4g}"


@app.command("eval", epilog=EPILOG)
@cli_errors
def eval_cmd(
    model: str = typer.Argument(..., help="Checkpoint folder or Hub id to evaluate (e.g. a slice)."),
    against: Optional[str] = typer.Option(None, "--against", help="A second model (e.g. the full one) scored on "
                                          "exactly the same items; the table shows both, the difference and the share kept."),
    task: List[str] = typer.Option([], "--task", help="Multiple-choice task: a JSONL file, a saved dataset folder, "
                                   "or hf:NAME[:CONFIG] from the Hugging Face cache. Repeat for several."),
    lm: List[str] = typer.Option([], "--lm", help="Text for perplexity and bits per byte: .txt, JSONL, dataset. Repeatable."),
    field_map: Optional[str] = typer.Option(None, "--map", help="Rename task fields: context=F,choices=F,label=F,id=F "
                                            "(dotted paths like choices.text; labels as index or letter)."),
    fmt: str = typer.Option("auto", "--format", help="Task shape: auto (detected), plain, arc or hellaswag."),
    split: Optional[str] = typer.Option(None, "--split", help="Dataset split (default test, validation or train)."),
    text_field: str = typer.Option("text", "--field", help="Field holding the text for --lm JSONL/datasets."),
    lm_mode: str = typer.Option("rows", "--lm-mode", help="--lm documents one per row (rows) or packed end to end (packed)."),
    shots: int = typer.Option(0, "--shots", help="Demonstrations drawn (seeded) from the task, put before each item, "
                              "and not scored."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N items of each task."),
    seed: int = typer.Option(0, "--seed", help="Seed of the few-shot draw."),
    batch_size: int = typer.Option(16, "--batch-size", help="Items (rows) per forward pass."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Longest row in tokens (default the model's "
                                             "max_position_embeddings); longer contexts are cut from the left."),
    uncond: bool = typer.Option(False, "--uncond", help="Also compute acc_uncond (choices scored after a bare 'Answer:')."),
    layerwise: bool = typer.Option(False, "--layerwise", help="Hold one layer in memory at a time (checkpoints "
                                   "larger than memory)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Compute dtype: float32 or bfloat16 (default: stored)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON instead of tables."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the results (JSON, lm-evaluation-harness shape) here."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Write per-item predictions (JSONL) here."),
):
    """Score MODEL on multiple-choice tasks (ranking classification: acc_raw, acc_per_token, acc_per_char,
    acc_per_byte, acc_uncond, bits per byte of the gold) and on text (perplexity, bits per byte); with
    --against, score a second model on the very same items and show both side by side."""
    from emo_slice.artifacts import provenance
    from emo_slice.errors import UsageError
    from emo_slice.eval.harness import evaluate_lm, evaluate_mc
    from emo_slice.eval.metrics import compare
    from emo_slice.eval.runner import Runner
    from emo_slice.data.tasks import load_task, parse_map

    if not task and not lm:
        raise UsageError("nothing to evaluate: give at least one --task FILE or --lm FILE")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} must be at least 1")
    if max_length is not None and max_length < 2:
        raise UsageError(f"--max-length {max_length} must be at least 2")
    fields = parse_map(field_map)
    tasks = {}
    for spec in task:  # items loaded once: both models see exactly the same ones
        t = load_task(spec, fields, fmt, split, shots, seed, limit)
        name, k = t.name, 2
        while name in tasks:
            name, k = f"{t.name}_{k}", k + 1
        tasks[name] = t
    texts = {}
    if lm:
        from emo_slice.data.sources import read_texts

        for src in lm:
            docs = read_texts(src, text_field, split, "--lm")
            if limit is not None:
                docs = docs[:limit]
            texts["lm:" + (Path(src).stem if Path(src).exists() else src)] = (src, docs)

    roles = [("model", model)] + ([("against", against)] if against else [])
    results: dict = {}
    models: dict = {}
    pred_lines: list[str] = []
    for role, path in roles:
        runner = Runner(path, dtype, layerwise)
        res = results.setdefault(role, {})
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
                      TimeElapsedColumn(), console=err_console, transient=True) as bar:
            for name, t in tasks.items():
                pid = bar.add_task(f"{role} {name}", total=len(t.items))
                r = evaluate_mc(runner, t.items, prefix=t.prompt, max_length=max_length, batch_size=batch_size,
                                uncond=uncond, progress=lambda n, pid=pid: bar.advance(pid, n), task=name)
                res[name] = r.metrics
                if predictions:
                    pred_lines += [json.dumps({"model": role, "task": name, **p}) for p in r.predictions]
            for name, (src, docs) in texts.items():
                pid = bar.add_task(f"{role} {name}", total=None)
                res[name] = evaluate_lm(runner, docs, mode=lm_mode, max_length=max_length, batch_size=batch_size,
                                        progress=lambda n, pid=pid: bar.advance(pid, n), task=name)
        models[role] = runner.describe()
        del runner

    data = {
        "results": results["model"],
        "models": models,
        "tasks": {name: t.describe() for name, t in tasks.items()}
        | {name: {"spec": src, "documents": len(docs), "mode": lm_mode} for name, (src, docs) in texts.items()},
        "settings": {"shots": shots, "seed": seed, "limit": limit, "batch_size": batch_size,
                     "max_length": max_length, "uncond": uncond, "layerwise": layerwise, "dtype": dtype,
                     "map": fields, "format": fmt, "split": split, "lm_mode": lm_mode,
                     "scoring": "ranking classification; context and continuation tokenised separately "
                                "(lm-evaluation-harness); one row per item: context once, then every choice"},
        "provenance": provenance(command="emo-slice eval"),
    }
    if against:
        data["against_results"] = results["against"]
        data["comparison"] = {n: compare(results["model"][n], results["against"][n]) for n in results["model"]}
    if out:
        _atomic_write(out, json.dumps(data, indent=2, default=str) + "\n")
    if predictions:
        _atomic_write(predictions, "".join(line + "\n" for line in pred_lines))
    if json_out:
        print_json(data)
        return
    _print_tables(data, model, against)
    if out:
        console.print(f"results written to {out}")


def _print_tables(data: dict, model: str, against: Optional[str]) -> None:
    from emo_slice.eval.metrics import HIGHER_IS_BETTER

    name_m = _label(model)
    name_a = _label(against) if against else None
    if name_a == name_m:
        name_m, name_a = f"{name_m} (model)", f"{name_a} (against)"
    for tname, metrics in data["results"].items():
        info = data["tasks"][tname]
        if "items_scored" in info:
            title = (f"{tname}: {info['items_scored']} items, {info['shots']}-shot, "
                     f"{metrics['truncated']} cut from the left to fit")
        else:
            title = f"{tname}: {info['documents']} documents, {metrics['tokens']} tokens, {info['mode']}"
        t = Table(title=title, caption="↓ lower is better; kept: share of the --against score kept" if against else None)
        t.add_column("metric")
        t.add_column(name_m, justify="right")
        if against:
            for col in (name_a, "difference", "kept"):
                t.add_column(col, justify="right")
        for m, hib in HIGHER_IS_BETTER.items():
            if m not in metrics:
                continue
            label = m + ("" if hib else " ↓")
            if against:
                c = data["comparison"][tname][m]
                diff = f"{c['diff'] * 100:+.1f} pts" if m.startswith("acc") else f"{c['diff']:+.4g}"
                kept = f"{c['kept']:.1%}" if c["kept"] is not None else "-"
                t.add_row(label, _fmt(m, c["model"]), _fmt(m, c["against"]), diff, kept)
            else:
                t.add_row(label, _fmt(m, metrics[m]))
        console.print(t)
    t = Table(title="Models")
    t.add_column("")
    roles = [("model", name_m)] + ([("against", name_a)] if against else [])
    for _, n in roles:
        t.add_column(n, justify="right")
    ms = [data["models"][r] for r, _ in roles]
    t.add_row("parameters loaded", *[f"{m['parameters']:,}" for m in ms])
    t.add_row("bytes of weights", *[f"{m['weight_bytes']:,}" for m in ms])
    t.add_row("tokens/s", *[f"{m['tokens_per_s']:,.0f}" if m["tokens_per_s"] else "-" for m in ms])
    t.add_row("fingerprint", *[m["fingerprint"] for m in ms])
    console.print(t)
    tok = ms[0]["tokenizer"]
    if tok.startswith("byte-level"):
        console.print(f"tokenizer: {tok}")
