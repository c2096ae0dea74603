"""Tokenizers: a checkpoint's `tokenizer.json` through the `tokenizers` library, or bytes.

A model with no tokenizer.json (like the tiny test checkpoints, vocab 256) gets a byte-level
tokenizer: token id = UTF-8 byte value. `Tokenizer.kind` says which one is in use so callers can
say it out loud.

`write_tokenizer_files` gives a checkpoint folder the files the ecosystem loads (transformers'
AutoTokenizer, vLLM, llama.cpp's converter): tokenizer.json, tokenizer_config.json and
special_tokens_map.json. A byte-level model gets `byte_tokenizer_json()`: a `tokenizers` BPE with no
merges whose vocabulary is exactly the byte tokens `<0x00>`..`<0xFF>` (ids 0..255) and byte fallback
on, so every character encodes as its UTF-8 bytes, as `ByteTokenizer` does. `load_tokenizer`
recognises that file and returns a `ByteTokenizer`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from emo_slice.errors import CheckpointError, EmoSliceError
from emo_slice.io.checkpoint import resolve_checkpoint
from emo_slice.io.safefiles import folder_file
from emo_slice.safejson import BadJSON, parse_json, read_json, read_limited


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

    def token(self, token_id: int) -> str | None:
        """The text of token `token_id` (None if the tokenizer has no such id)."""
        return self.backend.id_to_token(int(token_id))

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

    def save(self, folder: str | os.PathLike) -> None:
        """tokenizer.json of the equivalent `tokenizers` model (ids 0..255 are the bytes)."""
        (Path(folder) / "tokenizer.json").write_text(byte_tokenizer_json())

    def token(self, token_id: int) -> str | None:
        return byte_token(token_id) if 0 <= token_id < 256 else None

    def describe(self) -> str:
        return "byte-level (no tokenizer.json in the checkpoint: token id = UTF-8 byte)"


MAX_TOKENIZER_BYTES = 200_000_000  # the largest released tokenizer.json files are ~30 MB


def load_tokenizer(path_or_id: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a checkpoint folder or Hub id; byte-level when it has no tokenizer.json."""
    folder = resolve_checkpoint(path_or_id)
    eos = pad = None
    if os.path.lexists(folder / "config.json"):
        cfg_path = folder_file(folder, "config.json", "config")  # inside the folder and a regular file, or refused
        cfg = read_json(cfg_path, error=CheckpointError, hint="restore it from the original download", expect=dict)
        eos, pad = cfg.get("eos_token_id"), cfg.get("pad_token_id")
        eos = (eos or [None])[0] if isinstance(eos, list) else eos
    if not os.path.lexists(folder / "tokenizer.json"):
        return ByteTokenizer(eos if eos is not None else 0, pad)
    tj = folder_file(folder, "tokenizer.json", "tokenizer")  # a link outside the folder is refused, never read
    data, backend = read_tokenizer_json(tj, CheckpointError, "re-download it")
    if is_byte_tokenizer(data):
        return ByteTokenizer(eos if eos is not None else 0, pad)
    return Tokenizer(backend, eos, pad, str(folder))


def read_tokenizer_json(path: Path, error: type[EmoSliceError], hint: str, label: str | None = None):
    """(parsed JSON, `tokenizers` backend) of a tokenizer.json: read once, bounded (emo_slice.safejson), a
    regular file only, then given to the tokenizers library from memory. Any failure: `error`, one line naming
    `label` (default: the path)."""
    from tokenizers import Tokenizer as HFTokenizer

    label = label or str(path)
    raw = read_limited(Path(path), MAX_TOKENIZER_BYTES, error=error, hint=hint)
    try:
        data = parse_json(raw)
    except BadJSON as e:
        raise error(f"{label} cannot be read ({e}); {hint}") from None
    try:
        backend = HFTokenizer.from_str(raw.decode("utf-8-sig"))
    except Exception as e:  # the tokenizers library raises plain Exception for any bad file
        why = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise error(f"{label} cannot be read by the tokenizers library ({why}); {hint}") from None
    return data, backend


# ---- byte-level tokenizer.json ------------------------------------------------------------------------


def byte_token(b: int) -> str:
    """The token text of byte b in the byte tokenizer.json: `<0x41>` for 'A' (the byte-fallback spelling)."""
    return f"<0x{b:02X}>"


def byte_tokenizer_json() -> str:
    """tokenizer.json of a BPE with vocabulary <0x00>..<0xFF> (id = byte), no merges, byte fallback:
    every character falls back to its UTF-8 bytes, so it encodes exactly as `ByteTokenizer`."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models

    tok = HFTokenizer(models.BPE(vocab={byte_token(b): b for b in range(256)}, merges=[], byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return tok.to_str(pretty=True)


def is_byte_tokenizer(data) -> bool:
    """True for a parsed tokenizer.json that is the byte tokenizer (as `byte_tokenizer_json` writes it)."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not model.get("byte_fallback"):
        return False
    return (
        model.get("vocab") == {byte_token(b): b for b in range(256)}
        and not model.get("merges")
        and not data.get("added_tokens")
        and data.get("normalizer") is None
        and data.get("pre_tokenizer") is None
    )


# ---- the files the ecosystem loads ---------------------------------------------------------------------


def special_tokens(tokenizer: Tokenizer, config) -> dict[str, str]:
    """{"eos_token": text, "pad_token": text, "bos_token": text} for the ids the model config sets."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    out = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        token_id = get(f"{key}_id")
        token_id = token_id[0] if isinstance(token_id, list) else token_id
        text = tokenizer.token(token_id) if token_id is not None else None
        if text is not None:
            out[key] = text
    return out


def write_tokenizer_files(folder: str | os.PathLike, tokenizer: Tokenizer, config) -> list[str]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into folder where missing.

    config: the model's EmoConfig or config dict (its eos/pad/bos ids name the special tokens, its
    max_position_embeddings the model_max_length). Files already in the folder are kept. Returns the
    names written.
    """
    folder = Path(folder)
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    specials = special_tokens(tokenizer, config)
    files = {
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **specials,
            "model_max_length": get("max_position_embeddings") or 4096,
            "clean_up_tokenization_spaces": False,
        },
        "special_tokens_map.json": specials,
    }
    written = []
    if not (folder / "tokenizer.json").exists():
        tokenizer.save(folder)
        written.append("tokenizer.json")
    for name, data in files.items():
        if not (folder / name).exists():
            (folder / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            written.append(name)
    return written
