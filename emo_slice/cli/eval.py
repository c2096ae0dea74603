"""`emo-slice eval`: score a model (and, with --against, the full model) on the same items, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.options import (
    ComputeDType,
    Json,
    LMMode,
    ModelArg,
    Overwrite,
    Split,
    TaskFormat,
    out_option,
    seed_option,
    value,
)

EPILOG = """Examples:

  emo-slice eval ./slice --against ./full --task tasks/code.jsonl --task tasks/docs.jsonl

  emo-slice eval ./slice --against ./full --task hf:allenai/ai2_arc:ARC-Easy --shots 5 --limit 200

  emo-slice eval ./model --task arc.jsonl --map context=question,choices=choices.text,label=answerKey

  emo-slice eval ./slice --against ./full --lm valid.jsonl --lm-mode packed --json --out results.json
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
    "Multiple-choice task: a JSONL file, a saved dataset folder, or hf:NAME[:CONFIG] "
    "from the Hugging Face cache. Repeat for several.",
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
Layerwise = _opt("--layerwise", bool, "Hold one layer in memory at a time (checkpoints larger than memory).")
ResultsOut = Annotated[Optional[Path], out_option("Write the results here (JSON, lm-evaluation-harness shape).")]
Predictions = _opt("--predictions", Optional[Path], "Write per-item predictions here (JSONL).")


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
    shots: EvalShots = 0,
    limit: Limit = None,
    seed: Annotated[int, seed_option("the few-shot draw")] = 0,
    batch_size: BatchSize = 16,
    max_length: EvalMaxLength = None,
    uncond: Uncond = False,
    layerwise: Layerwise = False,
    dtype: ComputeDType = None,
    json_out: Json = False,
    out: ResultsOut = None,
    predictions: Predictions = None,
    overwrite: Overwrite = False,
):
    """Score a model (and, with --against, a second one on the same items) on tasks and text.

    Multiple-choice tasks are scored by ranking classification (acc_raw, acc_per_token, acc_per_char,
    acc_per_byte, acc_uncond, bits per byte of the gold), text by perplexity and bits per byte. With
    --against, a second model is scored on the very same items and both are shown side by side."""
    from emo_slice.artifacts import locked
    from emo_slice.cli.display import eval_tables, progress_bars
    from emo_slice.eval.harness import check_result_paths, save_results, simple_evaluate, without_samples

    check_result_paths([model, against], out=out, predictions=predictions, overwrite=overwrite)
    with locked((out, "--out"), (predictions, "--predictions")), progress_bars() as bar:
        data = simple_evaluate(
            model,
            against=against,
            tasks=task,
            lm=lm,
            field_map=field_map,
            fmt=value(fmt),
            split=split,
            text_field=text_field,
            lm_mode=value(lm_mode),
            shots=shots,
            seed=seed,
            limit=limit,
            batch_size=batch_size,
            max_length=max_length,
            uncond=uncond,
            layerwise=layerwise,
            dtype=value(dtype),
            log_samples=predictions is not None,
            progress=bar,
        )
        save_results(data, out=out, predictions=predictions)
    if json_out:
        print_json(without_samples(data))
        return
    for table in eval_tables(data):
        console.print(table)
    tok = data["models"]["model"]["tokenizer"]
    if tok.startswith("byte-level"):
        console.print(f"tokenizer: {tok}")
    if out:
        console.print(f"results written to {out}")
