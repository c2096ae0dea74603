"""Automatic K: the smallest number of experts per layer that keeps what the user asks for.

- `by_mass(target_mass)`, free, from the profile alone: the smallest K whose kept experts hold at least
  that share of the router probability mass (the mean-prob scores) in EVERY layer (and, for a composed
  slice, for every domain). Every K from the smallest is tried: no model runs.
- `by_score(target)`: the smallest K whose slice keeps at least `target` of the full model's score on
  held-out items (the share `eval.metrics.compare` calls kept; on several tasks, on every one). Found by
  bisection over K between the smallest valid K and all the experts, ASSUMING the share kept does not fall
  as K grows (monotone); K = all experts is the full model itself and is not evaluated. Each tried K is
  extracted to a temporary folder and scored on the same items as the full model, which is scored once.

Both return (K, record); the record (what was tried, the assumption, the split) goes into slice.json.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from emo_slice.errors import UsageError
from emo_slice.eval.settings import EvalSettings
from emo_slice.specs import param
from emo_slice.workflows.scoring import headline_metrics, score_full, score_slice

MONOTONE = (
    "bisection over K assumes the share of the full score kept does not fall as K grows; K = all experts is "
    "the full model and is not evaluated"
)


def k_range(ckpt) -> tuple[int, int]:
    cfg = ckpt.config  # the smallest MoE layer bounds K (a dense layer has 0 experts)
    return cfg.num_shared_experts + 1, min(E for l in range(cfg.num_hidden_layers) if (E := cfg.experts_in_layer(l)))


def check_target(value: float | None, name: str) -> None:
    """A share of the full model's (target, target_mass) in (0, 1]."""
    if value is not None and not 0 < value <= 1:
        raise UsageError(f"`{name}={value}` is a share of the full model's; choose a number in (0, 1], e.g. 0.99")


def mass_held(profiles: list[dict], kept: list[list[int]]) -> list[float]:
    """Per layer: the smallest (over profiles) share of the mean router probability held by the kept routed ids."""
    out = []
    for l, ids in enumerate(kept):
        shares = []
        for p in profiles:
            s = p["layers"][l]["scores"]["mean-prob"]
            total = sum(s)
            shares.append(sum(s[e] for e in ids if e < len(s)) / total if total > 0 else 1.0)
        out.append(min(shares))
    return out


def by_mass(ckpt, planner: Callable, profiles: list[dict], target_mass: float) -> tuple[int, dict]:
    """The smallest K whose plan holds target_mass of the routing mass in every layer."""
    check_target(target_mass, "target_mass")
    lo, hi = k_range(ckpt)
    tried = []
    for k in range(lo, hi + 1):
        held = mass_held(profiles, planner(k).kept)
        worst = min(range(len(held)), key=lambda l: (held[l], l))
        tried.append({"keep": k, "mass_held_min": held[worst], "worst_layer": worst})
        if held[worst] >= target_mass:
            break
    return k, {
        "rule": "target-mass",
        "target_mass": target_mass,
        "mass": "mean router probability (the profile's mean-prob scores), smallest over layers and domains",
        "search": "every K from the smallest up",
        "tried": tried,
        "chosen": k,
    }


def by_score(ckpt, score: Callable[[int], tuple[float, dict]], target: float) -> tuple[int, dict]:
    """The smallest K with score(K)[0] >= target, by bisection (see MONOTONE); score(K) -> (share kept, details)."""
    check_target(target, "target")
    lo, hi = k_range(ckpt)
    tried = []
    while lo < hi:
        mid = (lo + hi) // 2
        share, details = score(mid)
        ok = share is not None and share >= target
        tried.append({"step": len(tried) + 1, "keep": mid, "kept": share, "meets_target": ok, **details})
        if ok:
            hi = mid
        else:
            lo = mid + 1
    return hi, {
        "rule": "target",
        "target": target,
        "search": "bisection",
        "assumption": MONOTONE,
        "tried": sorted(tried, key=lambda r: r["keep"]),
        "chosen": hi,
    }


@dataclass(frozen=True)
class AutoKSpec:
    """How `extract --keep auto` picks K: a score target on held-out items, or a routing-mass target."""

    target: float | None = param(None, "With --keep auto: smallest K keeping this share of the full score.")
    target_mass: float | None = param(
        None, "With --keep auto: smallest K holding this share of the routing mass per layer."
    )
    tasks: tuple[str, ...] = param(
        (), "Task scored with --keep auto --target (calibration items held out). Repeatable.", flag="--task"
    )
    lm: tuple[str, ...] = param((), "Text scored by bits per byte with --keep auto --target. Repeatable.")
    metric: tuple[str, ...] = param(
        (), "Metric(s) the --target share is kept on (default: acc_per_char / bits_per_byte)."
    )
    scoring: EvalSettings = param(EvalSettings(), "How the full model and each tried slice are scored.")


def choose(ckpt, planner, profiles, spec: AutoKSpec) -> tuple[int, dict]:
    """K for `extract --keep auto`: by_mass from the profiles, or by_score on held-out items of spec.tasks / lm."""
    if spec.target_mass is not None:
        return by_mass(ckpt, planner, profiles, spec.target_mass)
    check_target(spec.target, "target")
    calibrations = [p.get("inputs") for p in profiles]
    full, split, scored = score_full(ckpt, spec.tasks, spec.lm, calibrations, spec.scoring)
    shown = headline_metrics(full["results"], list(spec.metric))
    if not any(shown.values()):
        raise UsageError(f"`metric` {', '.join(spec.metric)}: no task has it; choose one the tasks report")
    with tempfile.TemporaryDirectory(prefix="emo-slice-auto-") as tmp:

        def score(k: int) -> tuple[float | None, dict]:
            row = score_slice(ckpt, planner(k), Path(tmp) / f"k{k}", full, (scored, list(spec.lm), spec.scoring))
            kept = {f"{t}:{m}": row["kept"][t].get(m) for t, ms in shown.items() for m in ms}
            share = None if None in kept.values() else min(kept.values())
            return share, {"bytes": row["bytes"], "share_of_bytes": row["share_of_bytes"], "kept_by_metric": kept}

        k, record = by_score(ckpt, score, spec.target)
    record.update(
        metrics={t: ms for t, ms in shown.items() if ms},
        full={t: {m: full["results"][t][m] for m in ms} for t, ms in shown.items()},
        tasks=list(spec.tasks),
        lm=list(spec.lm),
        held_out=split,
        calibration=calibrations,
    )
    return k, record
