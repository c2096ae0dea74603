"""What a decoder layer needs besides its input, built once per forward: RoPE, attention mask, KV cache,
routing segments and the document pool, and the per-layer trace hook.

`make_context` turns the forward's inputs into a `Context`:
- positions: `position_ids_BT`, or past + 0..T-1 (past = tokens already in the KV cache);
- attention: causal by default (the fast `is_causal` kernel when nothing else is asked); a padding mask
  `attention_mask` [B, S] (1 = a real token, Hugging Face style, S = past + T), a full boolean mask
  [B, T, S] (used as given: tree rows of the multiple-choice scorer), or `document_ids_BT` (attend only
  within the same document, as EMO pretraining does). Every query always sees itself, so a padding
  query never has an empty row (no NaN);
- routing: with `pool_size` (an int, a tensor per segment, or a callable `(layer, num_segments) ->
  sizes`), each document segment routes inside its own top-P pool (the EMO pretraining spec).

Shape letters: see the legend in `emo_slice/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from emo_slice.model.attention import DocumentMask
from emo_slice.model.config import EmoConfig
from emo_slice.model.routing import Routing, routing_segments


class KVCache:
    """Keys and values of every position seen so far, per layer: [B, Hkv, S, Dh] each.

    Pass the same object to successive forwards: each appends its T new positions. `seq_len` is the
    number of cached positions (read before a forward: its queries start there).
    """

    def __init__(self) -> None:
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    @property
    def seq_len(self) -> int:
        return self.k[0].shape[2] if 0 in self.k else 0

    def update(self, layer: int, k_BHTDh: torch.Tensor, v_BHTDh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer in self.k:
            k_BHTDh = torch.cat([self.k[layer], k_BHTDh], dim=2)
            v_BHTDh = torch.cat([self.v[layer], v_BHTDh], dim=2)
        self.k[layer], self.v[layer] = k_BHTDh, v_BHTDh
        return k_BHTDh, v_BHTDh


@dataclass
class LayerTrace:
    """What one decoder layer computed, handed to a trace hook (profiling statistics come from here).

    h_BTD is the residual stream entering the MoE block, x_ND the MoE input (normed h), y_BTD the layer
    output (h + MoE(x)); expert_norm_NK is ||expert_e(x_t)|| for each chosen (token, expert) pair before
    its routing weight, present when the context asked for it.
    """

    layer: int
    routing: Routing
    h_BTD: torch.Tensor
    x_ND: torch.Tensor
    y_BTD: torch.Tensor
    expert_norm_NK: torch.Tensor | None


@dataclass
class Context:
    cos_BTDh: torch.Tensor  # [B or 1, 1, T, Dh]: broadcast over heads
    sin_BTDh: torch.Tensor
    mask_BTS: torch.Tensor | None  # bool [B, 1, T, S], True = attend; None = plain causal, no past
    cache: KVCache | None = None
    segment_ids_N: torch.Tensor | None = None
    num_segments: int = 0
    pool_size: int | torch.Tensor | Callable[[int, int], torch.Tensor] | None = None
    trace: Callable[[LayerTrace], None] | None = None
    expert_norms: bool = False  # compute LayerTrace.expert_norm_NK
    documents: DocumentMask | None = None  # causal within documents (no dense mask until a kernel needs one)
    mask_inputs: tuple | None = None  # what the mask was made from: a sliding window's mask is made from it too
    windowed: dict = field(default_factory=dict)  # window -> its mask, made on first use (shared by layers)

    def attention_for(self, window: int | None):
        """(mask_BTS, documents) for a layer attending within a sliding window (None: no window). A window at
        least as long as the keys changes nothing; a shorter one gets an explicit mask, made once."""
        if window is None or self.mask_inputs is None or self.mask_inputs[2] + self.mask_inputs[1] <= window:
            return self.mask_BTS, self.documents
        if window not in self.windowed:
            self.windowed[window] = _attention_mask(*self.mask_inputs, window=window)
        return self.windowed[window], None

    def pool_for(self, layer: int):
        """The pool size(s) of this layer: drawn per layer when pool_size is a callable."""
        if callable(self.pool_size):
            return self.pool_size(layer, self.num_segments)
        return self.pool_size

    def without_trace(self) -> "Context":
        return replace(self, trace=None, expert_norms=False)


def rope_cos_sin(positions, head_dim: int, theta: float, dtype: torch.dtype, device=None):
    """cos, sin [..., Dh] for integer positions (float32 maths, cast to the activations' dtype).

    positions: an int T (positions 0..T-1, giving [T, Dh]) or an integer tensor of any shape."""
    if isinstance(positions, int):
        positions = torch.arange(positions, device=device)
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim)
    )
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def make_context(
    config: EmoConfig,
    input_ids_BT: torch.Tensor,
    *,
    dtype: torch.dtype,
    position_ids_BT: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    document_ids_BT: torch.Tensor | None = None,
    cache: KVCache | None = None,
    pool_size=None,
    trace: Callable[[LayerTrace], None] | None = None,
    expert_norms: bool = False,
) -> Context:
    B, T = input_ids_BT.shape
    device = input_ids_BT.device
    past = cache.seq_len if cache is not None else 0
    if position_ids_BT is None:
        position_ids_BT = torch.arange(past, past + T, device=device)[None]
    cos, sin = rope_cos_sin(position_ids_BT, config.head_dim, config.rope_theta, dtype)
    docs = None
    windowed = any(config.window_in_layer(l) is not None for l in range(config.num_hidden_layers))
    mask_inputs = (B, T, past, device, attention_mask, document_ids_BT) if windowed else None
    if document_ids_BT is not None and attention_mask is None and past == 0 and cache is None:
        docs, document_ids_BT = DocumentMask(document_ids_BT), None  # the kernel picks dense mask or flex
    mask = _attention_mask(B, T, past, device, attention_mask, document_ids_BT)
    seg_N, G = None, 0
    if pool_size is not None:
        if past or cache is not None:
            raise ValueError("a document pool needs whole documents: it cannot be combined with a KV cache")
        seg_N = routing_segments(input_ids_BT, config.eos_token_id).reshape(-1)
        G = getattr(pool_size, "num_segments", None)  # a pretraining draw knows it: no host sync
        if G is None:
            G = int(seg_N.max()) + 1 if seg_N.numel() else 0  # host sync, once per forward (not per layer)
    return Context(cos[:, None], sin[:, None], mask, cache, seg_N, G, pool_size, trace, expert_norms, docs, mask_inputs)


def _attention_mask(
    B: int, T: int, past: int, device, attention_mask, document_ids_BT, window: int | None = None
) -> torch.Tensor | None:
    """Boolean [B, 1, T, S] (True = attend), or None for plain causal attention over T positions. window: keys
    more than window - 1 positions before the query are masked too (transformers' sliding window)."""
    S = past + T
    q_T = torch.arange(past, S, device=device)
    k_S = torch.arange(S, device=device)
    band_TS = None if window is None else k_S[None, :] > q_T[:, None] - window
    if attention_mask is not None and attention_mask.dim() == 3:
        mask_BTS = attention_mask.bool()
        if mask_BTS.shape[-1] != S:
            raise ValueError(f"attention_mask covers {mask_BTS.shape[-1]} keys but there are {S} (cached + new)")
        return (mask_BTS if band_TS is None else mask_BTS & band_TS)[:, None]
    if attention_mask is None and document_ids_BT is None and past == 0 and window is None:
        return None
    mask_BTS = (k_S[None, :] <= q_T[:, None])[None].expand(B, T, S)
    if attention_mask is not None:
        if attention_mask.shape != (B, S):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected [B, S] = {(B, S)}")
        mask_BTS = mask_BTS & attention_mask.bool()[:, None, :]
    if document_ids_BT is not None:
        if past:
            raise ValueError("document_ids cannot be combined with a KV cache; pass a full attention_mask")
        mask_BTS = mask_BTS & (document_ids_BT[:, :, None] == document_ids_BT[:, None, :])
    if band_TS is not None:
        mask_BTS = mask_BTS & band_TS
    mask_BTS = mask_BTS | (k_S[None, :] == q_T[:, None])[None]  # a query always sees itself: no empty row
    return mask_BTS[:, None]
