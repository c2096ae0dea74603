"""Tokenizers: a checkpoint's `tokenizer.json` through the `tokenizers` library, or bytes.

A model with no tokenizer.json (like the tiny test checkpoints, vocab 256) gets a byte-level
tokenizer: token id = UTF-8 byte value. `Tokenizer.kind` says which one is in use so callers can
say it out loud.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from emo_slice.errors import CheckpointError


class Tokenizer:
    """encode(text) -> ids (no special tokens added), decode(ids) -> text, eos/pad ids."""

    kind = "tokenizer.json"

    def __init__(self, backend, eos_token_id: int | None, pad_token_id: int | None, source: str = ""):
        self.backend = backend
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.source = source

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def save(self, folder: str | os.PathLike) -> None:
        self.backend.save(str(Path(folder) / "tokenizer.json"))

    def describe(self) -> str:
        return f"tokenizer.json from {self.source} (vocab {self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as token ids 0..255 (for models without a tokenizer.json)."""

    kind = "byte-level"

    def __init__(self, eos_token_id: int | None = 0, pad_token_id: int | None = 1):
        super().__init__(None, eos_token_id, pad_token_id, "bytes")

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def save(self, folder: str | os.PathLike) -> None:  # nothing to save: the absence of tokenizer.json says it
        return None

    def describe(self) -> str:
        return "byte-level (no tokenizer.json in the checkpoint: token id = UTF-8 byte)"


def load_tokenizer(path_or_id: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a checkpoint folder or Hub id; byte-level when it has no tokenizer.json."""
    from emo_slice.io.checkpoint import resolve_checkpoint

    folder = resolve_checkpoint(path_or_id)
    eos = pad = None
    cfg_path = folder / "config.json"
    if cfg_path.exists():
        try:
            cfg = json.loads(cfg_path.read_text())
            eos, pad = cfg.get("eos_token_id"), cfg.get("pad_token_id")
            eos = eos[0] if isinstance(eos, list) else eos
        except json.JSONDecodeError:
            pass
    tj = folder / "tokenizer.json"
    if not tj.exists():
        return ByteTokenizer(eos if eos is not None else 0, pad)
    from tokenizers import Tokenizer as HFTokenizer

    try:
        backend = HFTokenizer.from_file(str(tj))
    except Exception as e:
        raise CheckpointError(f"{tj} cannot be read by the tokenizers library ({e}); re-download it") from None
    return Tokenizer(backend, eos, pad, str(folder))
