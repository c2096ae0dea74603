"""`emo-slice info`: what a checkpoint holds: architecture, parameters (total / active per token), bytes, slice
sizes. `run(InfoSpec(model))` returns it as a dict (`info --json`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from emo_slice.model.config import EmoConfig
from emo_slice.specs import INPUT, MODEL, Spec, param

SLICE_SHARES = (0.5, 0.25, 0.125)


def param_counts(cfg: EmoConfig, keep: list[int] | None = None) -> dict[str, int]:
    """Parameters in total, active per token, and in the experts, optionally after slicing to keep[l] experts
    (from the family's tensor shapes: biases, q/k norms, a shared expert MLP and dense layers included)."""
    from emo_slice.model.hf_names import layer_tensors  # torch-free --help: torch loads when the command runs

    D, V = cfg.hidden_size, cfg.vocab_size
    embed = V * D * (1 if cfg.tie_word_embeddings else 2)
    total = active = embed + D
    experts = 0
    for l in range(cfg.num_hidden_layers):
        E = keep[l] if keep is not None else cfg.experts_in_layer(l)
        k = min(cfg.num_experts_per_tok, E)
        dense = per_expert = 0
        for ours, e, _, shape in layer_tensors(cfg, l):
            n = math.prod(shape)
            if e is not None:
                per_expert += n if e == 0 else 0
            elif ours == "mlp.gate.weight":
                dense += E * D  # one router row per kept expert
            else:
                dense += n
        total += dense + E * per_expert
        active += dense + k * per_expert
        experts += E * per_expert
    return {
        "total": total,
        "active": active,
        "active_non_embedding": active - embed,
        "experts": experts,
        "embedding": embed,
    }


def checkpoint_info(ckpt) -> dict:
    """What ckpt holds; refuses (CheckpointError) tensors that disagree with config.json. Parameter counts
    are those of the tensors themselves (which then equal what config.json implies)."""
    from emo_slice.slicing.select import slice_k  # torch-free --help: torch loads when the command runs

    cfg = ckpt.config
    ckpt.check_tensors(exact=True)
    layers = [cfg.experts_in_layer(l) for l in range(cfg.num_hidden_layers)]
    counts = ckpt.param_counts()
    bytes_total = ckpt.total_bytes
    el = ckpt.stored_dtype.itemsize
    slices = []
    for share in SLICE_SHARES:
        keep = [slice_k(E, cfg.num_shared_experts, share) if E else 0 for E in layers]
        c = param_counts(cfg, keep)
        removed = counts["total"] - c["total"]
        kept = [keep[l] for l in cfg.moe_layers()]
        slices.append(
            {
                "share": share,
                "keep": kept[0] if len(set(kept)) == 1 else keep,
                "params_total": c["total"],
                "bytes": bytes_total - removed * el,
                "share_of_bytes": (bytes_total - removed * el) / bytes_total if bytes_total else 0.0,
            }
        )
    return {
        "path": str(ckpt.path),
        "fingerprint": ckpt.fingerprint(),
        "model_type": cfg.model_type,
        "architecture": {
            "layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size,
            "rope_theta": cfg.rope_theta,
            "tie_word_embeddings": cfg.tie_word_embeddings,
        },
        "family": {
            "architecture": cfg.family.architecture,
            "qk_norm": cfg.qk_norm,
            "attention_bias": {"qkv": cfg.qkv_bias, "o": cfg.o_bias},
            "routing": cfg.routing,
            "norm_topk_prob": cfg.norm_topk_prob,
            "shared_expert_mlp": cfg.shared_expert_intermediate_size or None,
            "dense_layers": [l for l in range(cfg.num_hidden_layers) if not cfg.is_moe_layer(l)],
            "sliding_window": cfg.sliding_window,
        },
        "experts": {
            "per_layer": layers,
            "shared": cfg.num_shared_experts,
            "routed_per_layer": [E - cfg.num_shared_experts for E in layers],
            "per_token": cfg.num_experts_per_tok,
            "routed_per_token": cfg.num_experts_per_tok - cfg.num_shared_experts,
        },
        "parameters": counts,
        "tensors": len(ckpt.infos),
        "bytes_on_disk": bytes_total,
        "stored_dtype": str(ckpt.stored_dtype).replace("torch.", ""),
        "slices": slices,
    }


@dataclass(frozen=True)
class InfoSpec(Spec):
    """The checkpoint `emo-slice info` describes."""

    model: str = param(doc=MODEL, flag="MODEL", role=INPUT)


def run(spec: InfoSpec) -> dict:
    """checkpoint_info of spec.model."""
    from emo_slice.io.checkpoint import Checkpoint  # torch-free --help

    return checkpoint_info(Checkpoint(spec.model))
