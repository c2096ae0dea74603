"""Hugging Face tensor names of an EMO checkpoint and how they map to the stacked expert parameters.

A checkpoint stores every expert's projections apart (`model.layers.l.mlp.experts.e.gate_proj.weight`);
`EmoForCausalLM` keeps one layer's experts stacked (`mlp.w_gate_EFD`, `mlp.w_up_EFD`, `mlp.w_down_EDF`).
Every other parameter has the checkpoint's own name.
"""

from __future__ import annotations

import re
from typing import Iterator

import torch
from torch import nn

from emo_slice.model.config import EmoConfig

EXPERT_KEY = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")


STACKED = {"gate": "w_gate_EFD", "up": "w_up_EFD", "down": "w_down_EDF"}


def hf_to_stacked_view(model: nn.Module, name: str) -> torch.Tensor | None:
    """The parameter (or expert slice of a stacked parameter) that HF tensor `name` maps to."""
    m = EXPERT_KEY.match(name)
    params = dict(model.named_parameters(remove_duplicate=False))
    if m:
        layer, e, kind = int(m.group(1)), int(m.group(2)), m.group(3)
        p = params.get(f"model.layers.{layer}.mlp.{STACKED[kind]}")
        return None if p is None or e >= p.shape[0] else p.data[e]
    p = params.get(name)
    return None if p is None else p.data


def stacked_to_hf(state: dict[str, torch.Tensor], cfg: EmoConfig) -> Iterator[tuple[str, torch.Tensor]]:
    for name, t in state.items():
        m = re.match(r"^(model\.layers\.\d+\.mlp)\.(w_gate_EFD|w_up_EFD|w_down_EDF)$", name)
        if m:
            kind = {v: k for k, v in STACKED.items()}[m.group(2)]
            for e in range(t.shape[0]):
                yield f"{m.group(1)}.experts.{e}.{kind}_proj.weight", t[e]
        elif not (name == "lm_head.weight" and cfg.tie_word_embeddings):
            yield name, t


def hf_tensor_shapes(cfg: EmoConfig) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor name and its shape, in checkpoint order."""
    D, F_, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, D)}
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}"
        E = cfg.experts_in_layer(l)
        shapes[f"{p}.pre_attention_layernorm.weight"] = (D,)
        shapes.update(
            {
                f"{p}.self_attn.q_proj.weight": (q, D),
                f"{p}.self_attn.k_proj.weight": (kv, D),
                f"{p}.self_attn.v_proj.weight": (kv, D),
                f"{p}.self_attn.o_proj.weight": (D, q),
            }
        )
        shapes[f"{p}.pre_feedforward_layernorm.weight"] = (D,)
        shapes[f"{p}.mlp.gate.weight"] = (E, D)
        for e in range(E):
            shapes[f"{p}.mlp.experts.{e}.gate_proj.weight"] = (F_, D)
            shapes[f"{p}.mlp.experts.{e}.up_proj.weight"] = (F_, D)
            shapes[f"{p}.mlp.experts.{e}.down_proj.weight"] = (D, F_)
    shapes["model.norm.weight"] = (D,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def expected_hf_names(cfg: EmoConfig) -> list[str]:
    return list(hf_tensor_shapes(cfg))


def hf_order(name: str):
    """embed, layer 0..L-1 (expert tensors by expert index), norm, lm_head: the natural HF order."""
    m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
    if m:
        e = re.match(r"mlp\.experts\.(\d+)\.(.*)", m.group(2))
        return (1, int(m.group(1)), (1, int(e.group(1)), e.group(2)) if e else (0, 0, m.group(2)))
    if name.startswith("model.embed"):
        return (0, 0, (0, 0, name))
    return (2, 0, (0, 0, name))
