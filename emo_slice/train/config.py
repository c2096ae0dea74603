"""TrainConfig: everything `emo-slice pretrain` needs, typed, with presets and `key=value` overrides.

A preset (tiny / small / emo-1b14b) names an architecture (emo_slice.model.presets) and training
hyper-parameters. Any TrainConfig field, and any EmoConfig field (architecture, Hugging Face key
names, e.g. hidden_size=256), can be overridden with `--set key=value`.

This file resolves presets and overrides (`train_preset`, `apply_overrides`); the fields and what follows
from them are in train/config_fields.py, their type and range checks in train/config_checks.py (all
importable from here).
"""

from __future__ import annotations

import typing
from dataclasses import fields

from emo_slice.errors import UsageError
from emo_slice.model.config import EmoConfig
from emo_slice.safejson import parse_json
from emo_slice.train.config_checks import FLAGS, RANGES, check_fields
from emo_slice.train.config_fields import TrainConfig

__all__ = [
    "TrainConfig",
    "TRAIN_PRESETS",
    "FLAGS",
    "RANGES",
    "check_fields",
    "check_run",
    "train_preset",
    "apply_overrides",
]


TRAIN_PRESETS: dict[str, dict] = {
    # tests: byte tokenizer, a few dozen steps in seconds
    "tiny": dict(
        preset="tiny",
        tokenizer="bytes",
        seq_len=64,
        batch_size=8,
        steps=40,
        lr=3e-3,
        warmup_steps=4,
        eval_every=20,
        eval_batches=2,
        save_every=20,
    ),
    # a CPU demo of a few minutes: BPE vocab 4096, 32 routed experts
    "small": dict(
        preset="small",
        seq_len=128,
        batch_size=16,
        steps=300,
        lr=3e-3,
        warmup_steps=30,
        eval_every=100,
        eval_batches=4,
        save_every=100,
    ),
    # AllenAI's release run (1B active / 14B total): GPU clusters only
    "emo-1b14b": dict(
        preset="emo-1b14b",
        tokenizer="auto",
        seq_len=4096,
        batch_size=1024,
        micro_batch_size=4,
        steps=238_419,
        lr=4e-3,
        warmup_steps=2000,
        dtype="bfloat16",
        fsdp=True,
        eval_every=1000,
        eval_batches=16,
        save_every=1000,
        eval_pool=32,
        pool_min=8,
        pool_max=128,
    ),
}


def train_preset(name: str, **overrides) -> TrainConfig:
    """TrainConfig of a named preset with field overrides."""
    if name not in TRAIN_PRESETS:
        raise UsageError(f"--preset {name!r} is unknown; choose one of {', '.join(TRAIN_PRESETS)}")
    cfg = TrainConfig(**TRAIN_PRESETS[name])
    return apply_overrides(cfg, overrides)


def _convert(text, typ, key: str):
    if not isinstance(text, str):
        return text
    origin = typing.get_origin(typ)
    args = [a for a in typing.get_args(typ) if a is not type(None)] if origin else [typ]
    if text.lower() in ("none", "null") and type(None) in typing.get_args(typ):
        return None
    t = args[0]
    try:
        if t is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if t in (int, float, str):
            return t(float(text)) if t is int and "e" in text.lower() else t(text)
        return parse_json(text)
    except ValueError:
        raise UsageError(f"--set {key}={text!r}: expected {getattr(t, '__name__', t)}") from None


def apply_overrides(cfg: TrainConfig, overrides: dict | list[str]) -> TrainConfig:
    """Set TrainConfig fields or (for EmoConfig keys) architecture overrides from a dict or `key=value` list."""
    if isinstance(overrides, list):
        d = {}
        for item in overrides:
            if "=" not in item:
                raise UsageError(f"--set {item!r} must look like key=value, e.g. --set lr=1e-3")
            k, v = item.split("=", 1)
            d[k.strip()] = v.strip()
        overrides = d
    hints = typing.get_type_hints(TrainConfig)
    emo_hints = typing.get_type_hints(EmoConfig)
    train_fields = {f.name for f in fields(TrainConfig)}
    for k, v in overrides.items():
        if k in train_fields and k != "model":
            setattr(cfg, k, _convert(v, hints[k], k))
        elif k in emo_hints and k not in ("extra", "model_type"):
            cfg.model = {**cfg.model, k: _convert(v, emo_hints[k], k)}
        elif k == "model" and isinstance(v, dict):
            cfg.model = {**cfg.model, **v}
        else:
            raise UsageError(
                f"--set {k}: unknown setting; choose a TrainConfig field ({', '.join(sorted(train_fields))}) "
                "or an EmoConfig key such as hidden_size"
            )
    return cfg


def check_run(cfg: TrainConfig, world: int) -> int:
    """Refuse (UsageError) a configuration that cannot run on `world` ranks, without touching the disk: the
    fields, the architecture, the pools and the micro-batch split. Returns the micro-batch (rows per forward)."""
    cfg.validate()
    arch = cfg.model_config()
    if cfg.router == "emo":
        cfg.pool_range(arch)
    cfg.eval_pool_size(arch)
    mb = cfg.micro_batch_size or max(1, cfg.batch_size // world)
    if cfg.batch_size % (mb * world):
        raise UsageError(
            f"--batch-size {cfg.batch_size} is not a multiple of micro-batch {mb} x {world} "
            f"rank(s); choose a --micro-batch-size that divides {max(1, cfg.batch_size // world)}"
        )
    return mb
