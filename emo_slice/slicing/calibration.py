"""Calibration input for profiling: documents or a k-shot prompt, tokenised into rows and padded batches."""

from __future__ import annotations

from pathlib import Path

import torch

from emo_slice.data.sources import fewshot_prompt, file_hash, items_hash, read_texts, split_fewshot
from emo_slice.data.tasks import load_items
from emo_slice.errors import DataError, UsageError


def calibration_texts(
    src: str, field: str = "text", split: str | None = None, shots: int | None = None, seed: int = 0
) -> tuple[list[str], dict]:
    """Documents from a .txt / JSONL / dataset, or (shots given) one k-shot prompt of a multiple-choice task
    with the gold answers appended."""
    p = Path(src).expanduser()
    desc: dict = {"source": str(src), "file_hash": file_hash(p) if p.is_file() else None}
    if shots is not None:
        if shots < 1:
            raise UsageError(f"--shots {shots}: give at least 1 demonstration (or leave --shots out to read text)")
        items, fmt = load_items(str(src), None, "auto", split)
        if shots > len(items):
            raise UsageError(
                f"--shots {shots} is more than the {len(items)} items of {src}; choose at most {len(items)} "
                "(that many uses every item)"
            )
        demos = items if shots == len(items) else split_fewshot(items, shots, seed)[0]
        desc.update(
            kind="multiple-choice",
            format=fmt,
            shots=len(demos),
            seed=seed,
            ids=[d.id for d in demos],
            items_hash=items_hash(demos),
        )
        return [fewshot_prompt(demos)], desc

    texts = read_texts(src, field, split, "--examples")
    desc.update(kind="text", field=field, split=split, documents=len(texts))
    return texts, desc


def make_rows(tok, texts: list[str], max_length: int) -> list[torch.Tensor]:
    """Each document's tokens, cut into rows of at most max_length (int32 tensors: 4 bytes a token)."""
    rows = []
    for text in texts:
        ids = tok.encode(text)
        if ids:
            rows.extend(torch.tensor(ids, dtype=torch.int32).split(max_length))
    if not rows:
        raise DataError("--examples gave no tokens; give a file with some text")
    return rows


def batch_groups(rows: list, max_batch_tokens: int = 1024) -> list[list[int]]:
    """Row indices per batch: rows of similar length (sorted), at most max_batch_tokens padded tokens a batch
    (a longer row is a batch of its own)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    groups, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * len(rows[i]) > max_batch_tokens:
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    return groups


def pad_batch(rows: list, group: list[int], pad_id: int, special: set[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids_BT, valid_BT) of one group, right-padded; valid excludes pad and special tokens."""
    T = max(len(rows[i]) for i in group)
    ids_BT = torch.full((len(group), T), pad_id, dtype=torch.long)
    valid_BT = torch.zeros(len(group), T, dtype=torch.bool)
    for j, i in enumerate(group):
        ids_BT[j, : len(rows[i])] = torch.as_tensor(rows[i])
        valid_BT[j, : len(rows[i])] = True
    for s in special:
        valid_BT &= ids_BT != s
    return ids_BT, valid_BT


def group_tokens(rows: list, group: list[int]) -> int:
    """Padded tokens of a batch: what its activations take."""
    return len(group) * max(len(rows[i]) for i in group)


def chunk_groups(rows: list, groups: list[list[int]], max_tokens: int) -> list[list[list[int]]]:
    """Consecutive batches, at most max_tokens padded tokens a chunk (at least one batch a chunk)."""
    chunks, cur, n = [], [], 0
    for g in groups:
        t = group_tokens(rows, g)
        if cur and n + t > max_tokens:
            chunks.append(cur)
            cur, n = [], 0
        cur.append(g)
        n += t
    if cur:
        chunks.append(cur)
    return chunks
