"""`emo-slice info`: what a checkpoint holds: architecture, parameters (total / active per token), bytes, slice
sizes. `run(InfoSpec(model))` returns it as a dict (`info --json`)."""

from __future__ import annotations

from dataclasses import dataclass

from emo_slice.model.config import EmoConfig
from emo_slice.specs import INPUT, MODEL, Spec, param

SLICE_SHARES = (0.5, 0.25, 0.125)


def param_counts(cfg: EmoConfig, keep: list[int] | None = None) -> dict[str, int]:
    """Parameters in total, active per token, and in the experts, optionally after slicing to keep[l]."""
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    embed = V * D * (1 if cfg.tie_word_embeddings else 2)
    attn = D * cfg.num_attention_heads * cfg.head_dim * 2 + D * cfg.num_key_value_heads * cfg.head_dim * 2
    total = active = embed + D
    experts = 0
    for l in range(cfg.num_hidden_layers):
        E = keep[l] if keep is not None else cfg.experts_in_layer(l)
        k = min(cfg.num_experts_per_tok, E)
        dense = attn + 2 * D + E * D
        total += dense + E * 3 * D * F
        active += dense + k * 3 * D * F
        experts += E * 3 * D * F
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
        keep = [slice_k(E, cfg.num_shared_experts, share) for E in layers]
        c = param_counts(cfg, keep)
        removed = counts["total"] - c["total"]
        slices.append(
            {
                "share": share,
                "keep": keep[0] if len(set(keep)) == 1 else keep,
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
