"""Composed slices: one slice for several domains, from one profile per domain.

Two rules, per layer, over the routed experts (shared experts are always kept, last):

- union: round robin over the domains' rankings, by rank (domains in the order given): every domain's
  best expert, then every domain's second best, ..., skipping an expert already kept, until K - shared
  are kept. Each domain's ranking is by its own score of the chosen method, ties to the lower id. After
  r rounds the kept experts are exactly the union of the domains' top-r sets, so K = shared + the size of
  that union reproduces it exactly.
- sum: rank by the sum over domains of normalised scores, ties to the lower id. NORMALISATION: each
  domain's scores of a layer are divided by their sum in that layer (each domain carries the same total
  weight, whatever its token count or score scale); a domain whose scores are all zero adds nothing.

`compose_plan` returns a SlicePlan whose `profile` record holds, for slice.json, the rule, each domain's
source and what each domain contributed per layer (union: the experts its turns added; sum: the kept
experts for which that domain's normalised score is the largest, ties to the earlier domain).
"""

from __future__ import annotations

from emo_slice.errors import UsageError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.slicing.select import SCORED, SlicePlan, parse_keep, rank_experts

RULES = ("union", "sum")
NORMALISATION = "each domain's scores in a layer divided by their sum in that layer, then summed over domains"


def union_order(rankings: list[list[int]]) -> tuple[list[int], list[int]]:
    """Round robin by rank: every domain's best, in domain order, then every domain's second best, ..., an
    expert already taken skipped. Returns (experts in the order taken, index of the domain that took each).
    After r rounds the experts taken are exactly the union of the domains' top-r sets."""
    order, by, seen = [], [], set()
    for r in range(max(map(len, rankings), default=0)):
        for d, ranking in enumerate(rankings):
            if r < len(ranking) and ranking[r] not in seen:
                seen.add(ranking[r])
                order.append(ranking[r])
                by.append(d)
    return order, by


def normalised(scores: list[float]) -> list[float]:
    total = sum(scores)
    return [s / total for s in scores] if total > 0 else [0.0 for _ in scores]


def sum_order(scores_by_domain: list[list[float]]) -> tuple[list[int], list[int], list[float]]:
    """Experts by the sum of normalised scores (ties: lower id), the domain whose normalised score is largest
    for each (ties: earlier domain), and the summed scores."""
    norm = [normalised(s) for s in scores_by_domain]
    total = [sum(col) for col in zip(*norm)]
    order = sorted(range(len(total)), key=lambda e: (-total[e], e))
    by = [max(range(len(norm)), key=lambda d: (norm[d][e], -d)) for e in order]
    return order, by, total


def check_composable(profiles: list[dict], method: str, rule: str, per_layer: bool) -> None:
    if rule not in RULES:
        raise UsageError(f"--compose {rule!r} is unknown; choose one of {', '.join(RULES)}")
    if method not in SCORED:
        raise UsageError(
            f"--method {method} has no scores to compose; choose one of {', '.join(SCORED)} with several domains"
        )
    if per_layer:
        raise UsageError("--per-layer does not combine with several domains; compose with the same K in every layer")
    if any(p.get("greedy") for p in profiles):
        raise UsageError(
            "a --greedy profile's scores hold only for its own slice and cannot be composed; "
            "compose one-pass profiles (emo-slice profile without --greedy)"
        )
    shapes = {tuple(layer["routed"] for layer in p["layers"]) for p in profiles}
    if len(shapes) > 1:
        raise UsageError("the profiles score different numbers of experts per layer: they were made on other models")


def compose_plan(
    ckpt: Checkpoint, keep: str | int, profiles: list[dict], sources: list[str], method: str, rule: str = "union"
) -> SlicePlan:
    """Keep `keep` experts per layer serving every domain (one profile per domain, named by `sources`)."""
    check_composable(profiles, method, rule, False)
    cfg = ckpt.config
    L, n_shared = cfg.num_hidden_layers, cfg.num_shared_experts
    n_keep = parse_keep(keep, cfg.fewest_experts(), n_shared)
    kept, summed = [], []
    contributed: list[list[list[int]]] = [[] for _ in profiles]
    for l in range(L):
        R = cfg.experts_in_layer(l) - n_shared
        scores = [p["layers"][l]["scores"][method] for p in profiles]
        if rule == "union":
            order, by = union_order([rank_experts(s, R, method) for s in scores])
        else:
            order, by, total = sum_order(scores)
            summed.append(total)
        take = n_keep - n_shared
        for d in range(len(profiles)):
            contributed[d].append(sorted(e for e, who in zip(order[:take], by[:take]) if who == d))
        kept.append(sorted(order[:take]) + list(range(R, R + n_shared)))
    plan = SlicePlan(kept, method, n_keep, False, summed if rule == "sum" else None)
    plan.profile = {
        "composition": {
            "rule": rule,
            "normalisation": NORMALISATION if rule == "sum" else None,
            "scores": "sum of normalised scores" if rule == "sum" else None,
            "domains": [
                {
                    "source": str(src),
                    "inputs": p.get("inputs"),
                    "model": p.get("model"),
                    "provenance": p.get("provenance"),
                    "contributed": contributed[d],
                }
                for d, (p, src) in enumerate(zip(profiles, sources))
            ],
        }
    }
    k = cfg.num_experts_per_tok
    if n_keep <= k:
        plan.warnings.append(
            f"keeping {n_keep} <= {k} experts per token: every kept expert fires on every token "
            f"(num_experts_per_tok becomes {n_keep}); the slice acts as a dense model"
        )
    return plan
