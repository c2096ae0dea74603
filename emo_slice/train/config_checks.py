"""The checks of every TrainConfig field: its type and its range, refused (UsageError) with the flag, or the
`--set key=value`, that set it, so that nothing is silently clamped or ignored.

`check_fields(cfg)` reads the fields and their types from the configuration's own dataclass.
"""

from __future__ import annotations

import math
import typing
from dataclasses import fields

from emo_slice.errors import UsageError

# the command-line flag of a field (others are set with --set NAME=VALUE)
FLAGS = {
    "steps": "--steps",
    "batch_size": "--batch-size",
    "micro_batch_size": "--micro-batch-size",
    "seq_len": "--seq-len",
    "lr": "--lr",
    "vocab_size": "--vocab-size",
    "save_every": "--save-every",
    "eval_every": "--eval-every",
    "stop_after": "--stop-after",
    "seed": "--seed",
}
# field -> the values it may take, as an interval: "[1," at least 1, "(0," more than 0, ",1)" below 1, ",1]" at most 1
RANGES = {
    **dict.fromkeys(
        (
            "seq_len",
            "batch_size",
            "steps",
            "micro_batch_size",
            "stop_after",
            "eval_batches",
            "log_every",
            "keep_last",
            "vocab_size",
            "pool_min",
            "pool_max",
        ),
        "[1,",
    ),
    **dict.fromkeys(
        (
            "save_every",
            "data_workers",
            "eval_every",
            "warmup_steps",
            "eval_pool",
            "weight_decay",
            "grad_clip",
            "lb_weight",
            "z_weight",
            "lm_z_weight",
        ),
        "[0,",
    ),
    **dict.fromkeys(("lr", "adam_eps", "init_std", "peak_tflops"), "(0,"),
    **dict.fromkeys(("beta1", "beta2", "valid_share"), "[0,1)"),
    "min_lr_ratio": "[0,1]",
}


def _setting(name: str, v) -> str:
    """How the user set a field: its flag (with the --set name, which sets it too), or --set."""
    return f"{FLAGS[name]} {v} (setting {name})" if name in FLAGS else f"--set {name}={v}"


def _type_ok(v, typ) -> bool:
    args = typing.get_args(typ)
    if args:  # X | None
        return any(_type_ok(v, a) for a in args)
    if typ is type(None):
        return v is None
    if typ is bool:
        return isinstance(v, bool)
    if typ is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if typ is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, typ if isinstance(typ, type) else object)


def _range_error(v, interval: str) -> str | None:
    lo, hi = interval[1:-1].split(",") if interval[-1] in ")]" else (interval[1:-1], "")
    lo_f = float(lo)
    if v < lo_f or (v == lo_f and interval[0] == "("):
        return f"must be {'at least' if interval[0] == '[' else 'more than'} {lo}"
    if hi and (v > float(hi) or (v == float(hi) and interval[-1] == ")")):
        return f"must be {'at most' if interval[-1] == ']' else 'below'} {hi}"
    return None


def check_fields(cfg) -> None:
    """Every field of a TrainConfig of its type and in its range (UsageError naming the flag, or --set, that
    sets it)."""
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        v, typ = getattr(cfg, f.name), hints[f.name]
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"{_setting(f.name, v)} must be a finite number")
        if not _type_ok(v, typ):
            want = " or ".join(getattr(a, "__name__", str(a)) for a in (typing.get_args(typ) or [typ]))
            raise UsageError(f"{_setting(f.name, repr(v))}: expected {want.replace('NoneType', 'none')}")
        why = _range_error(v, RANGES[f.name]) if f.name in RANGES and v is not None else None
        if why:
            raise UsageError(f"{_setting(f.name, v)} {why}")
