"""Task specifications for `emo-slice eval`: where items come from and how fields map.

A task SPEC is a JSONL file, a `Dataset.save_to_disk` folder or data file, or `hf:NAME[:CONFIG]`
(a Hugging Face dataset in the local cache). Fields are mapped with `--map context=F,choices=F,label=F`
(dotted paths reach into nested fields: ARC's `choices.text`). Without `--map` the shape is detected
from the first record:

- plain: `context`, `choices`, `label` (index or letter), as emo-slice's own task files;
- arc: `question`, `choices.text` (with `choices.label` letters), `answerKey`; context
  "Question: {question}\\nAnswer:" and each choice after a space (lm-evaluation-harness's arc_easy);
- hellaswag: `ctx`, `endings`, `label` (and `activity_label`); context "{activity_label}: {ctx}" and
  each ending after a space, with HellaSwag's "[title]" clean-up (lm-evaluation-harness's hellaswag).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from emo_slice.data.benchmarks import check_variant, is_benchmark, load_benchmark
from emo_slice.data.benchmarks.formats import hellaswag_clean
from emo_slice.data.sources import MCItem, Task, fewshot_prompt, load_mc_task, read_records, split_fewshot
from emo_slice.errors import DataError, UsageError

FORMATS = ("auto", "plain", "arc", "hellaswag")
MAP_KEYS = ("context", "choices", "label", "id")


def parse_map(text: str | None) -> dict[str, str]:
    """'context=question,choices=choices.text,label=answerKey' -> dict."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value or key not in MAP_KEYS:
            raise UsageError(
                f"--map {text!r}: each entry is KEY=FIELD with KEY one of {', '.join(MAP_KEYS)} "
                "(e.g. --map context=question,choices=choices.text,label=answerKey)"
            )
        out[key] = value
    return out


def source_of(spec: str) -> str:
    """The path or dataset name `data.read_records` understands."""
    if spec.startswith("hf:"):
        return spec[3:]
    p = Path(spec).expanduser()
    if not p.exists():
        raise DataError(
            f"--task {spec}: no such file or folder; give a JSONL file, a saved dataset folder, "
            "or hf:NAME for a dataset in the Hugging Face cache"
        )
    return str(p)


def task_name(spec: str) -> str:
    if spec.startswith("hf:"):
        return spec[3:].replace("/", "_").replace(":", "_")
    p = Path(spec)
    return p.stem if p.is_file() else p.name


def detect_format(record: dict) -> str:
    choices = record.get("choices")
    if "question" in record and isinstance(choices, dict) and "text" in choices and "answerKey" in record:
        return "arc"
    if "ctx" in record and "endings" in record:
        return "hellaswag"
    return "plain"


def load_items(
    spec: str, fields: dict[str, str] | None = None, fmt: str = "auto", split: str | None = None
) -> tuple[list[MCItem], str]:
    """All items of a task source, and the format used."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is unknown; choose one of {', '.join(FORMATS)}")
    src = source_of(spec)
    if fmt == "auto":
        fmt = "plain" if fields else detect_format(read_records(src, split, "--task")[0])
    if fmt == "arc":
        f = {"context": "question", "choices": "choices.text", "label": "answerKey", **(fields or {})}
        items = load_mc_task(src, f, split, None if fields and "context" in fields else "Question: {question}\nAnswer:")
        return [replace(it, target_delimiter=" ") for it in items], fmt  # scored: " " + choice
    if fmt == "hellaswag":
        f = {"context": "ctx", "choices": "endings", "label": "label", "id": "ind", **(fields or {})}
        first = read_records(src, split, "--task")[0]
        template = "{activity_label}: {ctx}" if "activity_label" in first and "context" not in (fields or {}) else None
        items = load_mc_task(src, f, split, template)
        return [
            replace(
                it,
                context=hellaswag_clean(it.context),
                choices=[hellaswag_clean(c) for c in it.choices],
                target_delimiter=" ",
            )
            for it in items
        ], fmt
    return load_mc_task(src, fields, split), fmt


def load_task(
    spec: str,
    fields: dict[str, str] | None = None,
    fmt: str = "auto",
    split: str | None = None,
    shots: int = 0,
    seed: int = 0,
    limit: int | None = None,
    separator: str = "\n\n",
) -> Task:
    """A task ready to score: demonstrations drawn (seeded) and removed, then the first `limit` items. A built-in
    benchmark name (`emo_slice.data.benchmarks`) gives that benchmark's task (groups: `load_tasks`)."""
    if is_benchmark(spec):
        tasks = load_tasks(spec, fields, fmt, split, shots, seed, limit)
        if len(tasks) != 1:
            raise UsageError(f"{spec} is a group of {len(tasks)} tasks; load it with load_tasks")
        return tasks[0]
    items, used = load_items(spec, fields, fmt, split)
    return task_of_items(spec, used, items, shots, seed, limit, separator)


def task_of_items(
    spec: str, fmt: str, items: list[MCItem], shots: int = 0, seed: int = 0, limit: int | None = None, separator="\n\n"
) -> Task:
    """The task of a list of items (of source `spec`, in format `fmt`): demonstrations drawn (seeded) from them
    and removed, then the first `limit` items (what load_task does after reading; sweep and auto-K pass the
    items held out of a calibration)."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit} must be at least 1")
    demos, rest = split_fewshot(items, shots, seed) if shots else ([], items)
    if limit is not None:
        rest = rest[:limit]
    return Task(task_name(spec), spec, fmt, rest, demos, fewshot_prompt(demos, separator), len(items))


def load_tasks(
    spec: str,
    fields: dict[str, str] | None = None,
    fmt: str = "auto",
    split: str | None = None,
    shots: int = 0,
    seed: int = 0,
    limit: int | None = None,
) -> list[Task]:
    """The tasks of one --task spec: a built-in benchmark (NAME or NAME=FOLDER; a group gives its members, see
    `emo_slice.data.benchmarks`; few-shot examples from its few-shot split) or one task file / dataset."""
    if not is_benchmark(spec):
        check_variant(spec)
        return [load_task(spec, fields, fmt, split, shots, seed, limit)]
    if fields or fmt != "auto":
        raise UsageError(
            f"--task {spec} is a built-in benchmark with lm-eval's prompt format; --map and --format apply to "
            "task files only (for OLMES's multiple-choice format use NAME:mc, e.g. arc_easy:mc)"
        )

    return load_benchmark(spec, shots=shots, seed=seed, limit=limit, split=split)
