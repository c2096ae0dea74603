"""Documents and the router logits of their tokens, the one primitive the expert map is derived from.

`read_documents` reads documents with their domain (a JSONL/dataset field, else the source file's name);
`capture` runs a model over them through the one forward path (`LayerwiseModel`: the whole model on the
device when it fits, else one layer at a time; its per-layer trace hook hands over the router logits the
layer computed) and streams each layer's raw routed logits into a memory-mapped `.npy` file, so a million
tokens x 16 layers x 128 experts (4 GB of float16 on disk) never sit in memory.

Files written in the capture folder:
  router_logits.npy  float16 [N, C]: token n's raw router logits, layer l's R_l routed experts in columns
                     columns[l]:columns[l+1] (shared experts are always used and left out, as in EMO's code)
  tokens.npy         int32 [N]: the token ids, documents one after another
  doc_offsets.npy    int64 [docs + 1]: document d's tokens are rows doc_offsets[d]:doc_offsets[d+1]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from emo_slice.analysis.settings import CaptureSettings  # noqa: F401 (its home is settings.py)
from emo_slice.data.sources import check_text, check_tokenizer_fits, read_records, read_texts
from emo_slice.errors import DataError, UsageError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import DEVICE, LayerwiseModel, choose_placement, default_dtype
from emo_slice.io.tokenizer import load_tokenizer
from emo_slice.model.devices import resolve_device
from emo_slice.slicing.calibration import batch_groups, chunk_groups, pad_batch

TEXT_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".parquet", ".arrow")


@dataclass(frozen=True)
class Documents:
    """Texts and the domain of each (the same list for every model mapped)."""

    texts: tuple[str, ...]
    domains: tuple[str, ...]
    inputs: dict = field(default_factory=dict)  # where they came from, for the summary

    @property
    def domain_names(self) -> list[str]:
        """Domains in order of first appearance."""
        return list(dict.fromkeys(self.domains))


def _source_name(src: str) -> str:
    p = Path(src)
    return p.stem if p.suffix else (p.name or src)


def _records(src: str, field_name: str, domain_field: str, split: str | None) -> list[tuple[str, str]]:
    """(text, domain) of every non-empty document of one source."""
    p = Path(src).expanduser()
    if not p.exists() and (src.startswith((".", "/", "~")) or p.suffix in (".txt", *TEXT_SUFFIXES)):
        raise DataError(f"--docs {src}: no such file")
    name = _source_name(src)
    if p.is_file() and p.suffix not in TEXT_SUFFIXES:
        return [(t, name) for t in read_texts(src, field_name, split, "--docs")]
    out = []
    for i, rec in enumerate(read_records(src, split, "--docs")):
        text = rec.get(field_name)
        if text is None:
            raise DataError(
                f"{src}: record {i + 1} has no field {field_name!r} (fields: {', '.join(sorted(rec))}); "
                "choose the text field with --field"
            )
        if not isinstance(text, str):
            raise DataError(f"{src}: field {field_name!r} holds {type(text).__name__}, not text; choose --field")
        domain = rec.get(domain_field)
        if domain is not None and not isinstance(domain, (str, int)):
            raise DataError(f"{src}: field {domain_field!r} of record {i + 1} is not a name; choose --domain-field")
        if text.strip():
            out.append((check_text(text, f"{src}: record {i + 1}"), name if domain is None else str(domain)[:100]))
    if not out:
        raise DataError(f"{src}: every {field_name!r} is empty")
    return out


def read_documents(
    sources: Sequence[str],
    field_name: str = "text",
    domain_field: str = "domain",
    split: str | None = None,
    limit: int | None = None,
) -> Documents:
    """Documents of every source, each with its domain; limit: at most that many of each domain (the first in
    file order)."""
    if not sources:
        raise UsageError("give documents with --docs (a .txt, JSONL or dataset; repeat it for several)")
    if limit is not None and limit < 1:
        raise UsageError(f"--docs-limit {limit} must be at least 1")
    texts, domains, counts = [], [], {}
    for src in sources:
        for text, domain in _records(str(src), field_name, domain_field, split):
            if limit is not None and counts.get(domain, 0) >= limit:
                continue
            counts[domain] = counts.get(domain, 0) + 1
            texts.append(text)
            domains.append(domain)
    inputs = {"sources": [str(s) for s in sources], "field": field_name, "domain_field": domain_field}
    inputs.update(split=split, docs_limit=limit, documents=len(texts), documents_per_domain=counts)
    return Documents(tuple(texts), tuple(domains), inputs)


def layer_columns(config) -> list[int]:
    """Column offsets of each layer's routed experts in router_logits.npy: layer l is columns[l]:columns[l+1]."""
    cols = [0]
    for l in range(config.num_hidden_layers):
        cols.append(cols[-1] + max(config.experts_in_layer(l) - config.num_shared_experts, 0))
    return cols


def _rows(tok, texts: Sequence[str], max_tokens: int):
    rows = [torch.tensor(tok.encode(t)[:max_tokens], dtype=torch.int32) for t in texts]
    empty = next((i for i, r in enumerate(rows) if len(r) == 0), None)
    if empty is not None:
        raise DataError(f"document {empty + 1} gave no tokens; remove it or give text")
    return rows


def capture(
    model: str | os.PathLike,
    docs: Documents,
    folder: Path,
    settings: CaptureSettings,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Run `docs` through `model`, writing the capture files into `folder`; returns what a later step needs
    (columns, routed top-k, tokens, the tokenizer's token strings, where and how it ran)."""
    if settings.max_tokens_per_doc < 1:
        raise UsageError(f"--max-tokens-per-doc {settings.max_tokens_per_doc} must be at least 1")
    dev = resolve_device(settings.device)
    dtype = default_dtype(settings.dtype, dev)
    ckpt = Checkpoint(model)
    cfg = ckpt.config
    tok = load_tokenizer(ckpt.path)
    check_tokenizer_fits(tok, cfg.vocab_size, str(ckpt.path))
    rows = _rows(tok, docs.texts, min(settings.max_tokens_per_doc, cfg.max_position_embeddings))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    cols = layer_columns(cfg)
    n_tokens = int(offsets[-1])
    np.save(folder / "tokens.npy", torch.cat(rows).numpy())
    np.save(folder / "doc_offsets.npy", offsets)
    logits = np.lib.format.open_memmap(folder / "router_logits.npy", "w+", np.float16, (n_tokens, cols[-1]))
    groups = batch_groups(rows, settings.max_batch_tokens)
    chunks = chunk_groups(rows, groups, settings.max_tokens_in_memory)
    place = choose_placement(ckpt, dtype, dev, settings.layerwise)
    lw = LayerwiseModel(ckpt, dtype, dev, resident=place["placement"] == DEVICE)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    L = cfg.num_hidden_layers
    for c, chunk in enumerate(chunks):
        batches = [pad_batch(rows, g, pad, set()) for g in chunk]
        dests = [np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in g]) for g in chunk]
        valids = [valid_BT.reshape(-1).to(dev) for _, valid_BT in batches]

        def trace(b: int, t, valids=valids, dests=dests, out=logits) -> None:
            c0, c1 = cols[t.layer], cols[t.layer + 1]
            if c1 > c0:  # the routed logits of this batch's real tokens, in document order
                z_NR = t.routing.logits_NE[valids[b], : c1 - c0]
                out[dests[b], c0:c1] = z_NR.to("cpu", torch.float16).numpy()

        def after_layer(l: int, layer, c=c) -> None:
            if progress is not None:
                progress(c * L + l + 1, len(chunks) * L)

        n_valid = sum(len(d) for d in dests)
        lw.hidden_states([ids for ids, _ in batches], trace=trace, after_layer=after_layer, n_tokens=n_valid)
    logits.flush()
    del logits
    return {
        "model": {"path": str(ckpt.path.resolve()), "source": ckpt.source, "fingerprint": ckpt.fingerprint()},
        "num_hidden_layers": L,
        "columns": cols,
        "routed_top_k": [
            min(cfg.num_experts_per_tok - cfg.num_shared_experts, cols[l + 1] - cols[l]) for l in range(L)
        ],
        "tokens": n_tokens,
        "documents": len(rows),
        "tokenizer": tok.describe(),
        "run": {"dtype": str(lw.dtype).replace("torch.", ""), "device": str(dev), "placement": place["placement"]},
        "chunks": len(chunks),
    }


def token_strings(model: str | os.PathLike, ids: np.ndarray) -> dict[int, str]:
    """The text of each distinct token id (what the explorer shows), decoded one token at a time."""
    tok = load_tokenizer(model)
    return {int(i): tok.decode([int(i)]) for i in np.unique(ids)}
