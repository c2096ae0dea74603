"""The EMO model in PyTorch: pre-norm decoder, GQA attention with RoPE, MoE of SwiGLU experts.

Legend (tensor suffixes): B batch, T time, N tokens (B*T), D hidden, F expert hidden, E experts in a
layer (routed + shared, shared last), K experts per token, H query heads, Hkv key/value heads,
Dh head dim, V vocab, M token-expert pairs (N*K).

Parameter names equal the Hugging Face checkpoint's except the experts, which one layer keeps
stacked: `mlp.w_gate_EFD` / `mlp.w_up_EFD` / `mlp.w_down_EDF` hold `mlp.experts.e.{gate,up,down}_proj.weight`
for every e (see `hf_to_stacked` / `stacked_to_hf`). Everything numerical follows AllenAI's reference
`EmoForCausalLM` (shared/spec/emo-checkpoint.md); tests/ checks it against the reference's outputs.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from emo_slice.model.config import EmoConfig
from emo_slice.model.routing import Routing, attention_documents, route, routing_segments


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x32).to(dtype)  # weight multiply before the cast back


def rope_cos_sin(T: int, head_dim: int, theta: float, dtype: torch.dtype, device=None):
    """cos, sin [T, Dh] for positions 0..T-1 (float32 maths, cast to the activations' dtype)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    freqs_TDh2 = torch.arange(T, device=device).float()[:, None] * inv_freq[None, :]
    emb_TDh = torch.cat([freqs_TDh2, freqs_TDh2], dim=-1)
    return emb_TDh.cos().to(dtype), emb_TDh.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: EmoConfig):
        super().__init__()
        D, H, Hkv, Dh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.H, self.Hkv, self.Dh = H, Hkv, Dh
        self.q_proj = nn.Linear(D, H * Dh, bias=False)
        self.k_proj = nn.Linear(D, Hkv * Dh, bias=False)
        self.v_proj = nn.Linear(D, Hkv * Dh, bias=False)
        self.o_proj = nn.Linear(H * Dh, D, bias=False)

    def forward(self, x_BTD, cos_TDh, sin_TDh, mask_BTT=None):
        B, T, _ = x_BTD.shape
        q_BHTDh = self.q_proj(x_BTD).view(B, T, self.H, self.Dh).transpose(1, 2)
        k_BHTDh = self.k_proj(x_BTD).view(B, T, self.Hkv, self.Dh).transpose(1, 2)
        v_BHTDh = self.v_proj(x_BTD).view(B, T, self.Hkv, self.Dh).transpose(1, 2)
        q_BHTDh = q_BHTDh * cos_TDh + _rotate_half(q_BHTDh) * sin_TDh
        k_BHTDh = k_BHTDh * cos_TDh + _rotate_half(k_BHTDh) * sin_TDh
        gqa = self.Hkv != self.H
        if mask_BTT is None:
            o_BHTDh = F.scaled_dot_product_attention(q_BHTDh, k_BHTDh, v_BHTDh, is_causal=True, enable_gqa=gqa)
        else:
            o_BHTDh = F.scaled_dot_product_attention(q_BHTDh, k_BHTDh, v_BHTDh, attn_mask=mask_BTT[:, None],
                                                     enable_gqa=gqa)
        return self.o_proj(o_BHTDh.transpose(1, 2).reshape(B, T, self.H * self.Dh))


def _grouped_mm_ok(x_MD: torch.Tensor, w: torch.Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm") or x_MD.dtype not in (torch.float32, torch.bfloat16):
        return False
    es = x_MD.element_size()
    return (w.shape[-1] * es) % 16 == 0 and (w.shape[-2] * es) % 16 == 0


def expert_mix(x_ND, experts_NK, weights_NK, w_gate_EFD, w_up_EFD, w_down_EDF, impl: str = "auto"):
    """sum_j w_j * down(silu(gate(x)) * up(x)) over each token's chosen experts.

    Token-expert pairs are sorted by expert once; then either one grouped matmul per projection
    (torch._grouped_mm) or a loop over the contiguous per-expert slices ("loop").
    """
    N, K = experts_NK.shape
    E = w_gate_EFD.shape[0]
    flat_M = experts_NK.reshape(-1)
    order_M = torch.argsort(flat_M, stable=True)
    tok_M = order_M // K
    counts_E = torch.bincount(flat_M, minlength=E)
    x_MD = x_ND[tok_M]
    if impl == "auto":
        impl = "grouped" if _grouped_mm_ok(x_MD, w_gate_EFD) else "loop"
    if impl == "grouped":
        offs_E = counts_E.cumsum(0).to(torch.int32)
        g_MF = torch._grouped_mm(x_MD, w_gate_EFD.transpose(-2, -1), offs=offs_E)
        u_MF = torch._grouped_mm(x_MD, w_up_EFD.transpose(-2, -1), offs=offs_E)
        y_MD = torch._grouped_mm(F.silu(g_MF) * u_MF, w_down_EDF.transpose(-2, -1), offs=offs_E)
    elif impl == "loop":
        parts, start = [], 0
        for e, c in enumerate(counts_E.tolist()):
            if c:
                xe = x_MD[start:start + c]
                h = F.silu(xe @ w_gate_EFD[e].t()) * (xe @ w_up_EFD[e].t())
                parts.append(h @ w_down_EDF[e].t())
                start += c
        y_MD = torch.cat(parts) if parts else x_MD.new_zeros(0, x_ND.shape[1])
    else:
        raise ValueError(f"unknown expert implementation {impl!r}")
    y_MD = y_MD * weights_NK.reshape(-1)[order_M, None]
    return torch.zeros_like(x_ND).index_add_(0, tok_M, y_MD)


class MoE(nn.Module):
    def __init__(self, cfg: EmoConfig, layer: int):
        super().__init__()
        E, D, F_ = cfg.experts_in_layer(layer), cfg.hidden_size, cfg.intermediate_size
        self.n_experts, self.n_shared = E, cfg.num_shared_experts
        self.top_k, self.norm_topk_prob = cfg.top_k_in_layer(layer), cfg.norm_topk_prob
        self.gate = nn.Linear(D, E, bias=False)
        self.w_gate_EFD = nn.Parameter(torch.empty(E, F_, D))
        self.w_up_EFD = nn.Parameter(torch.empty(E, F_, D))
        self.w_down_EDF = nn.Parameter(torch.empty(E, D, F_))
        self.impl = "auto"

    def forward(self, x_BTD, segment_ids_N=None, pool_size=None) -> tuple[torch.Tensor, Routing]:
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        r = route(self.gate(x_ND), self.n_shared, self.top_k, self.norm_topk_prob, segment_ids_N, pool_size)
        w = (self.w_gate_EFD, self.w_up_EFD, self.w_down_EDF)
        x_in = x_ND
        if torch.is_autocast_enabled(x_ND.device.type):  # autocast does not cover grouped matmuls: cast here
            dt = torch.get_autocast_dtype(x_ND.device.type)
            x_in, w = x_ND.to(dt), tuple(t.to(dt) for t in w)
        out_ND = expert_mix(x_in, r.experts_NK, r.weights_NK, *w, self.impl)
        return out_ND.to(x_BTD.dtype).view(B, T, D), r


class DecoderLayer(nn.Module):
    def __init__(self, cfg: EmoConfig, layer: int):
        super().__init__()
        self.pre_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg, layer)

    def forward(self, x_BTD, cos_TDh, sin_TDh, mask_BTT=None, segment_ids_N=None, pool_size=None):
        h_BTD = x_BTD + self.self_attn(self.pre_attention_layernorm(x_BTD), cos_TDh, sin_TDh, mask_BTT)
        moe_BTD, routing = self.mlp(self.pre_feedforward_layernorm(h_BTD), segment_ids_N, pool_size)
        return h_BTD + moe_BTD, routing


class EmoBackbone(nn.Module):
    def __init__(self, cfg: EmoConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class EmoForCausalLM(nn.Module):
    """model(input_ids [B, T]) -> logits [B, T, V]. Right padding is safe (attention is causal)."""

    def __init__(self, cfg: EmoConfig):
        super().__init__()
        self.config = cfg
        self.model = EmoBackbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # one forward, in parts, so that layer-by-layer execution can reuse them -------------------
    def embed(self, input_ids_BT):
        return self.model.embed_tokens(input_ids_BT)

    def head(self, x_BTD):
        return self.lm_head(self.model.norm(x_BTD))

    def forward(self, input_ids_BT, *, pool_size=None, doc_attention: bool = False,
                return_routing: bool = False, return_hidden: bool = False):
        """pool_size: None (reference inference), an int (fixed document pool), or a callable
        (num_segments -> sizes tensor) drawn anew per layer. doc_attention: attend within documents."""
        x_BTD = self.embed(input_ids_BT)
        B, T = input_ids_BT.shape
        cos, sin = rope_cos_sin(T, self.config.head_dim, self.config.rope_theta, x_BTD.dtype, x_BTD.device)
        mask_BTT = document_mask(input_ids_BT, self.config.eos_token_id) if doc_attention else None
        seg_N = None
        if pool_size is not None:
            seg_N = routing_segments(input_ids_BT, self.config.eos_token_id).reshape(-1)
        routings = []
        for layer in self.model.layers:
            p = pool_size(int(seg_N.max()) + 1) if callable(pool_size) else pool_size
            x_BTD, r = layer(x_BTD, cos, sin, mask_BTT, seg_N, p)
            if return_routing:
                routings.append(r)
        logits = self.head(x_BTD)
        if return_routing or return_hidden:
            out = {"logits": logits, "routing": routings}
            if return_hidden:
                out["hidden"] = x_BTD
            return out
        return logits

    def set_expert_impl(self, impl: str) -> None:
        """'auto' (grouped matmul where possible), 'grouped' or 'loop'."""
        for layer in self.model.layers:
            layer.mlp.impl = impl

    # Hugging Face names ---------------------------------------------------------------------
    def hf_state_dict(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF tensor name, tensor) in checkpoint order, experts unstacked (views, no copies)."""
        from emo_slice.model.hf_names import stacked_to_hf

        yield from stacked_to_hf(self.state_dict(), self.config)


def document_mask(input_ids_BT, eos_token_id) -> torch.Tensor:
    """Boolean [B, T, T]: causal and within the same document (EOS stays with its own document)."""
    doc_BT = attention_documents(input_ids_BT, eos_token_id)
    T = input_ids_BT.shape[1]
    causal_TT = torch.ones(T, T, dtype=torch.bool, device=input_ids_BT.device).tril()
    return causal_TT[None] & (doc_BT[:, :, None] == doc_BT[:, None, :])


def init_weights(model: EmoForCausalLM, std: float = 0.02, seed: int | None = None) -> EmoForCausalLM:
    """Fresh weights for pretraining: normal(0, std) matrices, ones for norms."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model
