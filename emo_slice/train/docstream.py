"""Training documents as a stream (constant memory), and the held-out split taken from the stream.

`iter_texts(src, field, split, flag)` yields the same documents, in the same order and with the same
checks, as `emo_slice.data.sources.read_texts`, without holding them:
- JSONL (`.jsonl`, `.json`, `.ndjson`): line by line;
- `hf:NAME[:CONFIG]`: a Hugging Face dataset through `datasets.load_dataset(NAME, CONFIG, split=...,
  streaming=True)` (records arrive as they download; nothing is cached in full);
- a `.txt` file is one document; other sources (saved dataset folders, csv/parquet) are read by
  `read_texts` (in memory, as before).

`split_stream(docs, share, src, on_valid)` diverts the seeded `share` of documents to `on_valid` and yields
the rest, exactly as `corpus.split_validation` splits a list (one document of look-ahead for its fallbacks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

from emo_slice.data.sources import _get, check_text, read_texts
from emo_slice.errors import DataError, UsageError
from emo_slice.safejson import read_jsonl

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def _texts_of(records: Iterable, field: str, src: str) -> Iterator[str]:
    """The non-empty `field` of each record, checked as read_texts checks it."""
    found = False
    for rec in records:
        value = _get(rec, field, src, "--field")
        if not isinstance(value, str):
            raise DataError(
                f"{src}: field {field!r} holds {type(value).__name__}, not text; choose another with --field"
            )
        if value.strip():
            found = True
            yield check_text(value, f"{src}: field {field!r}")
    if not found:
        raise DataError(f"{src}: every {field!r} is empty")


def _jsonl_records(p: Path) -> Iterator[dict]:
    seen = False
    for _, rec in read_jsonl(p):
        seen = True
        yield rec
    if not seen:
        raise DataError(f"{p} holds no records; give a JSONL file with one JSON object per line")


def _hf_records(spec: str, split: str | None, flag: str) -> Iterator[dict]:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"{flag} hf:...: streaming a Hugging Face dataset needs `pip install datasets`") from None
    name, _, config = spec.partition(":")
    if not name:
        raise UsageError(f"{flag} hf:{spec}: give a dataset name, e.g. hf:allenai/c4:en")
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
        yield from (dict(r) for r in ds)
    except (DataError, UsageError):
        raise
    except Exception as e:  # the datasets library raises many kinds (network, missing split, bad config)
        raise DataError(
            f"{flag} hf:{spec}: cannot stream it ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
        ) from None


def iter_texts(src: str, field: str = "text", split: str | None = None, flag: str = "--data") -> Iterator[str]:
    """Documents of `src` one at a time (see the module docstring)."""
    if str(src).startswith("hf:"):
        yield from _texts_of(_hf_records(str(src)[3:], split, flag), field, str(src))
        return
    p = Path(src).expanduser()
    if p.is_file() and p.suffix in JSONL_SUFFIXES:
        yield from _texts_of(_jsonl_records(p), field, str(src))
        return
    yield from read_texts(src, field, split, flag)


def is_valid_doc(i: int, share: float) -> bool:
    import zlib

    return share > 0 and (zlib.crc32(str(i).encode()) % 10_000) < share * 10_000


def split_stream(docs: Iterable[str], share: float, src: str, on_valid: Callable[[str], None]) -> Iterator[str]:
    """Training documents of `docs` (yielded); the held-out ones go to on_valid. Same split as
    corpus.split_validation: seeded by the document index; with none held out, the last document is; a
    single document is cut at a character (its last `share`, at least 1 character, validates)."""
    if share <= 0:
        raise UsageError("--set valid_share=0 holds out nothing to evaluate on; give --valid-data FILE")
    held, n, n_valid = None, 0, 0
    for i, d in enumerate(docs):
        n += 1
        if is_valid_doc(i, share):
            on_valid(d)
            n_valid += 1
            continue
        if held is not None:
            yield held
        held = d
    if held is None:
        raise DataError(f"--data {src}: every document went to validation; lower --set valid_share")
    if n_valid:
        yield held
    elif n > 1:
        on_valid(held)
    else:
        cut = len(held) - max(1, round(len(held) * share))
        if not held[:cut].strip() or not held[cut:].strip():
            raise DataError(
                f"--data {src} is one short document: too little to hold out {share:.0%} for "
                "validation; give --valid-data FILE or more text"
            )
        yield held[:cut]
        on_valid(held[cut:])
