"""`emo-slice eval`: score a model (and, with --against, the full model) on the same items, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from emo_slice.cli import app, cli_errors, console, print_json, warning_line
from emo_slice.cli.display import eval_output, progress_bars
from emo_slice.cli.options import (
    DType,
    Encoding,
    Json,
    LMMode,
    TaskFormat,
    deprecated,
    max_memory_option,
    opt,
    spec_argument,
    spec_option,
    value,
)
from emo_slice.eval.settings import EvalSettings
from emo_slice.workflows import eval as workflow
from emo_slice.workflows.eval import EvalSpec

EPILOG = """Examples:

  emo-slice eval ./slice --against ./full --task mmlu --shots 5      (lm-eval's groups; --per-subtask: 57 subjects)

  emo-slice eval ./slice --against ./full --task arc_easy=./data/arc_easy --task mmlu_pro

  emo-slice eval ./slice --against ./full --task tasks/code.jsonl --task tasks/docs.jsonl

  emo-slice eval ./slice --against ./full --task hf:allenai/ai2_arc:ARC-Easy --shots 5 --limit 200

  emo-slice eval ./model --task arc.jsonl --map context=question,choices=choices.text,label=answerKey

  emo-slice eval ./slice --against ./full --lm valid.jsonl --lm-mode packed --json --out results.json

  emo-slice eval ./slice --against ./full --task gsm8k --limit 200      (generative: 8-shot chain of thought)

  emo-slice eval ./slice --against ./full --lm valid.jsonl --pool 8 --pool 0     (EMO's document pool, and none)
"""
S = EvalSettings
PerSubtask = opt(
    "--per-subtask",
    bool,
    "Groups (mmlu, ...): also show each subtask's rows, under its group (the results file has them always).",
)


@app.command("eval", epilog=EPILOG)
@cli_errors
def eval_cmd(
    model: str = spec_argument(EvalSpec, "model"),
    against: Optional[str] = spec_option(EvalSpec, "against"),
    tasks: List[str] = spec_option(EvalSpec, "tasks"),
    lm: List[str] = spec_option(EvalSpec, "lm"),
    gen_tasks: List[Path] = spec_option(EvalSpec, "gen_tasks"),
    field_map: Optional[str] = spec_option(S, "field_map"),
    fmt: TaskFormat = spec_option(S, "fmt", enum=TaskFormat, show_default=True),
    split: Optional[str] = spec_option(S, "split"),
    text_field: str = spec_option(S, "text_field", show_default=True),
    lm_mode: LMMode = spec_option(S, "lm_mode", enum=LMMode, show_default=True),
    encoding: Encoding = spec_option(S, "encoding", enum=Encoding, show_default=True),
    shots: int = spec_option(S, "shots", show_default=True),
    limit: Optional[int] = spec_option(S, "limit"),
    seed: int = spec_option(S, "seed", show_default=True),
    batch_size: int = spec_option(S, "batch_size", show_default=True),
    max_length: Optional[int] = spec_option(S, "max_length"),
    uncond: bool = spec_option(S, "uncond"),
    layerwise: bool = spec_option(S, "layerwise"),
    max_memory: Optional[int] = max_memory_option(S),
    dtype: Optional[DType] = spec_option(S, "dtype"),
    device: str = spec_option(S, "device", show_default=True),
    pool: Optional[List[int]] = spec_option(S, "pool"),
    max_new_tokens: Optional[int] = spec_option(S, "max_new_tokens"),
    per_subtask: PerSubtask = False,
    json_out: Json = False,
    out: Optional[Path] = spec_option(EvalSpec, "out"),
    predictions: Optional[Path] = spec_option(EvalSpec, "predictions"),
    overwrite: bool = spec_option(EvalSpec, "overwrite"),
    old_format: deprecated("--format", Optional[TaskFormat]) = None,
):
    """Score a model (and, with --against, a second one on the same items) on tasks and text.

    Multiple-choice tasks are scored by ranking classification as lm-evaluation-harness scores them
    (acc,none and acc_norm,none, its numbers) and with OLMES's normalisations (acc_raw, acc_per_token,
    acc_per_char, acc_per_byte, acc_uncond, bits per byte of the gold), text by perplexity and bits per byte,
    generative tasks (gsm8k, --gen-task) by exact match of a greedy continuation. With
    --against, a second model is scored on the very same items and both are shown side by side. A group
    (mmlu) is shown as one table of its group scores; --per-subtask adds its subtasks."""
    if old_format is not None:
        warning_line("eval --format is deprecated (export's --format names what it writes); write --task-format")
        fmt = old_format
    reading = dict(field_map=field_map, fmt=value(fmt), split=split, text_field=text_field, lm_mode=value(lm_mode))
    scoring = dict(encoding=value(encoding), shots=shots, seed=seed, limit=limit, uncond=uncond)
    running = dict(batch_size=batch_size, max_length=max_length, layerwise=layerwise, dtype=value(dtype))
    running |= dict(max_memory=max_memory)
    running |= dict(device=device, pool=tuple(pool) if pool else None, max_new_tokens=max_new_tokens)
    files = dict(out=_str(out), predictions=_str(predictions), overwrite=overwrite)
    spec = EvalSpec(
        model, against, tuple(tasks), tuple(lm), tuple(map(str, gen_tasks)), S(**reading, **scoring, **running), **files
    )
    with progress_bars() as bar:
        data = workflow.run(spec, progress=bar)
    if json_out:
        from emo_slice.eval.results import without_samples  # torch-free --help: torch is loaded by now

        print_json(without_samples(data))
        return
    for line in eval_output(data, per_subtask, out):
        console.print(line)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
