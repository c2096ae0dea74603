"""The rank step: which experts each layer keeps, from scores, by hand, or at random (`SlicePlan`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from emo_slice.errors import UsageError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.model.config import EmoConfig
from emo_slice.model.modeling import DecoderLayer

METHODS = ("mean-prob", "frequency", "reap", "easy-ep", "random")


SCORED = ("mean-prob", "frequency", "reap", "easy-ep")


def parse_keep(text: str | int, n_experts: int, n_shared: int, flag: str = "--keep") -> int:
    """'16' or '25%' -> experts kept per layer counting the shared ones; validated."""
    s = str(text).strip()
    try:
        if s.endswith("%"):
            share = float(s[:-1]) / 100
            if not math.isfinite(share):
                raise ValueError
        else:
            k = int(s)
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} is neither a count nor a share; write e.g. {flag} 16 or {flag} 25%"
        ) from None
    if s.endswith("%"):
        if share > 1:
            raise UsageError(f"{flag} {s} is more than 100% of the experts; choose a share up to 100%, e.g. 25%")
        if share <= 0:
            raise UsageError(f"{flag} {s} keeps no expert; choose a share above 0%, e.g. 25%")
        return slice_k(n_experts, n_shared, share)
    if k > n_experts:
        raise UsageError(
            f"{flag} {k} is more than the {n_experts} experts per layer; "
            f"choose {n_shared + 1}..{n_experts} or a share like 25%"
        )
    if k <= n_shared:
        raise UsageError(
            f"{flag} {k} keeps no routed expert: it counts the {n_shared} shared expert(s), "
            f"so choose {n_shared + 1}..{n_experts} or a share like 25%"
        )
    return k


def rank_experts(scores_R: list[float] | None, n_routed: int, method: str, seed: int = 0, layer: int = 0) -> list[int]:
    """Routed expert ids, best first: by score (ties: lower id first), or a seeded permutation."""
    if method == "random":
        g = torch.Generator().manual_seed(seed * 100_003 + layer)
        return torch.randperm(n_routed, generator=g).tolist()
    if method not in SCORED:
        raise UsageError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    return sorted(range(n_routed), key=lambda e: (-scores_R[e], e))


def choose_experts(
    scores_R, n_routed: int, n_shared: int, keep: int, method: str, seed: int = 0, layer: int = 0
) -> list[int]:
    """Original ids kept in one layer: the best keep - n_shared routed ones in their original order, then the shared."""
    best = rank_experts(scores_R, n_routed, method, seed, layer)[: keep - n_shared]
    return sorted(best) + list(range(n_routed, n_routed + n_shared))


def slice_layer(layer: DecoderLayer, kept: list[int]) -> DecoderLayer:
    """Slice a loaded decoder layer in place to the experts `kept` (original ids, shared last); a dense layer
    (no router) is left as it is."""
    mlp = layer.mlp
    if not hasattr(mlp, "w_gate_EFD"):
        return layer
    idx = torch.tensor(kept, dtype=torch.long)
    mlp.gate.weight = nn.Parameter(mlp.gate.weight.data[idx].clone(), requires_grad=False)
    mlp.gate.out_features = len(kept)
    for name in ("w_gate_EFD", "w_up_EFD", "w_down_EDF"):
        setattr(mlp, name, nn.Parameter(getattr(mlp, name).data[idx].clone(), requires_grad=False))
    mlp.n_experts = len(kept)
    mlp.top_k = min(mlp.top_k, len(kept))
    return layer


def slice_k(n_experts: int, n_shared: int, share: float) -> int:
    """Experts kept (shared included) for a share of a layer's experts: rounded, at least one routed."""
    return max(n_shared + 1, min(n_experts, round(n_experts * share)))


@dataclass
class SlicePlan:
    """Which original experts each layer keeps (routed ascending, then shared), and why."""

    kept: list[list[int]]  # per layer, original ids
    method: str  # mean-prob | frequency | reap | easy-ep | random | experts (given by hand)
    keep: int | list[int]  # experts kept per layer, or one count per layer with per_layer
    per_layer: bool = False
    scores: list[list[float]] | None = None  # per layer, the method's score of every routed expert
    profile: dict | None = None  # what the scores came from (model, inputs, settings, provenance)
    warnings: list[str] = field(default_factory=list)
    scale: list[float | None] | None = None  # per layer, the kept routed experts' output factor (slicing/rescale.py)


def parse_expert_list(text: str, cfg: EmoConfig, flag: str = "--experts") -> list[list[int]]:
    """'1,3,4,6' (every layer) or '1,3;0,2' (one list per layer) -> kept routed ids per layer.

    Shared expert ids may be listed (they are always kept anyway)."""
    L, n_shared = cfg.num_hidden_layers, cfg.num_shared_experts
    parts = [p for p in text.split(";")]
    if len(parts) not in (1, L):
        raise UsageError(
            f"{flag} gives {len(parts)} lists separated by ';' but the model has {L} layers; "
            "give one list for every layer or one per layer"
        )
    out: list[list[int]] = []
    for l in range(L):
        part = parts[0] if len(parts) == 1 else parts[l]
        E = cfg.experts_in_layer(l)
        R = E - n_shared
        if not cfg.is_moe_layer(l):  # a dense layer: nothing to keep or drop
            if len(parts) > 1 and part.strip():
                raise UsageError(f"{flag}: layer {l} is a dense layer (no experts); leave its list empty")
            out.append([])
            continue
        try:
            ids = [int(x) for x in part.replace(" ", "").split(",") if x != ""]
        except ValueError:
            raise UsageError(f"{flag} {text!r}: write expert ids as integers, e.g. {flag} 1,3,4,6") from None
        bad = [i for i in ids if not 0 <= i < E]
        if bad:
            raise UsageError(
                f"{flag}: expert {bad[0]} does not exist in layer {l} (ids 0..{E - 1}, {R}..{E - 1} shared)"
            )
        if len(set(ids)) != len(ids):
            raise UsageError(f"{flag} {text!r} lists an expert twice; list each once")
        routed = sorted(i for i in ids if i < R)
        if not routed:
            raise UsageError(f"{flag} keeps no routed expert in layer {l}; list at least one of 0..{R - 1}")
        out.append(routed)
    return out


def plan_slice(
    ckpt: Checkpoint,
    keep: str | int | None = None,
    *,
    experts: str | None = None,
    profile: dict | None = None,
    method: str = "mean-prob",
    per_layer: bool = False,
    seed: int = 0,
) -> SlicePlan:
    """Turn --keep plus (--experts | a profile | --method random) into kept experts per layer."""
    cfg = ckpt.config
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if per_layer and not cfg.family.per_layer_k:
        raise UsageError(
            f"--per-layer: a {cfg.model_type} checkpoint has one expert count for every layer (stock "
            f"{cfg.family.architecture} loads no other); a different K per layer is for EMO checkpoints only"
        )
    if experts is not None:
        plan = _plan_by_hand(cfg, keep, experts, per_layer)
    else:
        plan = _plan_ranked(cfg, keep, profile, method, per_layer, seed)
    k = cfg.num_experts_per_tok
    smallest = min(len(plan.kept[l]) for l in cfg.moe_layers())
    if smallest <= k:
        plan.warnings.append(
            f"keeping {smallest} <= {k} experts per token: every kept expert fires on every token "
            f"(num_experts_per_tok becomes {min(k, smallest)}); the slice acts as a dense model"
        )
    return plan


def _smallest_layer(cfg: EmoConfig) -> int:
    """Experts in the smallest MoE layer: what --keep is checked against."""
    return cfg.fewest_experts()


def _plan_by_hand(cfg: EmoConfig, keep, experts: str, per_layer: bool) -> SlicePlan:
    """--experts: the listed routed ids plus the shared ones in every layer; --keep, if given, must agree."""
    n_shared = cfg.num_shared_experts
    routed = parse_expert_list(experts, cfg)
    moe = cfg.moe_layers()
    sizes = {len(routed[l]) + n_shared for l in moe}
    if len(sizes) > 1 and not per_layer:
        raise UsageError(
            "--experts keeps a different number of experts per layer; pass --per-layer to allow "
            "that (only EMO's own model code loads such a checkpoint) or list the same count"
        )
    if keep is not None and not per_layer:
        n_keep = parse_keep(keep, _smallest_layer(cfg), n_shared)
        listed = len(routed[moe[0]])
        if n_keep != listed + n_shared:
            raise UsageError(
                f"--keep {keep} is {n_keep} experts but --experts lists {listed} routed + {n_shared} "
                f"shared = {listed + n_shared}; drop --keep or make them agree"
            )
    kept = [r + list(range(cfg.experts_in_layer(l) - n_shared, cfg.experts_in_layer(l))) for l, r in enumerate(routed)]
    sizes_l = [len(x) for x in kept]
    return SlicePlan(kept, "experts", sizes_l if per_layer else sizes_l[moe[0]], per_layer)


def _plan_ranked(cfg: EmoConfig, keep, profile: dict | None, method: str, per_layer: bool, seed: int) -> SlicePlan:
    """The best --keep experts per layer by the profile's scores for method (or at random), or across layers."""
    if keep is None:
        raise UsageError("--keep K is required (experts per layer counting the shared ones, or a share like 25%)")
    L, n_shared = cfg.num_hidden_layers, cfg.num_shared_experts
    n_keep = parse_keep(keep, _smallest_layer(cfg), n_shared)
    scores = None if method == "random" else _profile_scores(profile, method, n_keep, per_layer)
    if per_layer:
        kept = _global_ranking(cfg, n_keep, scores, method, seed)
        plan = SlicePlan(kept, method, [len(x) for x in kept], True, scores)
    else:
        kept = [
            choose_experts(
                scores[l] if scores else None, cfg.experts_in_layer(l) - n_shared, n_shared, n_keep, method, seed, l
            )
            if cfg.is_moe_layer(l)
            else []  # a dense layer keeps its MLP
            for l in range(L)
        ]
        plan = SlicePlan(kept, method, n_keep, False, scores)
    if profile is not None:
        plan.profile = {key: profile.get(key) for key in ("model", "inputs", "settings", "greedy", "provenance")}
    return plan


def _profile_scores(profile: dict | None, method: str, n_keep: int, per_layer: bool) -> list[list[float]]:
    """Per layer, the method's score of every routed expert; a --greedy profile only for its own K and method."""
    if profile is None:
        raise UsageError(f"--method {method} needs scores: give --profile FILE or --examples SRC")
    scores = [layer["scores"][method] for layer in profile["layers"]]
    g = profile.get("greedy")
    if g and per_layer:
        raise UsageError(
            "--per-layer ranks experts across layers, but a --greedy profile's scores hold only "
            "for its own per-layer slice; use a one-pass profile for --per-layer"
        )
    if g and (g.get("keep") != n_keep or g.get("method") != method):
        raise UsageError(
            f"--profile was made with --greedy --keep {g.get('keep')} --method {g.get('method')}: "
            f"its scores only hold for that slice; extract with those or re-run profile "
            f"--greedy --keep {n_keep} --method {method}"
        )
    return scores


def _global_ranking(cfg: EmoConfig, n_keep: int, scores, method: str, seed: int) -> list[list[int]]:
    """--per-layer: the L * (n_keep - n_shared) best (layer, expert) pairs over all layers, each layer keeping at least
    min(k, n_keep) - n_shared routed experts so num_experts_per_tok = min(k, n_keep) holds everywhere."""
    L, n_shared = cfg.num_hidden_layers, cfg.num_shared_experts
    floor = min(cfg.num_experts_per_tok, n_keep) - n_shared
    if method == "random":
        g = torch.Generator().manual_seed(seed)
        scores = [torch.rand(cfg.experts_in_layer(l) - n_shared, generator=g).tolist() for l in range(L)]
    chosen = [
        set(choose_experts(scores[l], cfg.experts_in_layer(l) - n_shared, 0, floor, method, seed, l)) for l in range(L)
    ]
    rest = sorted(((-scores[l][e], l, e) for l in range(L) for e in range(len(scores[l])) if e not in chosen[l]))
    budget = L * (n_keep - n_shared) - sum(len(c) for c in chosen)
    for _, l, e in rest[: max(budget, 0)]:
        chosen[l].add(e)
    return [
        sorted(c) + list(range(cfg.experts_in_layer(l) - n_shared, cfg.experts_in_layer(l)))
        for l, c in enumerate(chosen)
    ]
