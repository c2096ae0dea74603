"""How to evaluate (`EvalSettings`): everything `simple_evaluate` needs besides the models and the tasks.

A frozen spec whose field docs are the `--help` of `emo-slice eval` (and of the scoring options of sweep and
`extract --keep auto`): sweep and auto-K hand the same typed settings to every evaluation they run. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from emo_slice.specs import BATCH_SIZE, DEVICE, DTYPE, LAYERWISE, MAX_MEMORY, POOL, param

LM_MODES = ("rows", "packed")


@dataclass(frozen=True)
class EvalSettings:
    """How the items are read and scored: task fields and format, few-shot draw, batching, device and dtype."""

    field_map: str | None = param(
        None,
        "Rename task fields: context=F,choices=F,label=F,id=F (dotted paths like choices.text; labels as index or "
        "letter).",
        flag="--map",
    )
    fmt: str = param("auto", "Task shape (auto: detected).", flag="--task-format")
    split: str | None = param(None, "Dataset split (default: test, validation or train).")
    text_field: str = param("text", "Field holding the text in --lm JSONL records / datasets.", flag="--field")
    lm_mode: str = param("rows", "--lm documents one per row, or packed end to end.")
    shots: int = param(0, "Demonstrations drawn (seeded) from the task, put before each item, and not scored.")
    seed: int = param(0, "Random seed of the few-shot draw.")
    limit: int | None = param(None, "Score only the first N items of each task.")
    batch_size: int = param(16, BATCH_SIZE)
    max_length: int | None = param(
        None,
        "Longest row in tokens (default the model's max_position_embeddings); longer contexts are cut from the left.",
    )
    uncond: bool = param(False, "Also compute acc_uncond (choices scored after a bare 'Answer:').")
    layerwise: bool = param(False, LAYERWISE)
    max_memory: int | None = param(None, MAX_MEMORY)
    dtype: str | None = param(None, DTYPE)
    device: str = param("auto", DEVICE)
    pool: int | tuple[int, ...] | None = param(
        None,
        POOL + " Repeat to score each task once per pool, e.g. --pool 8 --pool 0 for with and without; results are "
        "named NAME@poolP. Multiple choice with a pool scores one row per choice (context + choice, one document).",
    )
    max_new_tokens: int | None = param(
        None, "New tokens generated at most per item of a generative task (default 256)."
    )
    encoding: str = param(
        "lm-eval",
        "Multiple choice: lm-eval encodes context + choice as one string and takes the tokens after the context's "
        "(lm-evaluation-harness's numbers); separate tokenises the two apart.",
    )
    per_choice_rows: bool = param(
        False, "One row per context + choice instead of one tree row per item (same numbers)."
    )
