"""Routing-mass rescaling: a slice's routed experts weighted as much as the full model weights them.

A slice's router is a softmax over the kept experts alone. Where the family does not renormalise the top-k
weights (EMO, OLMoE and Qwen2-MoE without norm_topk_prob: a token's chosen routed experts carry only the
probability the full softmax gave them, typically 0.2-0.4 of it in all), the kept experts' weights are the full
model's divided by the probability the kept experts hold, P_S(x) = sum over kept e of p_e(x): at K <= top-k every
kept expert fires with weights summing to 1, several times what the full model's routed experts carry, against
an unchanged shared expert and residual stream.

Where: `auto` (the default of extract and sweep) rescales the layers that keep at most top-k experts (shared
included, as num_experts_per_tok counts them), where every kept expert fires on every token and the inflation is
largest; `on` every sliced layer; `off` none. The rule: per MoE layer, multiply the kept routed experts' down projections by c = mean over the calibration
tokens of P_S (the profile's mean-prob scores summed over the kept experts; averaged over the profiles of a
composed slice). The routed part then carries, on average over the calibration input, the weight the full model
gives those experts. It is one scalar per layer, the checkpoint stays a stock checkpoint of its family, a layer
that keeps every routed expert is copied untouched (c would be 1), and the factors are recorded in slice.json.
Families that renormalise (norm_topk_prob, Mixtral's softmax over the top k) are left as they are: their weights
sum to 1 in the full model too.
"""

from __future__ import annotations

from emo_slice.errors import UsageError
from emo_slice.model.config import EmoConfig
from emo_slice.slicing.select import SlicePlan

MODES = ("auto", "on", "off")  # auto: the layers that keep at most top-k experts
RULE = (
    "kept routed experts' down projections times the router probability they held on the calibration input "
    "(mean-prob summed over the kept experts)"
)


def renormalises(cfg: EmoConfig) -> bool:
    """Whether the family's top-k weights sum to 1 (so a slice's weights are on the full model's scale)."""
    return cfg.routing == "topk-softmax" or (cfg.num_shared_experts == 0 and cfg.norm_topk_prob)


def routing_mass(cfg: EmoConfig, kept: list[list[int]], profiles: list[dict], mode: str = "on") -> list[float | None]:
    """Per layer, the factor c of the module docstring, or None where nothing is rescaled (a dense layer, every
    routed expert kept, more than top-k experts kept with mode auto, a renormalising family, no profile)."""
    if mode not in MODES:
        raise UsageError(f"`rescale={mode!r}` is unknown; choose one of {', '.join(MODES)}")
    if mode == "off" or not profiles or renormalises(cfg):
        return [None] * len(kept)
    n_shared, out = cfg.num_shared_experts, []
    for l, ids in enumerate(kept):
        n_routed = cfg.experts_in_layer(l) - n_shared
        routed = [e for e in ids if e < n_routed]
        over = mode == "auto" and len(ids) > cfg.num_experts_per_tok  # some kept experts still wait their turn
        if not cfg.is_moe_layer(l) or len(routed) >= n_routed or over:
            out.append(None)
            continue
        masses = [sum(p["layers"][l]["scores"]["mean-prob"][e] for e in routed) for p in profiles]
        c = sum(masses) / len(masses)
        out.append(c if c > 0 else None)  # no probability measured (a pool that excluded them): left as is
    return out


def rescale(plan: SlicePlan, cfg: EmoConfig, profiles: list[dict], mode: str = "auto") -> SlicePlan:
    """Set the plan's per-layer factors (`plan.scale`) by the rule in `mode` (MODES); a plan without a profile is
    left as it is."""
    profiles = [p for p in profiles if p]
    if mode == "on" and not profiles:
        raise UsageError(
            "`rescale=on` needs the router probabilities of a profile: give `examples` (--examples) or "
            "`profiles` (--profile), or leave rescaling at auto"
        )
    scale = routing_mass(cfg, plan.kept, profiles, mode)
    if any(c is not None for c in scale):
        plan.scale = scale
    return plan
