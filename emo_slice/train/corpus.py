"""Training data: documents -> tokenised ONCE into uint32 token shards (EOS after each document) -> windows.

`prepare_corpus` streams the documents (docstream.py: JSONL line by line, `hf:` datasets with streaming=True)
through worker processes into `data/train/` and `data/valid/` (token_shards.py: shard-*.bin + index.json),
then writes `data/meta.json`, the done-marker other ranks wait on (`wait_for_corpus`; rank 0's failure is
`data/FAILED`). Concatenated, the shards are exactly the single token file `write_tokens` writes for the same
documents (the layout of earlier versions, kept as the reference the tests compare against).

With T positions per window (seq_len), window i covers tokens [i*T, i*T + T] of the stream (T+1 tokens:
inputs are the first T, targets the last T), so documents are packed across windows and a document cut by a
window edge continues in the next one. Windows are visited in a seeded permutation per epoch; the sample
index alone (step * global batch) says where the data is, and `TokenWindows.position` turns it into the
(epoch, window, shard, offset) a checkpoint records.

Shape letters: see the legend in `emo_slice/__init__.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from emo_slice.artifacts import atomic_output_file, atomic_write_text
from emo_slice.errors import CheckpointError, DataError, EmoSliceError, UsageError
from emo_slice.io.safefiles import folder_file
from emo_slice.io.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer, read_tokenizer_json
from emo_slice.safejson import read_json
from emo_slice.train.docstream import is_valid_doc, iter_texts, split_stream
from emo_slice.train.token_shards import (
    ShardSink,
    TokenStream,
    encode_chunk,
    encoded_chunks,
    read_index,
    write_token_shards,
)

FAILED = "FAILED"  # rank 0's one-line error while preparing the data (the other ranks wait on the data folder)

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
        hint = "give a tokenizer.json saved by `tokenizers`, a model folder with one, or 'bytes' / 'train'"
        _, backend = read_tokenizer_json(p, UsageError, hint, label=f"--tokenizer {spec}")
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


def split_validation(docs: list[str], share: float, src: str) -> tuple[list[str], list[str]]:
    """(training, validation) documents: a seeded `share` of the documents held out, never also trained on.

    When no document falls in the share (small corpora) the last document is held out; a single document
    (a .txt file) is cut at a character: its last `share` (at least 1 character) validates."""
    if share <= 0:
        raise UsageError("--set valid_share=0 holds out nothing to evaluate on; give --valid-data FILE")
    train = [d for i, d in enumerate(docs) if not is_valid_doc(i, share)]
    valid = [d for i, d in enumerate(docs) if is_valid_doc(i, share)]
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
    """Encode documents, append EOS after each, write uint32 tokens atomically to ONE file (the layout of earlier
    versions; token shards must equal it). Returns the token count."""
    n = 0
    with atomic_output_file(path) as tmp, open(tmp, "wb") as f:
        for s in range(0, len(docs), chunk):
            for ids in tok.encode_batch(docs[s : s + chunk]):
                arr = np.asarray(list(ids) + [tok.eos_token_id], dtype=np.uint32)
                f.write(arr.astype("<u4").tobytes())
                n += len(arr)
    return n


def data_workers(cfg) -> int:
    """Tokenising processes: cfg.data_workers, else CPUs - 1 (at most 8)."""
    import os

    return cfg.data_workers if cfg.data_workers is not None else min(8, max(0, (os.cpu_count() or 1) - 1))


def corpus_key(cfg, vocab_size: int) -> dict:
    """What the token shards depend on: a saved meta.json with another key is rebuilt."""
    return {
        "data": str(cfg.data),
        "field": cfg.field,
        "split": cfg.split,
        "valid_data": cfg.valid_data,
        "valid_share": cfg.valid_share,
        "tokenizer": cfg.tokenizer,
        "vocab_size": vocab_size,
        "holdout": 2,  # how validation is held out (split_validation); 1 also validated on a training document
        "layout": "token-shards-1",  # train/ and valid/ shard folders (earlier: train.bin, valid.bin)
    }


def ready_corpus(folder: Path, key: dict) -> tuple[Tokenizer, dict] | None:
    """The tokenizer and meta of finished token shards for `key` in `folder` (meta.json, written last, is the
    done-marker), or None."""
    saved = _read_meta(folder / "meta.json")
    if saved is None or saved.get("key") != key:
        return None
    try:
        read_index(folder / "train"), read_index(folder / "valid")
        return _load_saved_tokenizer(folder, saved), saved
    except Exception:  # a damaged cache (index, meta keys, tokenizer.json) is rebuilt, not trusted
        return None


def clear_stale(folder: Path, key: dict) -> None:
    """Remove the done- and failed-markers unless the shards are ready (rank 0, before the other ranks wait)."""
    if ready_corpus(folder, key) is None:
        (folder / "meta.json").unlink(missing_ok=True)
    (folder / FAILED).unlink(missing_ok=True)


def prepare_corpus(cfg, folder: Path, vocab_size: int, workers: int = 0) -> tuple[Tokenizer, dict]:
    """Stream `cfg.data` (and valid_data) into token shards folder/train, folder/valid (token_shards.py), with
    the tokenizer built or loaded first; meta.json is written last. Returns the tokenizer and meta (token
    counts, source hash). Re-running with the same inputs reuses the shards. On failure it leaves
    folder/FAILED (the error's one line) for the ranks that wait on it."""
    folder.mkdir(parents=True, exist_ok=True)
    key = corpus_key(cfg, vocab_size)
    done = ready_corpus(folder, key)
    if done is not None:
        return done
    (folder / "meta.json").unlink(missing_ok=True)
    try:
        return _tokenise(cfg, folder, vocab_size, workers, key)
    except Exception as e:
        atomic_write_text(folder / FAILED, (str(e).splitlines() or [type(e).__name__])[0] + "\n")
        raise


def _tokenise(cfg, folder: Path, vocab_size: int, workers: int, key: dict) -> tuple[Tokenizer, dict]:
    def train_docs(on_valid=lambda d: None):
        docs = iter_texts(cfg.data, cfg.field, cfg.split or "train", "--data")
        return docs if cfg.valid_data else split_stream(docs, cfg.valid_share, str(cfg.data), on_valid)

    if cfg.valid_data:  # checked before the long pass over the training data
        next(iter_texts(cfg.valid_data, cfg.field, cfg.split, "--valid-data"))
    tok = resolve_tokenizer(cfg.tokenizer, train_docs(), vocab_size)
    valid = ShardSink(folder / "valid")
    t_index = write_token_shards(
        train_docs(lambda d: valid.add(encode_chunk([d], tok), 1)), tok, folder / "train", workers=workers
    )
    if cfg.valid_data:
        for n, arr in encoded_chunks(iter_texts(cfg.valid_data, cfg.field, cfg.split, "--valid-data"), tok, workers):
            valid.add(arr, n)
    v_index = valid.finish()
    if tok.kind != "byte-level":
        tok.save(folder)
    meta = {
        "key": key,
        "hash": hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16],
        "train_tokens": t_index["tokens"],
        "valid_tokens": v_index["tokens"],
        "train_documents": t_index["documents"],
        "valid_documents": v_index["documents"],
        "tokenizer": tok.describe(),
        "tokenizer_kind": tok.kind,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "vocab_size": tok.vocab_size,
    }
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2) + "\n")
    return tok, meta


def wait_for_corpus(cfg, folder: Path, vocab_size: int, poll_s: float = 0.2) -> tuple[Tokenizer, dict]:
    """What a rank other than 0 does while rank 0 tokenises: wait for the done-marker (meta.json with this
    run's key), reading nothing else meanwhile; rank 0's failure (folder/FAILED, or the run folder removed)
    stops the wait with its message."""
    import time

    key = corpus_key(cfg, vocab_size)
    while True:
        done = ready_corpus(folder, key)
        if done is not None:
            return done
        if (folder / FAILED).is_file():
            why = (folder / FAILED).read_text(encoding="utf-8", errors="replace").strip()[:300]
            raise DataError(f"rank 0 could not prepare the training data: {why}")
        if not folder.parent.is_dir():
            raise DataError(f"rank 0 stopped before the training data in {folder} was ready; see its error")
        time.sleep(poll_s)


def _read_meta(path: Path) -> dict | None:
    """The token files' meta.json, or None when absent or unreadable (the files are then rebuilt)."""
    if not os.path.lexists(path):
        return None
    try:
        record = folder_file(path.parent, path.name, "token files' record", kind="run folder", error=DataError)
        return read_json(record, expect=dict, max_bytes=1 << 20)
    except EmoSliceError:
        return None


def _load_saved_tokenizer(folder: Path, meta: dict) -> Tokenizer:
    if meta["tokenizer_kind"] == "byte-level":
        return ByteTokenizer(meta["eos_token_id"], meta["pad_token_id"])
    hint = f"delete {folder} to tokenise the data again"
    path = folder_file(folder, "tokenizer.json", "tokenizer", kind="run folder", error=DataError, hint=hint)
    _, backend = read_tokenizer_json(path, DataError, hint)
    return Tokenizer(backend, meta["eos_token_id"], meta["pad_token_id"], str(folder))


class TokenWindows:
    """Fixed windows of T+1 tokens over a token-shard folder (token_shards.TokenStream), in seeded epoch order."""

    def __init__(self, folder: Path, seq_len: int, seed: int = 0, shuffle: bool = True, vocab_size: int | None = None):
        self.folder, self.vocab_size = folder, vocab_size
        self.tokens = TokenStream(folder)
        self.T = seq_len
        self.n_windows = (self.tokens.n_tokens - 1) // seq_len
        if self.n_windows < 1:
            raise DataError(
                f"{folder} holds {self.tokens.n_tokens} tokens, fewer than one window of --seq-len {seq_len}+1; "
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

    def _start(self, sample: int) -> tuple[int, int, int]:
        epoch, pos = divmod(sample, self.n_windows)
        w = int(self._order(epoch)[pos])
        return epoch, w, w * self.T

    def window(self, sample: int) -> np.ndarray:
        """Tokens of the `sample`-th window in the stream (T+1 of them)."""
        return self.tokens.read(self._start(sample)[2], self.T + 1)

    def batch(self, first_sample: int, n: int) -> torch.Tensor:
        """[B, T+1] int64 with B = n rows: samples first_sample .. first_sample + n - 1; a token id beyond
        vocab_size (token files edited after tokenising) is one DataError line, before the model sees it."""
        ids = np.stack([self.window(first_sample + i) for i in range(n)])
        if self.vocab_size is not None and ids.size and int(ids.max()) >= self.vocab_size:
            raise DataError(
                f"{self.folder} holds token id {int(ids.max())}, beyond the model's vocabulary of {self.vocab_size}: "
                f"the token files changed after they were made; delete {self.folder.parent} to tokenise the data again"
            )
        return torch.from_numpy(ids)

    def position(self, sample: int) -> dict:
        """Where sample `sample` reads: epoch, window, token shard and offset in it (saved with checkpoints)."""
        epoch, w, start = self._start(sample)
        shard, offset = self.tokens.locate(start)
        return {
            "sample": sample,
            "epoch": epoch,
            "window": w,
            "shard": shard,
            "offset": offset,
            "tokens": self.tokens.n_tokens,
        }


def check_position(folder: Path, saved: dict | None, now: dict) -> None:
    """Refuse to resume when the data no longer gives the position the checkpoint recorded for its step."""
    if saved and saved != now:
        raise CheckpointError(
            f"{folder} was saved at data position {saved} but this run's token shards give {now} for the same "
            "step: the training data or tokenizer changed; resume with the data it was trained on, or start a "
            "new run from its weights with --init-from"
        )
