"""Optimisation: AdamW with decay groups, the learning-rate schedule, gradient clipping.

AdamW as in the EMO pretraining spec: weight decay on matrices only (not on embeddings, norms or other
1-d parameters); linear warmup to the peak, then cosine down to `min_lr_ratio` of the peak at the end
of the schedule; the global gradient norm clipped to `grad_clip` (0 = off, the norm is still reported).
"""

from __future__ import annotations

import math

import torch

from emo_slice.train.config import TrainConfig


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to cfg.lr, then cosine down to cfg.min_lr_ratio * cfg.lr at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `model`'s parameters that learn (requires_grad; after any DDP / FSDP2 wrapping: they may be
    DTensors), two groups: matrices with cfg.weight_decay; embeddings and parameters of fewer than 2
    dimensions without. A frozen parameter is never given to the optimizer (an empty group is left out)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    no_decay = {n for n, p in params.items() if p.ndim < 2 or "embed_tokens" in n}
    groups = [
        {"params": [p for n, p in params.items() if n not in no_decay], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params.items() if n in no_decay], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
