"""Token shards: a stream of documents -> uint32 token files of bounded size, tokenised by worker processes.

A token stream is a folder holding `shard-NNNNNN.bin` files (flat little-endian uint32, EOS after every
document, documents packed and cut only by the shard size) and `index.json` (format tag, token and
document counts, each shard's file and token count; written last). Concatenated, the shards are exactly
the single token file older versions wrote for the same documents and tokenizer.

`write_token_shards(docs, tok, folder)` reads the document iterator in chunks of CHUNK_DOCS documents and
encodes them in `workers` processes (`python -m emo_slice.train.token_shards`: plain subprocesses fed
length-prefixed JSON on stdin, answering raw uint32 bytes on stdout; nothing pickled, and no re-import of
the caller's main module as multiprocessing's spawn would do), round-robin, at most 2 x workers chunks in
flight, results written in order. Small streams never start a process: workers start once more than
POOL_AFTER chunks have been read. Memory: the chunks in flight; tokens go straight to the open shard file.

`TokenStream(folder)` reads them back through np.memmap: `read(start, n)` spans shard edges.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import re
import struct
import subprocess
import sys
import threading
from pathlib import Path
from subprocess import PIPE
from typing import Iterable, Iterator

import numpy as np

from emo_slice.errors import DataError, EmoSliceError
from emo_slice.io.tokenizer import ByteTokenizer, Tokenizer
from emo_slice.safejson import read_json

INDEX_FILE = "index.json"
INDEX_FORMAT = "emo-slice-token-shards"
MAX_INDEX_BYTES = 1 << 28
SHARD_FILE = re.compile(r"shard-\d{6}\.bin")
CHUNK_DOCS = 256
POOL_AFTER = 16  # chunks read before worker processes are worth starting
SHARD_TOKENS = 1 << 28  # 1 GiB of uint32 per shard

_TOKENIZER = None  # a worker's tokenizer (set by _init_worker)


def _tokenizer_payload(tok) -> list:
    """What a worker needs to rebuild `tok`: ['bytes', eos, pad] or ['json', tokenizer JSON, eos, pad]."""
    if tok.kind == "byte-level":
        return ["bytes", tok.eos_token_id, tok.pad_token_id]
    return ["json", tok.backend.to_str(), tok.eos_token_id, tok.pad_token_id]


def _init_worker(payload: list) -> None:
    global _TOKENIZER

    if payload[0] == "bytes":
        _TOKENIZER = ByteTokenizer(payload[1], payload[2])
    else:
        from tokenizers import Tokenizer as HFTokenizer

        _TOKENIZER = Tokenizer(HFTokenizer.from_str(payload[1]), payload[2], payload[3])


def encode_chunk(texts: list[str], tok=None) -> np.ndarray:
    """uint32 tokens of a chunk of documents, EOS after each."""
    tok = tok or _TOKENIZER
    parts = []
    for ids in tok.encode_batch(texts):
        parts.append(np.asarray(ids, dtype=np.uint32))
        parts.append(np.asarray([tok.eos_token_id], dtype=np.uint32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)


def _chunks(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for d in docs:
        chunk.append(d)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _send(stream, data: bytes) -> None:
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def _recv(stream) -> bytes | None:
    """One length-prefixed message, or None at a clean end of stream."""
    head = stream.read(8)
    if not head:
        return None
    if len(head) < 8:
        raise EOFError("truncated message")
    (n,) = struct.unpack("<Q", head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("truncated message")
    return data


def _worker_main() -> None:
    """A tokenising worker: the tokenizer payload, then chunks (JSON lists of texts) -> uint32 bytes, until EOF."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    _init_worker(json.loads(_recv(inp)))
    while (msg := _recv(inp)) is not None:
        _send(out, encode_chunk(json.loads(msg)).astype("<u4").tobytes())


class _Workers:
    """`n` tokenising subprocesses; run(chunks) yields (documents, tokens) per chunk, in order."""

    def __init__(self, n: int, tok):
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}  # the parallelism is the processes
        cmd = [sys.executable, "-m", "emo_slice.train.token_shards"]
        self.procs = [subprocess.Popen(cmd, stdin=PIPE, stdout=PIPE, stderr=PIPE, env=env) for _ in range(n)]
        payload = json.dumps(_tokenizer_payload(tok)).encode()
        for p in self.procs:
            _send(p.stdin, payload)

    def run(self, chunks: Iterator[list[str]]) -> Iterator[tuple[int, np.ndarray]]:
        n, sizes, slots, error = len(self.procs), queue.Queue(), threading.Semaphore(2 * len(self.procs)), []

        def feed() -> None:  # a thread, so that writing a chunk never waits on a result nobody reads
            try:
                for i, c in enumerate(chunks):
                    slots.acquire()
                    _send(self.procs[i % n].stdin, json.dumps(c).encode())
                    sizes.put(len(c))
            except BaseException as e:  # the source's DataError, or a worker gone (BrokenPipeError)
                error.append(e)
            finally:
                sizes.put(None)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        i = 0
        while (n_docs := sizes.get()) is not None:
            yield n_docs, self._result(self.procs[i % n])
            slots.release()
            i += 1
        feeder.join()
        if error:
            raise error[0] if not isinstance(error[0], OSError) else self._died()

    def _result(self, proc) -> np.ndarray:
        try:
            data = _recv(proc.stdout)
        except EOFError:
            data = None
        if data is None:
            raise self._died()
        return np.frombuffer(data, dtype="<u4")

    def _died(self) -> DataError:
        self.close()
        why = [p.stderr.read().decode("utf-8", "replace").strip().splitlines() for p in self.procs]
        last = next((lines[-1] for lines in why if lines), "no message")
        return DataError(f"a tokenising worker process stopped ({last[:200]}); rerun with --set data_workers=0")

    def close(self) -> None:
        for p in self.procs:  # end of input; a worker still writing gets a broken pipe and stops
            for stream in (p.stdin, p.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def encoded_chunks(
    docs: Iterable[str], tok, workers: int, chunk_docs: int = CHUNK_DOCS
) -> Iterator[tuple[int, np.ndarray]]:
    """(documents, tokens) per chunk of `docs`, in order; encoded in `workers` processes once the stream is long."""
    chunks = _chunks(docs, chunk_docs)
    head = list(itertools.islice(chunks, POOL_AFTER + 1))
    if workers < 1 or len(head) <= POOL_AFTER:  # a short stream: no process start-up
        for c in itertools.chain(head, chunks):
            yield len(c), encode_chunk(c, tok)
        return
    pool = _Workers(workers, tok)
    try:
        yield from pool.run(itertools.chain(head, chunks))
    finally:
        pool.close()


class ShardSink:
    """Append token arrays to folder/shard-*.bin (shard_tokens each, the last shorter), straight to the open
    file; finish() writes index.json last and returns it."""

    def __init__(self, folder: Path, shard_tokens: int = SHARD_TOKENS):
        folder.mkdir(parents=True, exist_ok=True)
        for old in [*folder.glob("shard-*.bin"), folder / INDEX_FILE]:
            old.unlink(missing_ok=True)
        self.folder, self.size = folder, shard_tokens
        self.file, self.fill, self.docs = None, 0, 0
        self.shards: list[dict] = []

    def add(self, arr: np.ndarray, documents: int) -> None:
        self.docs += documents
        arr = np.ascontiguousarray(arr, dtype="<u4")
        while len(arr):
            if self.file is None:
                self._open()
            take = min(len(arr), self.size - self.fill)
            self.file.write(arr[:take].tobytes())
            self.fill, arr = self.fill + take, arr[take:]
            if self.fill == self.size:
                self._close()

    def _open(self) -> None:
        name = f"shard-{len(self.shards):06d}.bin"
        self.file = open(self.folder / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def _close(self) -> None:
        self.file.close()
        self.shards[-1]["tokens"] = int(self.fill)
        self.file, self.fill = None, 0

    def finish(self) -> dict:
        if self.file is None and not self.shards:
            self._open()
        if self.file is not None:
            self._close()
        index = {
            "format": INDEX_FORMAT,
            "dtype": "<u4",
            "tokens": sum(s["tokens"] for s in self.shards),
            "documents": self.docs,
            "shards": self.shards,
        }
        tmp = self.folder / f".{INDEX_FILE}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(index, indent=1) + "\n")
        os.replace(tmp, self.folder / INDEX_FILE)
        return index


def write_token_shards(
    docs: Iterable[str],
    tok,
    folder: Path,
    *,
    workers: int = 0,
    shard_tokens: int = SHARD_TOKENS,
    chunk_docs: int = CHUNK_DOCS,
) -> dict:
    """Tokenise `docs` into folder/shard-*.bin + index.json (written last); returns the index."""
    sink = ShardSink(folder, shard_tokens)
    for n, arr in encoded_chunks(docs, tok, workers, chunk_docs):
        sink.add(arr, n)
    return sink.finish()


def read_index(folder: Path) -> dict:
    """The checked index of a token-shard folder (DataError naming what is wrong)."""
    path = folder / INDEX_FILE
    try:
        index = read_json(path, max_bytes=MAX_INDEX_BYTES)
        ok = isinstance(index, dict) and index.get("format") == INDEX_FORMAT and isinstance(index.get("shards"), list)
    except EmoSliceError:
        ok = False
    if not ok:
        raise DataError(f"{path} is missing or not a token-shard index; delete {folder.parent} to tokenise again")
    for s in index["shards"]:
        name, n = (s.get("file"), s.get("tokens")) if isinstance(s, dict) else (None, None)
        f = folder / str(name)
        if not isinstance(name, str) or not SHARD_FILE.fullmatch(name) or not isinstance(n, int) or f.is_symlink():
            raise DataError(f"{path} lists a bad shard {str(name)[:60]!r}; delete {folder.parent} to tokenise again")
        if not f.is_file() or f.stat().st_size != 4 * n:
            raise DataError(f"{f} is missing or not {n} tokens long; delete {folder.parent} to tokenise again")
    return index


class TokenStream:
    """The tokens of a shard folder as one stream: read(start, n) -> int64 array, across shard edges."""

    def __init__(self, folder: Path):
        self.index = read_index(folder)
        self.maps = [np.memmap(folder / s["file"], dtype="<u4", mode="r") for s in self.index["shards"] if s["tokens"]]
        self.starts = np.cumsum([0] + [len(m) for m in self.maps])
        self.n_tokens = int(self.starts[-1])

    def locate(self, start: int) -> tuple[int, int]:
        """(shard, offset in it) of token `start` of the stream."""
        s = int(np.searchsorted(self.starts, start, side="right")) - 1
        return s, int(start - self.starts[s])

    def read(self, start: int, n: int) -> np.ndarray:
        out, s, off = [], *self.locate(start)
        while n > 0:
            part = self.maps[s][off : off + n]
            out.append(np.asarray(part, dtype=np.int64))
            n -= len(part)
            s, off = s + 1, 0
        return np.concatenate(out)


if __name__ == "__main__":
    _worker_main()
