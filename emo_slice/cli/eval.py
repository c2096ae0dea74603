"""`emo-slice eval`: score a model (and, with --against, the full model) on the same items, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.options import (
    Device,
    DeviceComputeDType,
    Encoding,
    Json,
    Layerwise,
    LMMode,
    ModelArg,
    Overwrite,
    Split,
    TaskFormat,
    out_option,
    pool_option,
    seed_option,
    value,
)

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


def _opt(flag: str, typ, help: str, **kw):
    return Annotated[typ, typer.Option(flag, help=help, show_default=kw.pop("show_default", False), **kw)]


Against = _opt(
    "--against",
    Optional[str],
    "A second model (e.g. the full one) scored on exactly the same items; the "
    "table shows both, the difference and the share kept.",
)
Tasks = _opt(
    "--task",
    List[str],
    "A built-in benchmark (mmlu, mmlu_stem, arc_easy, hellaswag, ...: `emo-slice tasks` lists them; NAME:mc "
    "for OLMES's lettered format; NAME=FOLDER for a local copy of its data), or a multiple-choice task: a JSONL "
    "file, a saved dataset folder, or hf:NAME[:CONFIG] from the Hugging Face cache. Repeat for several.",
)
Texts = _opt("--lm", List[str], "Text for perplexity and bits per byte: .txt, JSONL, dataset. Repeatable.")
FieldMap = _opt(
    "--map",
    Optional[str],
    "Rename task fields: context=F,choices=F,label=F,id=F (dotted paths like choices.text; labels as index or letter).",
)
FormatOpt = _opt("--format", TaskFormat, "Task shape (auto: detected).", show_default=True)
TextField = _opt("--field", str, "Field holding the text for --lm JSONL/datasets.", show_default=True)
LMModeOpt = _opt("--lm-mode", LMMode, "--lm documents one per row, or packed end to end.", show_default=True)
EncodingOpt = _opt(
    "--encoding",
    Encoding,
    "Multiple choice: lm-eval encodes context + choice as one string and takes the tokens after the context's "
    "(lm-evaluation-harness's numbers); separate tokenises the two apart.",
    show_default=True,
)
EvalShots = _opt(
    "--shots",
    int,
    "Demonstrations drawn (seeded) from the task, put before each item, and not scored.",
    show_default=True,
)
Limit = _opt("--limit", Optional[int], "Score only the first N items of each task.")
BatchSize = _opt("--batch-size", int, "Items (rows) per forward pass.", show_default=True)
EvalMaxLength = _opt(
    "--max-length",
    Optional[int],
    "Longest row in tokens (default the model's max_position_embeddings); longer contexts are cut from the left.",
)
Uncond = _opt("--uncond", bool, "Also compute acc_uncond (choices scored after a bare 'Answer:').")
ResultsOut = Annotated[Optional[Path], out_option("Write the results here (JSON, lm-evaluation-harness shape).")]
Predictions = _opt("--predictions", Optional[Path], "Write per-item predictions here (JSONL).")
GenTasks = _opt(
    "--gen-task",
    List[Path],
    "Generative task: JSONL of {prompt, target, stop (optional list), id (optional)}; greedy, scored by exact "
    "match of the stripped continuation. Repeatable. (--task gsm8k is lm-eval's 8-shot gsm8k_cot.)",
)
MaxNewTokens = _opt("--max-new-tokens", Optional[int], "Generative tasks: new tokens at most (default 256).")
PoolOpt = Annotated[
    Optional[List[int]],
    pool_option(
        "Repeat to score each task once per pool, e.g. --pool 8 --pool 0 for with and without; results are "
        "named NAME@poolP. Multiple choice with a pool scores one row per choice (context + choice, one document)."
    ),
]


PerSubtask = _opt(
    "--per-subtask",
    bool,
    "Groups (mmlu, ...): also show each subtask's rows, under its group (the results file has them always).",
)


@app.command("eval", epilog=EPILOG)
@cli_errors
def eval_cmd(
    model: ModelArg,
    against: Against = None,
    task: Tasks = [],
    lm: Texts = [],
    field_map: FieldMap = None,
    fmt: FormatOpt = TaskFormat.auto,
    split: Split = None,
    text_field: TextField = "text",
    lm_mode: LMModeOpt = LMMode.rows,
    encoding: EncodingOpt = Encoding.lm_eval,
    shots: EvalShots = 0,
    limit: Limit = None,
    seed: Annotated[int, seed_option("the few-shot draw")] = 0,
    batch_size: BatchSize = 16,
    max_length: EvalMaxLength = None,
    uncond: Uncond = False,
    layerwise: Layerwise = False,
    dtype: DeviceComputeDType = None,
    device: Device = "auto",
    pool: PoolOpt = None,
    gen_task: GenTasks = [],
    max_new_tokens: MaxNewTokens = None,
    per_subtask: PerSubtask = False,
    json_out: Json = False,
    out: ResultsOut = None,
    predictions: Predictions = None,
    overwrite: Overwrite = False,
):
    """Score a model (and, with --against, a second one on the same items) on tasks and text.

    Multiple-choice tasks are scored by ranking classification as lm-evaluation-harness scores them
    (acc,none and acc_norm,none, its numbers) and with OLMES's normalisations (acc_raw, acc_per_token,
    acc_per_char, acc_per_byte, acc_uncond, bits per byte of the gold), text by perplexity and bits per byte,
    generative tasks (gsm8k, --gen-task) by exact match of a greedy continuation. With
    --against, a second model is scored on the very same items and both are shown side by side. A group
    (mmlu) is shown as one table of its group scores; --per-subtask adds its subtasks."""
    from emo_slice.cli.display import eval_output, progress_bars
    from emo_slice.eval.harness import evaluate_and_save, without_samples

    opts = dict(tasks=task, lm=lm, field_map=field_map, fmt=value(fmt), split=split, text_field=text_field)
    opts |= dict(lm_mode=value(lm_mode), encoding=value(encoding), shots=shots, seed=seed, limit=limit)
    opts |= dict(batch_size=batch_size, max_length=max_length, uncond=uncond, layerwise=layerwise)
    opts |= dict(
        dtype=value(dtype), device=device, pool=pool or None, gen_tasks=gen_task, max_new_tokens=max_new_tokens
    )
    with progress_bars() as bar:
        data = evaluate_and_save(
            model, against=against, out=out, predictions=predictions, overwrite=overwrite, progress=bar, **opts
        )
    if json_out:
        print_json(without_samples(data))
        return
    for line in eval_output(data, per_subtask, out):
        console.print(line)
