"""FinetuneConfig: every setting of a supervised fine-tuning run, typed and documented, checked before any work.

Defaults follow AllenAI's EMO fine-tuning (`src/hf_training/finetune.py` and the launchers in
`scripts/selective_hf/`): every parameter trained (`all`), learning rate 5e-5 with 10 % warmup, no weight
decay, gradient clipping at 1, AdamW betas (0.9, 0.999), 3 epochs of the task's train split, a global batch
of 16 examples. The schedule decays to `min_lr_ratio` of the peak on the project's cosine (EMO's Trainer
decays linearly to 0). `steps` and `warmup_steps` are resolved from the data (`resolve_schedule`) and saved
with the run, so a resumed run keeps them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

from emo_slice.errors import DataError, UsageError
from emo_slice.train.config_checks import check_fields
from emo_slice.train.freezing import PARTS

CONFIG_FILE = "train_config.json"


@dataclass
class FinetuneConfig:
    """A fine-tuning run: the model, the tasks, what learns, the optimisation and the run folder."""

    model: str = ""
    """The checkpoint to fine-tune (a slice, or any EMO model): its architecture, weights and tokenizer."""
    tasks: list = dc_field(default_factory=list)
    """--task specs: built-in benchmarks (their train split), task files, datasets, prompt/completion or chat JSONL."""
    out: str = ""
    """Run folder: checkpoints (step-000000 before training, then step-NNNNNN and final), log.jsonl."""
    split: str = "train"
    """Dataset split to train on: a benchmark's or dataset's (never the one it is scored on); default train."""
    train: str = "all"
    """What learns: routed, routed+shared, routed+shared+router or all (EMO's default)."""
    valid_share: float = 0.1
    """Share of the training items held out for --eval-every (0: none)."""
    eval_items: int = 200
    """Held-out items scored per evaluation, at most."""
    epochs: float = 3.0
    """Passes over the training items (sets steps unless --steps is given)."""
    steps: int | None = None
    """Optimizer steps of the schedule (default: from --epochs)."""
    warmup_ratio: float = 0.1
    """Share of the steps spent warming up (sets warmup_steps)."""
    warmup_steps: int | None = None
    """Linear warmup steps (default: warmup_ratio of the steps)."""
    batch_size: int = 16
    """Rows per batch: here examples per optimizer step (the global batch), summed over ranks and micro-batches."""
    micro_batch_size: int | None = None
    """Examples per forward on one rank (default: batch_size / ranks); the rest is accumulation."""
    seq_len: int | None = None
    """Longest example in tokens (default: the model's context); longer prompts lose their start."""
    lr: float = 5e-5
    """Peak learning rate (the first warmup_ratio of the steps warm up)."""
    min_lr_ratio: float = 0.0
    """The schedule ends at this share of the peak."""
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    """AdamW weight decay (matrices only)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    dtype: str = "float32"
    """Compute dtype: float32, or bfloat16 (bf16 compute over fp32 master weights; how: mixed_precision)."""
    mixed_precision: str = "step"
    """With bfloat16: step (weights cast once per step) or autocast."""
    seed: int = 0
    """Random seed of the held-out draw and the example order (nothing else is random: no dropout)."""
    fsdp: bool = False
    """Shard with FSDP2 under torchrun instead of DDP."""
    device: str = "auto"
    """auto (cuda if available), cpu or cuda."""
    compile: bool = False
    """torch.compile each decoder layer's attention and norms."""
    eval_every: int = 0
    """Evaluate every N steps: here score the held-out items (0 = before and after training only)."""
    save_every: int = 0
    """Checkpoint every N steps (0 = step-000000 and the end only)."""
    keep_last: int = 2
    """Periodic checkpoints kept (step-000000 and final are always kept)."""
    stop_after: int | None = None
    """Stop (with a checkpoint) after this step without changing the schedule; resume with --resume."""
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    log_every: int = 1
    remote_code: str | None = None  # the checkpoint writer's field; fine-tuning copies the model's own files

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        check_fields(self)
        if self.train not in PARTS:
            raise UsageError(f"--train {self.train!r} is unknown; choose one of {', '.join(PARTS)}")
        if self.dtype not in ("float32", "bfloat16"):
            raise UsageError(f"--dtype {self.dtype!r} is not supported for training; choose float32 or bfloat16")
        if self.mixed_precision not in ("step", "autocast"):
            raise UsageError(f"--set mixed_precision={self.mixed_precision!r} is unknown; choose step or autocast")
        if not 0 <= self.valid_share < 1 or not 0 <= self.warmup_ratio < 1:
            raise UsageError("--valid-share and warmup_ratio must be at least 0 and below 1")
        if not (self.epochs > 0 and math.isfinite(self.epochs)) or self.eval_items < 1:
            raise UsageError("--epochs must be more than 0 and eval_items at least 1")
        if not self.tasks:
            raise UsageError("give at least one --task to fine-tune on")

    def resolve_schedule(self, n_examples: int) -> None:
        """steps (from epochs) and warmup_steps (from warmup_ratio), unless given."""
        if self.steps is None:
            self.steps = max(1, math.ceil(self.epochs * n_examples / self.batch_size))
        if self.warmup_steps is None:
            self.warmup_steps = math.ceil(self.warmup_ratio * self.steps)


def saved_config(out: str | Path) -> FinetuneConfig:
    """The configuration a run folder was started with, every field checked (one line if it is damaged)."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"--resume: {out} holds no {CONFIG_FILE}, so no run to continue; start without --resume")
    try:
        cfg = FinetuneConfig(**json.loads(path.read_text(encoding="utf-8")))
        check_fields(cfg)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, UsageError) as e:
        why = str(e).replace("FinetuneConfig.__init__() ", "")[:160]
        raise DataError(f"{path} is not a fine-tuning configuration emo-slice wrote ({why}); start afresh") from None
    return cfg
