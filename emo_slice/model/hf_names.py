"""Checkpoint tensor names of every family, in one table, and how they map to the model's parameters.

A checkpoint stores every expert's projections apart (`model.layers.l.mlp.experts.e.gate_proj.weight`;
Mixtral `model.layers.l.block_sparse_moe.experts.e.w1.weight`); the model keeps one layer's experts stacked
(`mlp.w_gate_EFD`, `mlp.w_up_EFD`, `mlp.w_down_EDF`). Inside a layer the model's parameters carry fixed
names (EMO's: `pre_attention_layernorm`, `pre_feedforward_layernorm`, `mlp.gate`, ...) and `NAMES` says
what each family calls them. transformers 5 keeps a layer's experts fused in memory
(`mlp.experts.gate_up_proj` [E, 2F, D], `mlp.experts.down_proj` [E, D, F]); a checkpoint saved that way
is read through `fused_names` (io/checkpoint.py maps each expert's slice of the fused tensor to its
per-expert name, a byte range of the file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from emo_slice.model.config import EmoConfig

KINDS = ("gate", "up", "down")
STACKED = {"gate": "w_gate_EFD", "up": "w_up_EFD", "down": "w_down_EDF"}
_PROJ = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


@dataclass(frozen=True)
class Names:
    """What a family calls the parts of a decoder layer (relative to `model.layers.{l}.`)."""

    attn_norm: str  # the RMSNorm before attention
    mlp_norm: str  # the RMSNorm before the MoE block / MLP
    moe: str  # the MoE block
    expert: dict[str, str]  # projection of one expert: gate / up / down -> its name


_HF = Names("input_layernorm", "post_attention_layernorm", "mlp", _PROJ)
NAMES: dict[str, Names] = {
    "emo": Names("pre_attention_layernorm", "pre_feedforward_layernorm", "mlp", _PROJ),
    "flex_olmo_noqknorm_prenorm": Names("pre_attention_layernorm", "pre_feedforward_layernorm", "mlp", _PROJ),
    "olmoe": _HF,
    "qwen2_moe": _HF,
    "qwen3_moe": _HF,
    "mixtral": Names(
        "input_layernorm", "post_attention_layernorm", "block_sparse_moe", {"gate": "w1", "up": "w3", "down": "w2"}
    ),
}

# EMO's (and OLMoE's, Qwen's) per-expert names: layer, expert, gate|up|down
EXPERT_KEY = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
_ANY_EXPERT = re.compile(r"^model\.layers\.(\d+)\.(\w+)\.experts\.(\d+)\.(\w+)\.weight$")
_ANY_ROUTER = re.compile(r"^model\.layers\.(\d+)\.(\w+)\.gate\.weight$")


def names(cfg: EmoConfig) -> Names:
    return NAMES[cfg.model_type]


def expert_name(cfg: EmoConfig, layer: int, e: int, kind: str) -> str:
    n = names(cfg)
    return f"model.layers.{layer}.{n.moe}.experts.{e}.{n.expert[kind]}.weight"


def router_name(cfg: EmoConfig, layer: int) -> str:
    return f"model.layers.{layer}.{names(cfg).moe}.gate.weight"


def parse_expert(cfg: EmoConfig, name: str) -> tuple[int, int, str] | None:
    """(layer, expert, kind) of a per-expert tensor name of this family, else None."""
    m = _ANY_EXPERT.match(name)
    n = names(cfg)
    if not m or m.group(2) != n.moe:
        return None
    kind = {v: k for k, v in n.expert.items()}.get(m.group(4))
    return None if kind is None else (int(m.group(1)), int(m.group(3)), kind)


def parse_router(cfg: EmoConfig, name: str) -> int | None:
    m = _ANY_ROUTER.match(name)
    return int(m.group(1)) if m and m.group(2) == names(cfg).moe else None


def fused_names(cfg: EmoConfig, layer: int) -> list[tuple[str, str]]:
    """Where transformers 5's fused experts of a layer may be stored: (gate_up [E, 2F, D], down [E, D, F])."""
    moes = dict.fromkeys([names(cfg).moe, "mlp"])  # Mixtral: transformers 5 renames block_sparse_moe to mlp
    return [
        (f"model.layers.{layer}.{m}.experts.gate_up_proj", f"model.layers.{layer}.{m}.experts.down_proj") for m in moes
    ]


def router_aliases(cfg: EmoConfig, layer: int) -> list[str]:
    """Other names the router of a layer has in checkpoints saved with transformers 5's own names."""
    return [] if names(cfg).moe == "mlp" else [f"model.layers.{layer}.mlp.gate.weight"]


# ---- one layer: the model's parameter <-> checkpoint tensors ------------------------------------------------


def layer_tensors(cfg: EmoConfig, layer: int) -> Iterator[tuple[str, int | None, str, tuple[int, ...]]]:
    """(parameter name inside the DecoderLayer, expert index or None, checkpoint name, shape) for every tensor of
    layer `layer`, in checkpoint order."""
    n, p = names(cfg), f"model.layers.{layer}."
    D, H, Hkv, Dh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q, kv = H * Dh, Hkv * Dh
    yield "pre_attention_layernorm.weight", None, f"{p}{n.attn_norm}.weight", (D,)
    for proj, rows, bias in (("q", q, cfg.qkv_bias), ("k", kv, cfg.qkv_bias), ("v", kv, cfg.qkv_bias)):
        yield f"self_attn.{proj}_proj.weight", None, f"{p}self_attn.{proj}_proj.weight", (rows, D)
        if bias:
            yield f"self_attn.{proj}_proj.bias", None, f"{p}self_attn.{proj}_proj.bias", (rows,)
    yield "self_attn.o_proj.weight", None, f"{p}self_attn.o_proj.weight", (D, q)
    if cfg.o_bias:
        yield "self_attn.o_proj.bias", None, f"{p}self_attn.o_proj.bias", (D,)
    if cfg.qk_norm != "none":
        widths = (q, kv) if cfg.qk_norm == "full" else (Dh, Dh)
        for proj, width in zip("qk", widths):
            yield f"self_attn.{proj}_norm.weight", None, f"{p}self_attn.{proj}_norm.weight", (width,)
    yield "pre_feedforward_layernorm.weight", None, f"{p}{n.mlp_norm}.weight", (D,)
    if not cfg.is_moe_layer(layer):
        yield from _mlp(f"{p}mlp.", "mlp.", cfg.dense_intermediate_size, D)
        return
    E, F_ = cfg.experts_in_layer(layer), cfg.intermediate_size
    yield "mlp.gate.weight", None, f"{p}{n.moe}.gate.weight", (E, D)
    for e in range(E):
        for kind, shape in (("gate", (F_, D)), ("up", (F_, D)), ("down", (D, F_))):
            yield f"mlp.{STACKED[kind]}", e, expert_name(cfg, layer, e, kind), shape
    if cfg.shared_expert_intermediate_size:
        yield from _mlp(f"{p}mlp.shared_expert.", "mlp.shared_expert.", cfg.shared_expert_intermediate_size, D)
        yield "mlp.shared_expert_gate.weight", None, f"{p}mlp.shared_expert_gate.weight", (1, D)


def _mlp(hf: str, ours: str, width: int, D: int):
    for proj, shape in (("gate", (width, D)), ("up", (width, D)), ("down", (D, width))):
        yield f"{ours}{proj}_proj.weight", None, f"{hf}{proj}_proj.weight", shape


def hf_tensor_shapes(cfg: EmoConfig) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor name and its shape, in checkpoint order."""
    D, V = cfg.hidden_size, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, D)}
    for l in range(cfg.num_hidden_layers):
        shapes.update({hf: shape for _, _, hf, shape in layer_tensors(cfg, l)})
    shapes["model.norm.weight"] = (D,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def implied_tensor_count(cfg: EmoConfig) -> int:
    """How many tensors config.json implies, counted without listing them (a hostile config may imply billions)."""
    per_layer = cfg.num_experts_per_layer
    moe = len(cfg.moe_layers()) if cfg.num_hidden_layers <= 1_000_000 else cfg.num_hidden_layers
    experts = sum(per_layer) if per_layer is not None else cfg.num_experts * moe
    attn = 5 + 3 * cfg.qkv_bias + cfg.o_bias + (2 if cfg.qk_norm != "none" else 0)
    shared = 4 * moe if cfg.shared_expert_intermediate_size else 0
    return 3 * experts + (attn + 2) * cfg.num_hidden_layers + shared + 2 + (0 if cfg.tie_word_embeddings else 1)


def expected_hf_names(cfg: EmoConfig) -> list[str]:
    return list(hf_tensor_shapes(cfg))


def model_tensors(cfg: EmoConfig) -> Iterator[tuple[str, int | None, str]]:
    """(model parameter name, expert index or None, checkpoint name) for every checkpoint tensor."""
    yield "model.embed_tokens.weight", None, "model.embed_tokens.weight"
    for l in range(cfg.num_hidden_layers):
        for ours, e, hf, _ in layer_tensors(cfg, l):
            yield f"model.layers.{l}.{ours}", e, hf
    yield "model.norm.weight", None, "model.norm.weight"
    if not cfg.tie_word_embeddings:
        yield "lm_head.weight", None, "lm_head.weight"


def hf_to_stacked_view(model: nn.Module, name: str) -> torch.Tensor | None:
    """The parameter (or expert slice of a stacked parameter) that checkpoint tensor `name` maps to."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for ours, e, hf in model_tensors(model.config):
        if hf == name:
            p = params.get(ours)
            return None if p is None else (p.data if e is None else p.data[e])
    return None


def stacked_to_hf(state: dict[str, torch.Tensor], cfg: EmoConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) of a model state dict, experts unstacked (views), a tied head left out."""
    for ours, e, hf in model_tensors(cfg):
        if ours in state:
            yield hf, (state[ours] if e is None else state[ours][e])


def hf_order(name: str):
    """embed, layer 0..L-1 (expert tensors by expert index), norm, lm_head: the natural HF order."""
    m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
    if m:
        e = re.match(r"\w+\.experts\.(\d+)\.(.*)", m.group(2))
        return (1, int(m.group(1)), (1, int(e.group(1)), e.group(2)) if e else (0, 0, m.group(2)))
    if name.startswith("model.embed"):
        return (0, 0, (0, 0, name))
    return (2, 0, (0, 0, name))
