"""Attention kernels of the decoder layer: plain causal, an explicit mask, or causal within documents.

EMO pretraining attends only within documents (the EMO pretraining spec). Two ways to compute that, equal
up to rounding (tests/model/test_attention.py):
- "sdpa": `scaled_dot_product_attention` with a dense boolean mask [B, 1, T, T] (causal AND same document).
  Works everywhere; on GPUs a dense mask rules out the flash kernels, and the mask grows as T^2.
- "flex": `torch.nn.attention.flex_attention` with a document BlockMask (built once per forward from the
  document ids and shared by every layer): fully masked 128 x 128 blocks are skipped and no [T, T] mask
  exists. Compiled (`torch.compile(flex_attention)`) on GPUs; on CPUs flex has no backward, so it is only
  used there when asked for explicitly (tests compare its forward with "sdpa").
"auto" (the default) takes flex on CUDA when this torch has it, else sdpa. `set_document_attention` (or
the `document_attention` context manager) chooses; `emo-slice pretrain --set attention=...` sets it.

Shape letters: see the legend in `emo_slice/__init__.py`.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "flex", "sdpa")
_state = {"backend": "auto"}


def flex_available() -> bool:
    """Whether this torch has flex_attention (torch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def set_document_attention(backend: str) -> None:
    """Choose how document-masked attention runs: 'auto', 'flex' or 'sdpa' (process-wide)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown document attention {backend!r}; choose one of {', '.join(BACKENDS)}")
    _state["backend"] = backend


@contextlib.contextmanager
def document_attention(backend: str):
    """`set_document_attention(backend)` for the duration of a block."""
    before = _state["backend"]
    set_document_attention(backend)
    try:
        yield
    finally:
        _state["backend"] = before


def document_backend(device: torch.device) -> str:
    """'flex' or 'sdpa': what document-masked attention on `device` runs with under the current setting."""
    backend = _state["backend"]
    if backend == "auto":
        return "flex" if device.type == "cuda" and flex_available() else "sdpa"
    if backend == "flex" and not flex_available():
        return "sdpa"  # torch without flex_attention: the masked SDPA path, same result
    return backend


def document_mask_mod(doc_BT: torch.Tensor):
    """flex_attention mask_mod: query q sees key kv when kv <= q and both are in the same document."""

    def mask_mod(b, h, q, kv):
        return (kv <= q) & (doc_BT[b, q] == doc_BT[b, kv])

    return mask_mod


class DocumentMask:
    """Causal attention within documents for T queries over the same T keys (no KV cache).

    doc_BT: document id of every token (non-decreasing along a row). The kernel is chosen here, once per
    forward (`document_backend` of doc_BT's device, or `backend`), and what it needs is built here: the dense
    mask or the flex BlockMask, shared by every layer (nothing is built inside a compiled layer)."""

    def __init__(self, doc_BT: torch.Tensor, backend: str | None = None):
        self.doc_BT = doc_BT
        self.backend = backend or document_backend(doc_BT.device)
        self.mask_BTS = dense_document_mask(doc_BT) if self.backend == "sdpa" else None
        self.block = document_block_mask(doc_BT) if self.backend == "flex" else None


def dense_document_mask(doc_BT: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, T, T], True = attend: causal and same document (every query sees itself)."""
    T = doc_BT.shape[1]
    t_T = torch.arange(T, device=doc_BT.device)
    causal_TT = t_T[None, :] <= t_T[:, None]
    return (causal_TT[None] & (doc_BT[:, :, None] == doc_BT[:, None, :]))[:, None]


def document_block_mask(doc_BT: torch.Tensor):
    """The flex_attention BlockMask of the same pattern (blocks of 128 x 128; fully masked ones skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, T = doc_BT.shape
    return create_block_mask(document_mask_mod(doc_BT), B, None, T, T, device=doc_BT.device)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q_BHTDh, k_BHTDh, v_BHTDh, docs: DocumentMask, gqa: bool) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    dt = torch.get_autocast_dtype(q_BHTDh.device.type) if torch.is_autocast_enabled(q_BHTDh.device.type) else None
    dt = dt or q_BHTDh.dtype  # flex is not an autocast op: give it one dtype, as SDPA's autocast would
    q, k, v = (t.to(dt) for t in (q_BHTDh, k_BHTDh, v_BHTDh))
    if q.device.type == "cpu" or torch.compiler.is_compiling():
        fn = flex_attention  # CPU: the reference implementation; inside a compiled region: traced as is
    else:
        fn = _compiled_flex()
    return fn(q, k, v, block_mask=docs.block, enable_gqa=gqa)


def attend(
    q_BHTDh: torch.Tensor,
    k_BHSDh: torch.Tensor,
    v_BHSDh: torch.Tensor,
    mask_BTS: torch.Tensor | None,
    docs: DocumentMask | None,
    gqa: bool,
) -> torch.Tensor:
    """Attention output [B, H, T, Dh]: within documents (docs), under an explicit boolean mask [B, 1, T, S]
    (mask_BTS), or plain causal (neither; T queries over the same T keys)."""
    if docs is not None:
        if docs.block is not None:
            return _flex(q_BHTDh, k_BHSDh, v_BHSDh, docs, gqa)
        mask_BTS = docs.mask_BTS
    if mask_BTS is None:
        return F.scaled_dot_product_attention(q_BHTDh, k_BHSDh, v_BHSDh, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q_BHTDh, k_BHSDh, v_BHSDh, attn_mask=mask_BTS, enable_gqa=gqa)
