"""Requests: items and documents turned into scored rows (token ids, positions, branches, targets) and batches.

Multiple choice: an item's context ONCE followed by all its choices (a tree row: each choice attends to
the context and to itself only, its positions restart right after the context); language modelling:
documents prefixed with EOS, one per row or packed, cut into disjoint windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from emo_slice.data.sources import MCItem
from emo_slice.errors import DataError, UsageError


@dataclass
class Row:
    """One sequence: tokens, their positions, their branch (0 = shared prefix, c+1 = choice c),
    and the scored (predictor index, target token) pairs, grouped in spans (one per choice)."""

    ids: list[int]
    pos: list[int]
    branch: list[int]
    pred: list[int]
    target: list[int]
    spans: list[tuple[int, int]]  # [start, end) into pred/target, one per scored continuation
    unit: int = 1  # progress units (items) this row stands for


@dataclass
class Batch:
    ids_BT: torch.Tensor
    pos_BT: torch.Tensor | None
    mask_BTT: torch.Tensor | None
    pred_b: torch.Tensor
    pred_t: torch.Tensor
    targets_P: torch.Tensor
    rows: list[int]  # indices of the rows it holds
    n_tokens: int
    n_units: int


def make_batches(rows: list[Row], batch_size: int, pad_id: int = 0, max_batch_tokens: int | None = None) -> list[Batch]:
    """Rows sorted by length (less padding), at most batch_size rows (and max_batch_tokens padded
    tokens) per batch, right padded. Tree rows get a [B, T, T] mask and per-row positions."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].ids))
    groups, cur = [], []
    for i in order:
        T = len(rows[cur[0]].ids) if cur else len(rows[i].ids)
        if cur and (len(cur) >= batch_size or (max_batch_tokens and (len(cur) + 1) * T > max_batch_tokens)):
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    batches = []
    for g in groups:
        T = max(len(rows[i].ids) for i in g)
        B = len(g)
        ids = torch.full((B, T), pad_id, dtype=torch.long)
        pos = torch.zeros(B, T, dtype=torch.long)
        br = torch.full((B, T), -1, dtype=torch.long)
        pb, pt, tg = [], [], []
        tree = any(max(rows[i].branch) > 0 for i in g)
        for b, i in enumerate(g):
            r = rows[i]
            n = len(r.ids)
            ids[b, :n] = torch.tensor(r.ids)
            pos[b, :n] = torch.tensor(r.pos)
            pos[b, n:] = torch.arange(T - n) + (max(r.pos) + 1)
            br[b, :n] = torch.tensor(r.branch)
            pb += [b] * len(r.pred)
            pt += r.pred
            tg += r.target
        mask = None
        if tree:  # causal, and a choice's tokens see the prefix (branch 0) and their own branch only
            causal_TT = torch.ones(T, T, dtype=torch.bool).tril()
            same = (br[:, None, :] == 0) | (br[:, None, :] == br[:, :, None])
            mask = causal_TT[None] & same & (br[:, None, :] >= 0)
            mask |= torch.eye(T, dtype=torch.bool)[None]  # padding attends to itself (no empty rows)
        batches.append(
            Batch(
                ids,
                pos if tree else None,
                mask,
                torch.tensor(pb, dtype=torch.long),
                torch.tensor(pt, dtype=torch.long),
                torch.tensor(tg, dtype=torch.long),
                g,
                sum(len(rows[i].ids) for i in g),
                sum(rows[i].unit for i in g),
            )
        )
    return batches


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-evaluation-harness: trailing whitespace of the context belongs to the continuation."""
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


@dataclass
class Encoded:
    """An item's context and choices as token ids (context already cut to fit), plus the scored texts."""

    ctx: list[int]
    conts: list[list[int]]
    texts: list[str]  # scored continuation texts (choice + moved whitespace)
    truncated: bool


def encode_item(tok, item: MCItem, max_length: int, prefix: str = "", where: str = "") -> Encoded:
    ctx_text = prefix + item.context
    pairs = [split_pair(ctx_text, c) for c in item.choices]
    ctx = tok.encode(pairs[0][0])
    if not ctx:  # nothing to condition on: start from EOS, as lm-eval does
        ctx = [tok.eos_token_id if tok.eos_token_id is not None else 0]
    conts = [tok.encode(p[1]) for p in pairs]
    for c, ids in enumerate(conts):
        if not ids:
            raise DataError(f"{where}: choice {c} is empty; every choice needs some text")
        if len(ids) >= max_length:
            raise DataError(
                f"{where}: choice {c} is {len(ids)} tokens, as long as the model's context "
                f"({max_length}); raise --max-length or drop the item"
            )
    room = max_length - max(len(c) for c in conts)
    truncated = len(ctx) > room
    return Encoded(ctx[-room:] if truncated else ctx, conts, [p[1] for p in pairs], truncated)


def tree_row(enc: Encoded) -> Row:
    """Context once, then every choice; each choice's positions restart after the context."""
    C = len(enc.ctx)
    ids, pos, branch = list(enc.ctx), list(range(C)), [0] * C
    pred, target, spans = [], [], []
    for c, cont in enumerate(enc.conts):
        start = len(ids)
        ids += cont
        pos += range(C, C + len(cont))
        branch += [c + 1] * len(cont)
        s = len(pred)
        pred += [C - 1] + list(range(start, start + len(cont) - 1))
        target += cont
        spans.append((s, len(pred)))
    return Row(ids, pos, branch, pred, target, spans)


def naive_rows(enc: Encoded) -> list[Row]:
    """One row per choice: context + choice (the naive way; the benchmark's baseline)."""
    rows = []
    C = len(enc.ctx)
    for cont in enc.conts:
        ids = enc.ctx + cont
        rows.append(
            Row(
                ids,
                list(range(len(ids))),
                [0] * len(ids),
                list(range(C - 1, len(ids) - 1)),
                list(cont),
                [(0, len(cont))],
            )
        )
    return rows


def lm_rows(tok, docs: list[str], max_length: int, mode: str = "rows") -> tuple[list[Row], int]:
    """Rows for perplexity: each document prefixed with EOS; "rows" one document per row, "packed"
    all documents end to end. Streams longer than max_length are cut into disjoint windows (each
    window's first target is predicted from the previous window's last token). Returns (rows, windows cut)."""
    if mode not in ("rows", "packed"):
        raise UsageError(f"--lm-mode {mode!r} is unknown; choose rows or packed")
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    streams, scored = [], []
    for d in docs:
        ids = [eos] + tok.encode(d)
        flags = [False] + [True] * (len(ids) - 1)  # the EOS separator is input, never a target
        if mode == "rows" or not streams:
            streams.append(ids)
            scored.append(flags)
        else:
            streams[-1] += ids
            scored[-1] += flags
    rows, cut = [], 0
    for ids, flags in zip(streams, scored):
        windows = range(0, max(1, len(ids) - 1), max_length)
        cut += len(windows) - 1
        for s in windows:
            inp = ids[s : s + max_length]
            pred = [t for t in range(len(inp)) if s + t + 1 < len(ids) and flags[s + t + 1]]
            tgt = [ids[s + t + 1] for t in pred]
            if pred:
                rows.append(Row(inp, list(range(len(inp))), [0] * len(inp), pred, tgt, [(0, len(pred))]))
    return rows, cut
