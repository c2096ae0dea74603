"""Training data: documents -> tokenised ONCE into a uint32 token file (EOS after each document) -> windows.

The token file is a flat little-endian uint32 array read through np.memmap. With T positions per
window (seq_len), window i covers tokens [i*T, i*T + T] (T+1 tokens: inputs are the first T, targets
the last T), so documents are packed across windows and a document cut by a window edge continues in
the next one. Windows are visited in a seeded permutation per epoch; the sample index alone
(step * global batch) says where the data is.

Shape letters: see the legend in `emo_slice/__init__.py`.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import torch

from emo_slice.artifacts import atomic_output_file, atomic_write_text
from emo_slice.errors import DataError, UsageError
from emo_slice.io.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|pad|>"
EOS_NAMES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>")


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE trained on `texts` with the `tokenizers` library: EOS id 0, pad id 1."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 258 + 2:
        raise UsageError(
            f"--vocab-size {vocab_size} is too small for a byte-level BPE; choose at least 260 "
            "(or --tokenizer bytes for 256)"
        )
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok, tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN), "trained byte-level BPE")


def resolve_tokenizer(spec: str, texts: list[str], vocab_size: int) -> Tokenizer:
    """'bytes', 'train' / 'auto', or a model folder / tokenizer.json path."""
    if spec == "auto":
        spec = "bytes" if vocab_size <= 256 else "train"
    if spec == "bytes":
        return ByteTokenizer(0, 1)
    if spec == "train":
        return train_tokenizer(texts, vocab_size)
    p = Path(spec).expanduser()
    if p.is_file() and p.name.endswith(".json"):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            backend = HFTokenizer.from_file(str(p))
        except Exception as e:  # the tokenizers library raises plain Exception for any bad file
            why = (str(e).splitlines() or [type(e).__name__])[0][:120]
            raise UsageError(
                f"--tokenizer {spec} cannot be read by the tokenizers library ({why}); give a tokenizer.json "
                "saved by `tokenizers`, a model folder with one, or 'bytes' / 'train'"
            ) from None
        tok = Tokenizer(backend, None, None, str(p))
    elif p.is_dir():
        tok = load_tokenizer(p)
        if tok.kind == "byte-level":
            raise UsageError(
                f"--tokenizer {spec} has no tokenizer.json; give a folder that has one, or --tokenizer bytes"
            )
    else:
        raise UsageError(f"--tokenizer {spec}: not a folder or tokenizer.json; give one, or 'bytes' / 'train'")
    if tok.eos_token_id is None:
        vocab = tok.backend.get_vocab(with_added_tokens=True)
        found = [vocab[n] for n in EOS_NAMES if n in vocab]
        if not found:
            raise UsageError(
                f"--tokenizer {spec}: cannot tell its end-of-document token; give a folder whose "
                f"config.json sets eos_token_id, or a tokenizer with one of {', '.join(EOS_NAMES)}"
            )
        tok.eos_token_id = found[0]
    if tok.pad_token_id is None:
        tok.pad_token_id = tok.eos_token_id
    return tok


def _is_valid_doc(i: int, share: float) -> bool:
    return share > 0 and (zlib.crc32(str(i).encode()) % 10_000) < share * 10_000


def split_validation(docs: list[str], share: float, src: str) -> tuple[list[str], list[str]]:
    """(training, validation) documents: a seeded `share` of the documents held out, never also trained on.

    When no document falls in the share (small corpora) the last document is held out; a single document
    (a .txt file) is cut at a character: its last `share` (at least 1 character) validates."""
    if share <= 0:
        raise UsageError("--set valid_share=0 holds out nothing to evaluate on; give --valid-data FILE")
    train = [d for i, d in enumerate(docs) if not _is_valid_doc(i, share)]
    valid = [d for i, d in enumerate(docs) if _is_valid_doc(i, share)]
    if not train:
        raise DataError(f"--data {src}: every document went to validation; lower --set valid_share")
    if valid:
        return train, valid
    if len(docs) > 1:
        return docs[:-1], docs[-1:]
    text = docs[0]
    cut = len(text) - max(1, round(len(text) * share))
    if not text[:cut].strip() or not text[cut:].strip():
        raise DataError(
            f"--data {src} is one short document: too little to hold out {share:.0%} for "
            "validation; give --valid-data FILE or more text"
        )
    return [text[:cut]], [text[cut:]]


def write_tokens(docs: list[str], tok: Tokenizer, path: Path, chunk: int = 256) -> int:
    """Encode documents, append EOS after each, write uint32 tokens atomically. Returns the token count."""
    n = 0
    with atomic_output_file(path) as tmp, open(tmp, "wb") as f:
        for s in range(0, len(docs), chunk):
            for ids in tok.encode_batch(docs[s : s + chunk]):
                arr = np.asarray(list(ids) + [tok.eos_token_id], dtype=np.uint32)
                f.write(arr.astype("<u4").tobytes())
                n += len(arr)
    return n


def prepare_corpus(cfg, folder: Path, vocab_size: int) -> tuple[Tokenizer, dict]:
    """Read `cfg.data` (and valid_data), build / load the tokenizer, write train.bin / valid.bin once.

    Returns the tokenizer and meta (token counts, source hash). Re-running with the same inputs reuses
    the files (the meta records the source and tokenizer settings).
    """
    from emo_slice.data.sources import read_texts

    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    key = {
        "data": str(cfg.data),
        "field": cfg.field,
        "split": cfg.split,
        "valid_data": cfg.valid_data,
        "valid_share": cfg.valid_share,
        "tokenizer": cfg.tokenizer,
        "vocab_size": vocab_size,
        "holdout": 2,  # how validation is held out (split_validation); 1 also validated on a training document
    }
    saved = _read_meta(meta_path)
    if saved is not None and saved.get("key") == key and (folder / "train.bin").exists():
        try:
            return _load_saved_tokenizer(folder, saved), saved
        except Exception:  # a damaged cache (meta keys, tokenizer.json) is rebuilt, not trusted
            pass
    docs = read_texts(cfg.data, cfg.field, cfg.split or "train", "--data")
    if cfg.valid_data:
        valid = read_texts(cfg.valid_data, cfg.field, cfg.split, "--valid-data")
        train = docs
    else:
        train, valid = split_validation(docs, cfg.valid_share, str(cfg.data))
    tok = resolve_tokenizer(cfg.tokenizer, train, vocab_size)
    n_train = write_tokens(train, tok, folder / "train.bin")
    n_valid = write_tokens(valid, tok, folder / "valid.bin")
    if tok.kind != "byte-level":
        tok.save(folder)
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    meta = {
        "key": key,
        "hash": h,
        "train_tokens": n_train,
        "valid_tokens": n_valid,
        "train_documents": len(train),
        "valid_documents": len(valid),
        "tokenizer": tok.describe(),
        "tokenizer_kind": tok.kind,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "vocab_size": tok.vocab_size,
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return tok, meta


def _read_meta(path: Path) -> dict | None:
    """The token files' meta.json, or None when absent or unreadable (the files are then rebuilt)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def _load_saved_tokenizer(folder: Path, meta: dict) -> Tokenizer:
    if meta["tokenizer_kind"] == "byte-level":
        return ByteTokenizer(meta["eos_token_id"], meta["pad_token_id"])
    from tokenizers import Tokenizer as HFTokenizer

    backend = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    return Tokenizer(backend, meta["eos_token_id"], meta["pad_token_id"], str(folder))


class TokenWindows:
    """Fixed windows of T+1 tokens over a memory-mapped uint32 token file, in seeded epoch order."""

    def __init__(self, path: Path, seq_len: int, seed: int = 0, shuffle: bool = True):
        self.tokens = np.memmap(path, dtype="<u4", mode="r")
        self.T = seq_len
        self.n_windows = (len(self.tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise DataError(
                f"{path} holds {len(self.tokens)} tokens, fewer than one window of --seq-len {seq_len}+1; "
                "give more text (or a larger --valid-data), or a shorter --seq-len"
            )
        self.seed, self.shuffle = seed, shuffle
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = torch.randperm(self.n_windows, generator=g).numpy()
            else:
                self._perm = np.arange(self.n_windows)
            self._perm_epoch = epoch
        return self._perm

    def window(self, sample: int) -> np.ndarray:
        """Tokens of the `sample`-th window in the stream (T+1 of them)."""
        epoch, pos = divmod(sample, self.n_windows)
        w = int(self._order(epoch)[pos])
        return np.asarray(self.tokens[w * self.T : w * self.T + self.T + 1], dtype=np.int64)

    def batch(self, first_sample: int, n: int) -> torch.Tensor:
        """[B, T+1] int64 with B = n rows: samples first_sample .. first_sample + n - 1."""
        return torch.from_numpy(np.stack([self.window(first_sample + i) for i in range(n)]))
