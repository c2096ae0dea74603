"""Writing safetensors shards one tensor at a time (`ShardWriter`).

Entries are (name, dtype, shape, source) where the source is a byte range of an existing shard (copied
by `_copy_range`, in the kernel when it can), a tensor, or a callable that makes the tensor when its
shard is written, so at most one made tensor is in memory. The result is Hugging Face's layout: shards
`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, or one `model.safetensors` when
everything fits. Write into a temporary folder (`emo_slice.artifacts.atomic_output_dir`) so that a
crash leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import torch

from emo_slice.errors import CheckpointError
from emo_slice.io.safetensors import INDEX_NAME, SINGLE_NAME, TORCH_TO_ST, TensorInfo

Source = Union[TensorInfo, Callable[[], torch.Tensor], torch.Tensor]
COPY_CHUNK = 1 << 30
READ_CHUNK = 16 << 20


@dataclass
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    source: Source


def _copy_range(src: Path, start: int, length: int, dst) -> None:
    """Copy bytes [start, start+length) of src to the end of the open file dst, in the kernel when possible."""
    with open(src, "rb") as f:
        fd_in, fd_out = f.fileno(), dst.fileno()
        dst.flush()
        offset = start
        remaining = length
        try:
            while remaining:
                n = os.copy_file_range(fd_in, fd_out, min(remaining, COPY_CHUNK), offset)
                if n == 0:
                    raise CheckpointError(f"{src} ended early while copying: re-download this shard")
                offset += n
                remaining -= n
            return
        except (AttributeError, OSError):
            pass  # no copy_file_range here (other OS, filesystem): fall back to buffered copy
        f.seek(offset)
        dst.seek(0, os.SEEK_END)
        while remaining:
            chunk = f.read(min(remaining, READ_CHUNK))
            if not chunk:
                raise CheckpointError(f"{src} ended early while copying: re-download this shard")
            dst.write(chunk)
            remaining -= len(chunk)


def _entry(name: str, source: Source, dtype: torch.dtype | None, shape) -> _Entry:
    if isinstance(source, TensorInfo):
        return _Entry(name, source.dtype, source.shape, source.nbytes, source)
    if isinstance(source, torch.Tensor):
        return _Entry(
            name, TORCH_TO_ST[source.dtype], tuple(source.shape), source.numel() * source.element_size(), source
        )
    if dtype is None or shape is None:
        raise ValueError("a callable source needs dtype and shape")
    numel = 1
    for s in shape:
        numel *= s
    return _Entry(name, TORCH_TO_ST[dtype], tuple(shape), numel * torch.empty((), dtype=dtype).element_size(), source)


class ShardWriter:
    """Write tensors into safetensors shards (HF naming + index) inside `folder`.

    add(name, source, dtype=None, shape=None): source is a TensorInfo (bytes copied verbatim), a tensor,
    or a callable returning the tensor (made only when its shard is written). For callables give dtype
    and shape. Call finish() once; it returns the list of files written.
    """

    def __init__(self, folder: str | os.PathLike, max_shard_bytes: int = 5 * 1024**3, metadata: dict | None = None):
        self.folder = Path(folder)
        self.max_shard_bytes = max_shard_bytes
        self.metadata = {"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}}
        self._pending: list[_Entry] = []
        self._pending_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []
        self._total = 0

    def add(self, name: str, source: Source, dtype: torch.dtype | None = None, shape=None) -> None:
        entry = _entry(name, source, dtype, shape)
        if self._pending and self._pending_bytes + entry.nbytes > self.max_shard_bytes:
            self._flush()
        self._pending.append(entry)
        self._pending_bytes += entry.nbytes

    def _flush(self) -> None:
        tmp_name = f"shard-{len(self._shards):05d}.tmp"
        header: dict = {"__metadata__": self.metadata}
        offset = 0
        for e in self._pending:
            header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
            offset += e.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(self.folder / tmp_name, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for e in self._pending:
                if isinstance(e.source, TensorInfo):
                    _copy_range(e.source.file, e.source.start, e.nbytes, f)
                    f.seek(0, os.SEEK_END)
                else:
                    t = e.source if isinstance(e.source, torch.Tensor) else e.source()
                    if tuple(t.shape) != e.shape or TORCH_TO_ST[t.dtype] != e.dtype:
                        raise ValueError(f"{e.name}: made {t.dtype} {tuple(t.shape)}, announced {e.dtype} {e.shape}")
                    f.write(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
                    del t
        self._shards.append((tmp_name, [e.name for e in self._pending]))
        self._total += offset
        self._pending, self._pending_bytes = [], 0

    def finish(self) -> list[str]:
        if self._pending or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            os.replace(self.folder / self._shards[0][0], self.folder / SINGLE_NAME)
            return [SINGLE_NAME]
        weight_map, files = {}, []
        for i, (tmp, names) in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.folder / tmp, self.folder / final)
            files.append(final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self._total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return files + [INDEX_NAME]
