"""`emo-slice finetune`: a model (a slice, typically) trained on task items, answer-only loss.

- `configure(spec)`: the run's FinetuneConfig (defaults, then the options given, then `--set key=value`; with
  --resume the run folder's own, only stop_after taken from the spec), every check made before anything is
  written (the paths, the fields);
- `run(spec, announce)`: configure and train; the summary on rank 0 (last checkpoint, steps, final loss, the
  first and the last held-out evaluation: before/after at a glance);
- `summary_line(summary)`: that summary for people.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from emo_slice.errors import UsageError
from emo_slice.specs import INPUT, MODEL, OUTPUT, OVERWRITE, Spec, param
from emo_slice.workflows.paths import check_spec_paths, local_path

# the FinetuneConfig fields `emo-slice finetune` sets with flags of their own (the rest: --set key=value)
OPTION_FIELDS = (
    "train",
    "split",
    "epochs",
    "steps",
    "batch_size",
    "lr",
    "valid_share",
    "dtype",
    "eval_every",
    "save_every",
    "seed",
    "stop_after",
)
NOT_SETTABLE = ("model", "tasks", "out", "resume", "overwrite", "fsdp")


@dataclass(frozen=True)
class FinetuneSpec(Spec):
    """A fine-tuning run: the model, the tasks, the run folder, the options given and the `--set` overrides
    (FinetuneConfig's field docs say what each option does)."""

    model: str = param(doc="The model to fine-tune (a slice, typically). " + MODEL, flag="MODEL", role=INPUT)
    out: str = param(doc="Run folder: step-000000 (the weights before), checkpoints, final, log.jsonl.", role=OUTPUT)
    tasks: tuple[str, ...] = param(
        (),
        "Task trained on (repeatable): a built-in benchmark (its train split: context + gold answer), gsm8k "
        "(question + chain of thought), a task file or dataset, a JSONL of prompt/completion pairs, or a JSONL of "
        "chat 'messages' (the model's chat template). Loss on the answer tokens only, EOS appended.",
        flag="--task",
    )
    resume: bool = param(False, "Continue the run in --out from its latest checkpoint.")
    overwrite: bool = param(False, OVERWRITE)
    fsdp: bool = param(False, "Under torchrun: shard with FSDP2 fully_shard instead of DDP.")
    options: dict = param({}, "FinetuneConfig fields given by their own flags (None: not given).")
    settings: tuple[str, ...] = param(
        (),
        "key=value for any other fine-tuning setting (warmup_ratio, weight_decay, micro_batch_size, seq_len, "
        "eval_items, ...). Repeatable.",
        flag="--set",
    )

    def inputs(self) -> list[tuple[str, str]]:
        pairs = [("MODEL", self.model)] + [("--task", local_path(t)) for t in self.tasks]
        return [(f, p) for f, p in pairs if p]


def configure(spec: FinetuneSpec):
    """The FinetuneConfig the run uses, checked (paths, fields) before anything is written."""
    from emo_slice.train.config import (
        _convert as convert_setting,
    )  # torch-free --help: torch loads when the command runs
    from emo_slice.train.finetune_config import FinetuneConfig, saved_config

    check_spec_paths(spec)
    if spec.resume:
        cfg = saved_config(spec.out)
        cfg.resume, cfg.stop_after = True, spec.options.get("stop_after")
        cfg.validate()
        return cfg
    given = {k: v for k, v in spec.options.items() if v is not None}
    cfg = FinetuneConfig(model=spec.model, tasks=list(spec.tasks), out=spec.out, overwrite=spec.overwrite, **given)
    cfg.fsdp = spec.fsdp
    hints = typing.get_type_hints(FinetuneConfig)
    for item in spec.settings:
        key, eq, text = (x.strip() for x in item.partition("="))
        if not eq or key not in hints or key in NOT_SETTABLE:
            raise UsageError(
                f"--set {item!r}: expected key=value with key a fine-tuning setting, e.g. warmup_ratio=0.05"
            )
        setattr(cfg, key, convert_setting(text, hints[key], key))
    cfg.validate()
    return cfg


def run(spec: FinetuneSpec, announce: Callable[[str], None] | None = None) -> dict | None:
    """Fine-tune; the summary on rank 0 (None on the other ranks)."""
    from emo_slice.train.finetune import FinetuneTrainer  # torch-free --help: torch loads when the command runs
    from emo_slice.workflows.pretrain import run_summary

    cfg = configure(spec)
    trainer = FinetuneTrainer(cfg)
    if trainer.rank == 0 and announce is not None:
        announce(banner(trainer))
    path = trainer.run()
    if trainer.rank != 0:
        return None
    summary = run_summary(cfg.out, path, trainer.world)
    summary["before"] = _first_eval(Path(cfg.out))
    return summary


def banner(t) -> str:
    """What a run trains, in one line with rich markup."""
    tasks = ", ".join(f"{x.name} ({x.kind}, {len(x.examples)} items)" for x in t.tasks)
    return (
        f"[bold]finetune[/] {t.cfg.model}: --train {t.cfg.train} ({len(t.trained)} parameter tensors learn); {tasks}; "
        f"{len(t.data)} training examples, {len(t.held)} held out"
        + (f", {t.dropped} too long" if t.dropped else "")
        + f"; {t.cfg.steps} steps of {t.cfg.batch_size}; {t.world} rank(s) on {t.device}"
    )


def _first_eval(out: Path) -> dict | None:
    log = out / "log.jsonl"
    for line in log.read_text().splitlines() if log.exists() else []:
        rec = json.loads(line)
        if rec.get("kind") == "eval":
            return rec
    return None


def summary_line(summary: dict) -> str:
    """One line for people: steps, training loss, held-out loss and accuracy before -> after, checkpoint."""
    before, after = summary.get("before") or {}, summary.get("eval") or {}
    parts = [f"done: step {summary['steps']}"]
    if summary.get("final_loss") is not None:
        parts.append(f"train loss {summary['final_loss']:.4f}")
    if before.get("val_loss") is not None and after.get("val_loss") is not None:
        parts.append(f"held-out loss {before['val_loss']:.4f} -> {after['val_loss']:.4f}")
    for task, acc in (after.get("val_acc") or {}).items():
        parts.append(f"{task} accuracy {before.get('val_acc', {}).get(task, float('nan')):.3f} -> {acc:.3f}")
    return ", ".join(parts) + f"; checkpoint {summary['checkpoint']}"
