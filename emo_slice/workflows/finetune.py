"""The fine-tuning workflow: a model (a slice, typically) trained on task items, answer-only loss.

`resolve(spec)` gives the run's FinetuneConfig (with --resume: the run folder's own, only stop_after taken
from the spec), checked before any work; `run(config, announce)` trains and returns the run's summary (last
checkpoint, steps, final loss, the last held-out evaluation and the first one: before/after at a glance).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from emo_slice.errors import UsageError


@dataclass(frozen=True)
class FinetuneRun:
    """`emo-slice finetune MODEL --task T ... --out DIR`: what the command line gives (None: the default)."""

    model: str
    tasks: tuple[str, ...]
    out: str
    train: str | None = None
    split: str | None = None
    epochs: float | None = None
    steps: int | None = None
    batch_size: int | None = None
    micro_batch_size: int | None = None
    seq_len: int | None = None
    lr: float | None = None
    valid_share: float | None = None
    dtype: str | None = None
    eval_every: int | None = None
    save_every: int | None = None
    seed: int | None = None
    stop_after: int | None = None
    fsdp: bool = False
    resume: bool = False
    overwrite: bool = False
    settings: tuple[str, ...] = ()
    """key=value for any other FinetuneConfig field (warmup_ratio, weight_decay, eval_items, ...)."""


def resolve(spec: FinetuneRun):
    """The FinetuneConfig a run uses (defaults, then the spec's options, then --set), validated."""
    from emo_slice.train.config import _convert
    from emo_slice.train.finetune_config import FinetuneConfig, saved_config

    if spec.resume:
        cfg = saved_config(spec.out)
        cfg.resume, cfg.stop_after = True, spec.stop_after
        cfg.validate()
        return cfg
    given = {f.name: getattr(spec, f.name) for f in fields(spec) if f.name not in ("settings", "resume", "tasks")}
    cfg = FinetuneConfig(tasks=list(spec.tasks), **{k: v for k, v in given.items() if v is not None})
    hints = {f.name: f.type for f in fields(FinetuneConfig)}
    for item in spec.settings:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or key not in hints or key in ("model", "tasks", "out", "resume"):
            raise UsageError(
                f"--set {item!r}: expected key=value with key a fine-tuning setting, e.g. warmup_ratio=0.05"
            )
        setattr(cfg, key, _convert(text.strip(), _type(FinetuneConfig, key), key))
    cfg.validate()
    return cfg


def _type(cls, key: str):
    import typing

    return typing.get_type_hints(cls)[key]


def run(cfg, announce: Callable[[str], None] | None = None) -> dict | None:
    """Fine-tune; the summary on rank 0 (None on the other ranks)."""
    from emo_slice.train.finetune import FinetuneTrainer
    from emo_slice.workflows.pretrain import run_summary

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
    tasks = ", ".join(f"{x.name} ({x.kind}, {len(x.examples)} items)" for x in t.tasks)
    return (
        f"[bold]finetune[/] {t.cfg.model}: --train {t.cfg.train} ({len(t.trained)} parameter tensors learn); {tasks}; "
        f"{len(t.data)} training examples, {len(t.held)} held out"
        + (f", {t.dropped} too long" if t.dropped else "")
        + f"; {t.cfg.steps} steps of {t.cfg.batch_size}; {t.world} rank(s) on {t.device}"
    )


def _first_eval(out: Path) -> dict | None:
    import json

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
