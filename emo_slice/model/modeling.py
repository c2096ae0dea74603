"""The model in PyTorch: pre-norm decoder, GQA attention with RoPE, MoE of SwiGLU experts.

EMO, OLMoE, Qwen2-MoE, Qwen3-MoE and Mixtral run through this one forward pass: where they differ (q/k
norms, biases, routing rule, a gated shared expert, dense layers, a sliding window, the RMSNorm cast) is a
typed field of the config (model/config.py, read per family in model/families.py).

One forward path. `DecoderLayer.forward(x, ctx, layer)` is the only place a layer's computation is
written; `EmoForCausalLM.hidden_states` loops over the layers in memory and `LayerwiseModel` (io/loading.py)
loops over them streamed from the checkpoint, both around that step. Profiling, evaluation, generation
and training all call these. The `Context` (model/context.py) carries positions, attention mask, KV
cache, document pool and the per-layer trace hook.

Parameter names equal an EMO checkpoint's except the experts, which one layer keeps stacked
(`mlp.w_gate_EFD` / `mlp.w_up_EFD` / `mlp.w_down_EDF`); model/hf_names.py maps them to each family's
names. Everything numerical follows AllenAI's reference `EmoForCausalLM` for EMO (the EMO checkpoint spec)
and transformers' own model classes for the other families; tests check both. Shape letters: the legend
in `emo_slice/__init__.py`.

Weights may be held narrower than the compute dtype (a bfloat16 checkpoint run in float32 on a CPU): every
matmul casts its weight to the activations' dtype where it is used (`Linear`, `expert_mix` one expert at a
time), so no float32 copy of a whole layer is ever made and the results equal a model converted up front.
The casts write into buffers kept between calls (`scratch`), not into a fresh tensor (and its page faults) each.
"""

from __future__ import annotations

import threading
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from emo_slice.model.attention import attend
from emo_slice.model.compat import grouped_mm_works
from emo_slice.model.config import EmoConfig
from emo_slice.model.context import Context, KVCache, LayerTrace, make_context, rope_cos_sin
from emo_slice.model.hf_names import stacked_to_hf
from emo_slice.model.routing import Routing, route

__all__ = [
    "EmoForCausalLM",
    "DecoderLayer",
    "MoE",
    "MLP",
    "Attention",
    "RMSNorm",
    "KVCache",
    "Context",
    "LayerTrace",
    "make_context",
    "rope_cos_sin",
    "expert_mix",
    "init_weights",
    "Linear",
    "cast_linear",
]

CAST_BLOCK_ELEMENTS = 1 << 22  # a narrow weight is cast in row blocks of at most this many elements (16 MB fp32)


class _Scratch(threading.local):
    """Per-thread buffers that casts of narrow weights write into, kept between calls: a fresh 16 MB tensor
    per cast takes up to 4,096 page faults, a kept one none. One buffer per (slot, device, dtype), kept for the
    thread's life (one expert's three matrices: 24 MB at the release's width) and only ever grown."""

    def __init__(self):
        self.bufs: dict[tuple, torch.Tensor] = {}


_SCRATCH = _Scratch()


def scratch(slot: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat tensor of numel elements, the same memory on every call with the same slot (never two users of
    one slot at a time: `cast_linear` uses "linear", the expert loops "experts"). Not for tensors that
    autograd saves (the next call overwrites them)."""
    key = (slot, torch.device(device), dtype)
    buf = _SCRATCH.bufs.get(key)
    if buf is None or buf.numel() < numel:
        _SCRATCH.bufs.pop(key, None)  # the old buffer freed before the larger one is made
        buf = _SCRATCH.bufs[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


def _records_grad(x: torch.Tensor, w: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)


def cast_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """F.linear(x, w) with w cast to x's dtype where it is used: in row blocks of at most CAST_BLOCK_ELEMENTS
    elements written into a kept buffer (an output head of 100k rows is never copied whole, no block is a
    fresh allocation); no copy when the dtypes agree or under autocast (which casts itself). With autograd
    recording the cast is a fresh tensor (autograd keeps it for the backward pass)."""
    if w.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
        return F.linear(x, w)
    if _records_grad(x, w):
        return F.linear(x, w.to(x.dtype))
    rows = max(1, CAST_BLOCK_ELEMENTS // max(w.shape[1], 1))
    buf = scratch("linear", min(rows, w.shape[0]) * w.shape[1], x.dtype, x.device)
    if w.shape[0] <= rows:
        return F.linear(x, buf.view(w.shape).copy_(w))
    out = x.new_empty(*x.shape[:-1], w.shape[0])
    for i in range(0, w.shape[0], rows):
        w_block = w[i : i + rows]
        out[..., i : i + rows] = F.linear(x, buf[: w_block.numel()].view(w_block.shape).copy_(w_block))
    return out


class Linear(nn.Linear):
    """nn.Linear (no bias) whose weight may be held narrower than the activations: cast where used."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = cast_linear(x, self.weight)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class RMSNorm(nn.Module):
    """RMSNorm in float32. cast_first=False (EMO): the weight multiplies the float32 result, then the cast;
    cast_first=True (OLMoE, Qwen, Mixtral, as Llama): the result is cast first, then multiplied."""

    def __init__(self, dim: int, eps: float, cast_first: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.cast_first = cast_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.cast_first:
            return self.weight * x32.to(dtype)
        return (self.weight * x32).to(dtype)  # weight multiply before the cast back


def norm(cfg: EmoConfig, dim: int) -> RMSNorm:
    return RMSNorm(dim, cfg.rms_norm_eps, cfg.norm_cast == "cast-first")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Attention(nn.Module):
    """GQA attention with RoPE; the family's variations: q/k/v(/o) biases, q/k RMSNorm over the whole
    projection ("full", OLMoE) or per head ("head", Qwen3), clip_qkv, a sliding window."""

    def __init__(self, cfg: EmoConfig, layer: int = 0):
        super().__init__()
        D, H, Hkv, Dh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.H, self.Hkv, self.Dh = H, Hkv, Dh
        self.q_proj = Linear(D, H * Dh, bias=cfg.qkv_bias)
        self.k_proj = Linear(D, Hkv * Dh, bias=cfg.qkv_bias)
        self.v_proj = Linear(D, Hkv * Dh, bias=cfg.qkv_bias)
        self.o_proj = Linear(H * Dh, D, bias=cfg.o_bias)
        self.qk_norm, self.clip, self.window = cfg.qk_norm, cfg.clip_qkv, cfg.window_in_layer(layer)
        if cfg.qk_norm != "none":
            self.q_norm = norm(cfg, H * Dh if cfg.qk_norm == "full" else Dh)
            self.k_norm = norm(cfg, Hkv * Dh if cfg.qk_norm == "full" else Dh)

    def forward(self, x_BTD: torch.Tensor, ctx: Context, layer: int) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        q, k, v = self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip is not None:
            q, k, v = (t.clamp(-self.clip, self.clip) for t in (q, k, v))
        q_BTHDh, k_BTHDh = q.view(B, T, self.H, self.Dh), k.view(B, T, self.Hkv, self.Dh)
        if self.qk_norm == "head":
            q_BTHDh, k_BTHDh = self.q_norm(q_BTHDh), self.k_norm(k_BTHDh)
        q_BHTDh, k_BHTDh = q_BTHDh.transpose(1, 2), k_BTHDh.transpose(1, 2)
        v_BHTDh = v.view(B, T, self.Hkv, self.Dh).transpose(1, 2)
        q_BHTDh = q_BHTDh * ctx.cos_BTDh + _rotate_half(q_BHTDh) * ctx.sin_BTDh
        k_BHTDh = k_BHTDh * ctx.cos_BTDh + _rotate_half(k_BHTDh) * ctx.sin_BTDh
        k_BHSDh, v_BHSDh = (k_BHTDh, v_BHTDh) if ctx.cache is None else ctx.cache.update(layer, k_BHTDh, v_BHTDh)
        mask_BTS, docs = ctx.attention_for(self.window)
        o_BHTDh = attend(q_BHTDh, k_BHSDh, v_BHSDh, mask_BTS, docs, self.Hkv != self.H)
        return self.o_proj(o_BHTDh.transpose(1, 2).reshape(B, T, self.H * self.Dh))


def _grouped_mm_ok(x_MD: torch.Tensor, w: torch.Tensor) -> bool:
    if x_MD.dtype not in (torch.float32, torch.bfloat16) or not grouped_mm_works(x_MD.device, x_MD.dtype):
        return False
    es = x_MD.element_size()
    return (w.shape[-1] * es) % 16 == 0 and (w.shape[-2] * es) % 16 == 0


def expert_mix(
    x_ND,
    experts_NK,
    weights_NK,
    w_gate_EFD,
    w_up_EFD,
    w_down_EDF,
    impl: str = "auto",
    norms: bool = False,
    expert_sum: str = "index-add",
):
    """sum_j w_j * down(silu(gate(x)) * up(x)) over each token's chosen experts: out_ND.

    Token-expert pairs are sorted by expert once and the tokens gathered in that order once (x_MD), shared by
    the three projections; each expert then works on its contiguous rows (views, no copies). "grouped": one
    grouped matmul per projection (torch._grouped_mm). "loop": one expert at a time, its gate and up weights
    cast (to x's dtype: weights may be held narrower) and stacked into one reused buffer, so gate and up are
    ONE matmul, and down writes straight into the output rows; no float32 copy of more than one expert's
    weights is ever made. "auto": grouped where it works and the weights are at x's dtype, else loop. With
    autograd recording (training), the loop runs out of place. For inference with the EMO sum in float32 the
    loop holds nothing of size [M, D] (the K x N pairs): each expert gathers its own tokens and adds its
    weighted outputs into out_ND (`_loop_sum`), in the order one index_add_ of every pair takes (the same sums;
    in bfloat16 that one index_add_ rounds differently, so it is kept there). With norms=True also returns
    norm_NK = ||expert_e(x_t)|| (float64) of every chosen pair, before its routing weight: the statistic
    REAP and EASY-EP need, taken from this very computation. expert_sum (model/config.py EXPERT_SUMS): one
    index_add_ of every pair (EMO, the reference's numbers) or one add per expert in ascending order (the other
    families, as transformers' per-expert loop).
    """
    N, K = experts_NK.shape
    E = w_gate_EFD.shape[0]
    flat_M = experts_NK.reshape(-1)
    order_M = torch.argsort(flat_M, stable=True)
    tok_M = order_M // K
    counts_E = torch.bincount(flat_M, minlength=E)
    w = (w_gate_EFD, w_up_EFD, w_down_EDF)
    grad = torch.is_grad_enabled() and (x_ND.requires_grad or any(t.requires_grad for t in w))
    if impl == "auto":
        same = w_gate_EFD.dtype == x_ND.dtype
        impl = "grouped" if same and _grouped_mm_ok(x_ND, w_gate_EFD) else "loop"
    full = x_ND.dtype in (torch.float32, torch.float64)  # (a bfloat16 index_add_ of all pairs rounds once)
    if impl == "loop" and not grad and expert_sum == "index-add" and full:  # inference: no [M, D] tensor at all
        weight_M = weights_NK.reshape(-1)[order_M]
        norm_M = torch.empty(N * K, dtype=torch.float64, device=x_ND.device) if norms else None
        out_ND = _loop_sum(x_ND, tok_M, counts_E.tolist(), weight_M, *w, norm_M)  # host sync: the counts
        if not norms:
            return out_ND
        norm_NK = torch.empty_like(norm_M)
        norm_NK[order_M] = norm_M
        return out_ND, norm_NK.view(N, K)
    x_MD = x_ND[tok_M]
    if impl == "grouped":
        offs_E = counts_E.cumsum(0).to(torch.int32)
        wg, wu, wd = (t.to(x_MD.dtype).transpose(-2, -1) for t in w)
        g_MF = torch._grouped_mm(x_MD, wg, offs=offs_E)
        u_MF = torch._grouped_mm(x_MD, wu, offs=offs_E)
        y_MD = torch._grouped_mm(F.silu(g_MF) * u_MF, wd, offs=offs_E)
        del g_MF, u_MF, wg, wu, wd
    elif impl == "loop":
        y_MD = (_loop_autograd if grad else _loop_inplace)(x_MD, counts_E.tolist(), *w)  # host sync: the counts
    else:
        raise ValueError(f"unknown expert implementation {impl!r}")
    del x_MD  # the gathered inputs: freed before the norms and the weighting
    norm_NK = None
    if norms:
        norm_NK = _pair_norms(y_MD, order_M).view(N, K)
    y_MD = _weighted(y_MD, weights_NK.reshape(-1)[order_M, None], inplace=not grad)  # in place: no second [M, D]
    if expert_sum == "index-add":  # EMO: one index_add_ of every pair (the reference model's numbers)
        out_ND = torch.zeros_like(x_ND).index_add_(0, tok_M, y_MD.to(x_ND.dtype))
    else:  # "expert-order": transformers' per-expert loop, bf16 equal bit for bit
        out_ND = _sum_by_expert(y_MD.to(x_ND.dtype), order_M, experts_NK)
    return (out_ND, norm_NK) if norms else out_ND


NORM_BLOCK_ROWS = 1024  # expert outputs whose float64 norms are taken at a time


def _pair_norms(y_MD: torch.Tensor, order_M: torch.Tensor) -> torch.Tensor:
    """norm_M[order_M[i]] = ||y_MD[i]|| in float64, taken NORM_BLOCK_ROWS rows at a time: the float64 copy
    the norm makes of its input is one block, not all M x D outputs (each row's norm is the same either way)."""
    norm_M = torch.empty(y_MD.shape[0], dtype=torch.float64, device=y_MD.device)
    for i in range(0, y_MD.shape[0], NORM_BLOCK_ROWS):
        j = i + NORM_BLOCK_ROWS
        norm_M[order_M[i:j]] = torch.linalg.vector_norm(y_MD[i:j], dim=-1, dtype=torch.float64)
    return norm_M


def _sum_by_expert(y_MD: torch.Tensor, order_M: torch.Tensor, experts_NK: torch.Tensor) -> torch.Tensor:
    """out_ND: each token's K weighted expert outputs added in ascending expert order, rounded after every add,
    as transformers' per-expert loop adds them (bf16 results equal it bit for bit; one index_add_ of all pairs
    would accumulate a token's outputs at another precision, and on a GPU in no fixed order)."""
    N, K = experts_NK.shape
    pos_M = torch.empty_like(order_M)
    pos_M[order_M] = torch.arange(order_M.numel(), device=order_M.device)  # where pair (n, j) sits in y_MD
    pos_NK = pos_M.view(N, K).gather(1, experts_NK.argsort(dim=1, stable=True))
    out_ND = y_MD[pos_NK[:, 0]]
    for j in range(1, K):
        out_ND = out_ND + y_MD[pos_NK[:, j]]
    return out_ND


class MLP(nn.Module):
    """A SwiGLU MLP: a dense layer's feed-forward, or Qwen2-MoE's shared expert."""

    def __init__(self, D: int, F_: int):
        super().__init__()
        self.gate_proj = Linear(D, F_, bias=False)
        self.up_proj = Linear(D, F_, bias=False)
        self.down_proj = Linear(F_, D, bias=False)

    def forward(self, x_ND: torch.Tensor, ctx: Context | None = None, layer: int = 0):
        """(out_ND, None, None): the MoE block's return with no routing."""
        return self.down_proj(F.silu(self.gate_proj(x_ND)) * self.up_proj(x_ND)), None, None


def _expert_rows(counts: list[int]) -> Iterator[tuple[int, slice]]:
    """(e, rows) of every expert with tokens: its rows of the pairs sorted by expert (counts[e] of them)."""
    start = 0
    for e, c in enumerate(counts):
        if c:
            yield e, slice(start, start + c)
            start += c


def _weighted(y_cD: torch.Tensor, weight_c1: torch.Tensor, inplace: bool) -> torch.Tensor:
    """y_cD times its routing weights: in place when allowed and the product keeps y's dtype, else a new tensor
    (float32 weights, Mixtral: a float32 product, cast by the caller)."""
    if inplace and torch.result_type(y_cD, weight_c1) == y_cD.dtype:
        return y_cD.mul_(weight_c1)
    return y_cD * weight_c1


def _loop_autograd(x_MD, counts: list[int], w_gate_EFD, w_up_EFD, w_down_EDF) -> torch.Tensor:
    """The expert loop, out of place (differentiable)."""
    parts, dt = [], x_MD.dtype
    for e, rows in _expert_rows(counts):
        xe = x_MD[rows]
        h = F.silu(xe @ w_gate_EFD[e].to(dt).t()) * (xe @ w_up_EFD[e].to(dt).t())
        parts.append(h @ w_down_EDF[e].to(dt).t())
    return torch.cat(parts) if parts else x_MD.new_zeros(0, x_MD.shape[1])


def _cast_buffers(x_MD, w_gate_EFD) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Buffers at x's dtype for one expert's stacked gate and up [2F, D] and down [D, F] when the weights are
    narrower (cast one expert at a time into the kept "experts" scratch), else None (the weights are used where
    they lie). Inference only: the next expert's cast overwrites them."""
    if w_gate_EFD.dtype == x_MD.dtype:
        return None
    F_, D = w_gate_EFD.shape[1], x_MD.shape[1]
    buf = scratch("experts", 3 * F_ * D, x_MD.dtype, x_MD.device)
    return buf[: 2 * F_ * D].view(2 * F_, D), buf[2 * F_ * D :].view(D, F_)


def _expert_hidden(x_cD, e: int, w_gate_EFD, w_up_EFD, w_down_EDF, bufs) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(gate) * up of expert e for its rows x_cD (gate and up one matmul when cast into bufs), and the
    expert's down weight [D, F] at x's dtype."""
    if bufs is None:
        g_cF, u_cF = torch.mm(x_cD, w_gate_EFD[e].t()), torch.mm(x_cD, w_up_EFD[e].t())
        return F.silu(g_cF).mul_(u_cF), w_down_EDF[e]
    w_2FD, w_DF = bufs
    F_ = w_gate_EFD.shape[1]
    w_2FD[:F_].copy_(w_gate_EFD[e])
    w_2FD[F_:].copy_(w_up_EFD[e])
    w_DF.copy_(w_down_EDF[e])
    gu_c2F = torch.mm(x_cD, w_2FD.t())
    return F.silu(gu_c2F[:, :F_]).mul_(gu_c2F[:, F_:]), w_DF


def _loop_inplace(x_MD, counts: list[int], w_gate_EFD, w_up_EFD, w_down_EDF) -> torch.Tensor:
    """The expert loop for inference, in place: each expert's rows of x_MD (a view) through gate and up, then
    down straight into its output rows (`_expert_hidden`)."""
    y_MD = torch.empty_like(x_MD)
    bufs = _cast_buffers(x_MD, w_gate_EFD)
    for e, rows in _expert_rows(counts):
        h_cF, w_DF = _expert_hidden(x_MD[rows], e, w_gate_EFD, w_up_EFD, w_down_EDF, bufs)
        torch.mm(h_cF, w_DF.t(), out=y_MD[rows])
    return y_MD


def _loop_sum(x_ND, tok_M, counts: list[int], weight_M, w_gate_EFD, w_up_EFD, w_down_EDF, norm_M=None) -> torch.Tensor:
    """out_ND of the EMO sum for inference, one expert at a time and nothing of size [M, D]: each expert's
    tokens gathered (c rows), through gate and up (one matmul; narrower weights cast into reused buffers)
    and down, the output's norms written to norm_M (float64, in sorted pair order) when given, weighted and
    index-added into out_ND. Experts are added in ascending order, pairs in sorted order within each: the
    order one index_add_ of every sorted pair takes, so the sums are the same."""
    out_ND = torch.zeros_like(x_ND)
    bufs = _cast_buffers(x_ND, w_gate_EFD)
    for e, rows in _expert_rows(counts):
        tok_c = tok_M[rows]
        h_cF, w_DF = _expert_hidden(x_ND[tok_c], e, w_gate_EFD, w_up_EFD, w_down_EDF, bufs)
        y_cD = torch.mm(h_cF, w_DF.t())
        if norm_M is not None:
            norm_M[rows] = torch.linalg.vector_norm(y_cD, dim=-1, dtype=torch.float64)
        y_cD = _weighted(y_cD, weight_M[rows, None], inplace=True)
        out_ND.index_add_(0, tok_c, y_cD.to(x_ND.dtype))
    return out_ND


class MoE(nn.Module):
    def __init__(self, cfg: EmoConfig, layer: int):
        super().__init__()
        E, D, F_ = cfg.experts_in_layer(layer), cfg.hidden_size, cfg.intermediate_size
        self.n_experts, self.n_shared = E, cfg.num_shared_experts
        self.top_k, self.norm_topk_prob = cfg.top_k_in_layer(layer), cfg.norm_topk_prob
        self.rule, self.expert_sum = cfg.routing, cfg.expert_sum
        self.gate = Linear(D, E, bias=False)
        self.w_gate_EFD = nn.Parameter(torch.empty(E, F_, D))
        self.w_up_EFD = nn.Parameter(torch.empty(E, F_, D))
        self.w_down_EDF = nn.Parameter(torch.empty(E, D, F_))
        if cfg.shared_expert_intermediate_size:  # Qwen2-MoE: sigmoid(gate(x)) * MLP(x), outside the routing
            self.shared_expert = MLP(D, cfg.shared_expert_intermediate_size)
            self.shared_expert_gate = Linear(D, 1, bias=False)
        self.impl = "auto"

    def forward(self, x_ND: torch.Tensor, ctx: Context, layer: int):
        """(out_ND, routing, norm_NK or None) for N tokens."""
        r = route(
            self.gate(x_ND),
            self.n_shared,
            self.top_k,
            self.norm_topk_prob,
            ctx.segment_ids_N,
            ctx.pool_for(layer),
            self.rule,
        )
        w = (self.w_gate_EFD, self.w_up_EFD, self.w_down_EDF)
        x_in = x_ND
        if torch.is_autocast_enabled(x_ND.device.type):  # autocast does not cover grouped matmuls: cast here
            x_in = x_ND.to(torch.get_autocast_dtype(x_ND.device.type))  # (expert_mix casts the weights)
        out = expert_mix(
            x_in, r.experts_NK, r.weights_NK, *w, self.impl, norms=ctx.expert_norms, expert_sum=self.expert_sum
        )
        out_ND, norm_NK = out if ctx.expert_norms else (out, None)
        out_ND = out_ND.to(x_ND.dtype)
        if hasattr(self, "shared_expert"):
            out_ND = out_ND + torch.sigmoid(self.shared_expert_gate(x_ND)) * self.shared_expert(x_ND)[0]
        return out_ND, r, norm_NK


class DecoderLayer(nn.Module):
    def __init__(self, cfg: EmoConfig, layer: int):
        super().__init__()
        self.pre_attention_layernorm = norm(cfg, cfg.hidden_size)
        self.self_attn = Attention(cfg, layer)
        self.pre_feedforward_layernorm = norm(cfg, cfg.hidden_size)
        self.mlp = MoE(cfg, layer) if cfg.is_moe_layer(layer) else MLP(cfg.hidden_size, cfg.dense_intermediate_size)

    def forward(self, x_BTD: torch.Tensor, ctx: Context, layer: int) -> tuple[torch.Tensor, Routing | None]:
        """The layer's output and routing (None in a dense layer); calls ctx.trace with everything an MoE layer
        computed."""
        B, T, D = x_BTD.shape
        h_BTD = x_BTD + self.self_attn(self.pre_attention_layernorm(x_BTD), ctx, layer)
        xn_ND = self.pre_feedforward_layernorm(h_BTD).reshape(B * T, D)
        moe_ND, routing, norm_NK = self.mlp(xn_ND, ctx, layer)
        y_BTD = h_BTD + moe_ND.view(B, T, D)
        if ctx.trace is not None and routing is not None:
            ctx.trace(LayerTrace(layer, routing, h_BTD, xn_ND, y_BTD, norm_NK))
        return y_BTD, routing


class EmoBackbone(nn.Module):
    def __init__(self, cfg: EmoConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = norm(cfg, cfg.hidden_size)


class EmoForCausalLM(nn.Module):
    """model(input_ids [B, T], ...) -> logits [B, T, V]. Right padding is safe (attention is causal);
    left padding needs `attention_mask` [B, S]."""

    def __init__(self, cfg: EmoConfig):
        super().__init__()
        self.config = cfg
        self.model = EmoBackbone(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.compute_dtype: torch.dtype | None = None  # None: the embedding's dtype; else weights are cast to it

    def embed(self, input_ids_BT: torch.Tensor) -> torch.Tensor:
        x_BTD = self.model.embed_tokens(input_ids_BT)
        return x_BTD if self.compute_dtype is None else x_BTD.to(self.compute_dtype)

    def head(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model.norm(x_BTD))

    def hidden_states(self, input_ids_BT: torch.Tensor, routings: list | None = None, **inputs) -> torch.Tensor:
        """Final hidden states [B, T, D] (before the norm); inputs as `make_context` takes them."""
        x_BTD = self.embed(input_ids_BT)
        ctx = make_context(self.config, input_ids_BT, dtype=x_BTD.dtype, **inputs)
        for layer, module in enumerate(self.model.layers):
            x_BTD, r = module(x_BTD, ctx, layer)
            if routings is not None:
                routings.append(r)
        return x_BTD

    def forward(
        self,
        input_ids_BT: torch.Tensor,
        *,
        position_ids_BT: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        document_ids_BT: torch.Tensor | None = None,
        cache: KVCache | None = None,
        pool_size=None,
        trace=None,
        return_routing: bool = False,
    ):
        """Logits [B, T, V], or {"logits", "routing"} with return_routing.

        position_ids_BT: positions (default: after the cache's). attention_mask: [B, S] padding mask
        (1 = real token) or a full boolean [B, T, S] mask. document_ids_BT: attend within documents.
        cache: a KVCache, extended in place. pool_size: None (reference inference routing), an int (fixed
        document pool), or a callable (layer, num_segments) -> sizes drawn per layer (pretraining).
        trace: called with each layer's LayerTrace."""
        routings: list[Routing] | None = [] if return_routing else None
        x_BTD = self.hidden_states(
            input_ids_BT,
            routings,
            position_ids_BT=position_ids_BT,
            attention_mask=attention_mask,
            document_ids_BT=document_ids_BT,
            cache=cache,
            pool_size=pool_size,
            trace=trace,
        )
        logits = self.head(x_BTD)
        return {"logits": logits, "routing": routings} if return_routing else logits

    def set_expert_impl(self, impl: str) -> None:
        """'auto' (grouped matmul where possible), 'grouped' or 'loop'."""
        for layer in self.model.layers:
            layer.mlp.impl = impl

    def hf_state_dict(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF tensor name, tensor) in checkpoint order, experts unstacked (views, no copies)."""
        yield from stacked_to_hf(self.state_dict(), self.config)


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
