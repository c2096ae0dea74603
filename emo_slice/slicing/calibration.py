"""Calibration input for profiling: documents or a k-shot prompt, tokenised into rows and padded batches."""

from __future__ import annotations

from pathlib import Path

import torch

from emo_slice.errors import DataError, UsageError


def calibration_texts(
    src: str, field: str = "text", split: str | None = None, shots: int | None = None, seed: int = 0
) -> tuple[list[str], dict]:
    """Documents from a .txt / JSONL / dataset, or (shots given) one k-shot prompt of a multiple-choice task
    with the gold answers appended."""
    from emo_slice.data.sources import file_hash, items_hash

    p = Path(src).expanduser()
    desc: dict = {"source": str(src), "file_hash": file_hash(p) if p.is_file() else None}
    if shots is not None:
        from emo_slice.data.sources import fewshot_prompt, split_fewshot
        from emo_slice.data.tasks import load_items

        if shots < 1:
            raise UsageError(f"--shots {shots}: give at least 1 demonstration (or leave --shots out to read text)")
        items, fmt = load_items(str(src), None, "auto", split)
        demos = items if shots >= len(items) else split_fewshot(items, shots, seed)[0]
        desc.update(
            kind="multiple-choice",
            format=fmt,
            shots=len(demos),
            seed=seed,
            ids=[d.id for d in demos],
            items_hash=items_hash(demos),
        )
        return [fewshot_prompt(demos)], desc
    from emo_slice.data.sources import read_texts

    texts = read_texts(src, field, split, "--examples")
    desc.update(kind="text", field=field, split=split, documents=len(texts))
    return texts, desc


def make_rows(tok, texts: list[str], max_length: int) -> list[list[int]]:
    """Each document's tokens, cut into rows of at most max_length."""
    rows = []
    for text in texts:
        ids = tok.encode(text)
        rows.extend(ids[i : i + max_length] for i in range(0, len(ids), max_length))
    rows = [r for r in rows if r]
    if not rows:
        raise DataError("--examples gave no tokens; give a file with some text")
    return rows


def make_batches(rows: list[list[int]], pad_id: int, special: set[int], max_batch_tokens: int = 1024):
    """(ids_BT, valid_BT) batches of rows of similar length, right-padded; valid excludes pad and specials."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * len(rows[i]) > max_batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    out = []
    for b in batches:
        T = max(len(rows[i]) for i in b)
        ids_BT = torch.full((len(b), T), pad_id, dtype=torch.long)
        valid_BT = torch.zeros(len(b), T, dtype=torch.bool)
        for j, i in enumerate(b):
            ids_BT[j, : len(rows[i])] = torch.tensor(rows[i])
            valid_BT[j, : len(rows[i])] = True
        for s in special:
            valid_BT &= ids_BT != s
        out.append((ids_BT, valid_BT))
    return out
