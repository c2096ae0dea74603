"""Representations derived from the router logits (EMO's transform step), streamed over the memory map.

Per token, per layer (columns of one layer side by side): probabilities p = softmax over the layer's routed
experts (the routing's own softmax), and top-k indicators (1 for the k' routed experts the token uses).
Per document: their means over the document's tokens. Per domain: the token-weighted mean of the
top-k indicators, i.e. the share of the domain's tokens that each expert serves (the usage map).
Nothing holds more than `chunk` tokens' rows at once.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

CHUNK = 16_384  # token rows per step (16k x 2048 columns x 4 bytes = 128 MiB)


def chunks(n: int, size: int = CHUNK) -> Iterator[tuple[int, int]]:
    for a in range(0, n, size):
        yield a, min(n, a + size)


def probs(z_NC: np.ndarray, cols: list[int]) -> np.ndarray:
    """Softmax over each layer's routed experts, float32 [N, C]."""
    out = np.empty(z_NC.shape, dtype=np.float32)
    for c0, c1 in zip(cols[:-1], cols[1:]):
        if c1 > c0:
            z = z_NC[:, c0:c1].astype(np.float32)
            z -= z.max(axis=1, keepdims=True)
            np.exp(z, out=z)
            out[:, c0:c1] = z / z.sum(axis=1, keepdims=True)
    return out


def topk(z_NC: np.ndarray, cols: list[int], k: list[int]) -> np.ndarray:
    """1 where the expert is among the token's k' highest logits of its layer (the experts it uses), uint8. Equal
    logits (ties) may be broken otherwise than the routing's own top-k."""
    out = np.zeros(z_NC.shape, dtype=np.uint8)
    for l, (c0, c1) in enumerate(zip(cols[:-1], cols[1:])):
        if c1 > c0 and k[l] > 0:
            z = z_NC[:, c0:c1].astype(np.float32)
            idx = np.argpartition(-z, k[l] - 1, axis=1)[:, : k[l]]
            np.put_along_axis(out[:, c0:c1], idx, 1, axis=1)
    return out


def _segment_sums(vals: np.ndarray, doc_N: np.ndarray, out: np.ndarray) -> None:
    """out[d] += the sum of vals' rows of document d (rows come in document order)."""
    starts = np.flatnonzero(np.r_[True, doc_N[1:] != doc_N[:-1]])
    out[doc_N[starts]] += np.add.reduceat(vals, starts, axis=0, dtype=np.float64)


def document_means(logits, offsets: np.ndarray, cols: list[int], k: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(mean probabilities, top-k frequency) of each document, float32 [docs, C] each."""
    n_docs, C = len(offsets) - 1, logits.shape[1]
    doc_N = np.repeat(np.arange(n_docs), np.diff(offsets))
    p_sum, f_sum = np.zeros((n_docs, C)), np.zeros((n_docs, C))
    for a, b in chunks(logits.shape[0]):
        z = np.asarray(logits[a:b])
        _segment_sums(probs(z, cols), doc_N[a:b], p_sum)
        _segment_sums(topk(z, cols, k), doc_N[a:b], f_sum)
    n = np.maximum(np.diff(offsets), 1)[:, None]
    return (p_sum / n).astype(np.float32), (f_sum / n).astype(np.float32)


def domain_usage(doc_values: np.ndarray, offsets: np.ndarray, doc_domain: np.ndarray, n_domains: int) -> np.ndarray:
    """Token-weighted mean of per-document values over each domain's documents, [domains, C] (float64)."""
    n = np.diff(offsets).astype(np.float64)
    out = np.zeros((n_domains, doc_values.shape[1]))
    for d in range(n_domains):
        m = doc_domain == d
        if m.any():
            out[d] = (doc_values[m] * n[m, None]).sum(0) / n[m].sum()
    return out


def order_by_domain(usage_DC: np.ndarray, cols: list[int]) -> list[list[int]]:
    """Per layer, its experts (0..R-1) ordered by dominant domain (the domain that uses it most), then by how
    much of the expert's use that domain takes (most specialised first)."""
    order = []
    for c0, c1 in zip(cols[:-1], cols[1:]):
        u = usage_DC[:, c0:c1]
        dom = u.argmax(0)
        share = u.max(0) / np.maximum(u.sum(0), 1e-12)
        order.append(sorted(range(c1 - c0), key=lambda e: (int(dom[e]), -float(share[e]), e)))
    return order
