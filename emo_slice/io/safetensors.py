"""safetensors folders, read lazily: headers only, then one tensor at a time with plain file reads.

Knows nothing of EMO: `SafetensorsIndex` opens a folder (model.safetensors.index.json, or one
model.safetensors, or every *.safetensors) and maps tensor name -> `TensorInfo`, the exact byte range
of the tensor in its shard. `read_into` fills a tensor from that range and `read_tensor` makes one;
no memory map is kept, so pages of a 50 GB checkpoint never pile up in the process's memory.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from emo_slice.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100_000_000

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_ST = {v: k for k, v in ST_DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype (safetensors name), shape, absolute byte range."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def torch_dtype(self) -> torch.dtype:
        return ST_DTYPES[self.dtype]


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """Return (header dict, offset of the data section); validates the file is complete."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path} is truncated ({size} bytes): re-download or re-save it")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"{path} is truncated or not a safetensors file: re-download or re-save it")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(
            f"shard {path.name} listed in the index is missing from {path.parent}: re-download the checkpoint"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(
            f"{path} has a corrupt header (not a safetensors file): re-download or re-save it"
        ) from None
    data_start = 8 + n
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if data_start + end > size:
        raise CheckpointError(
            f"{path} is truncated: {size} bytes on disk but its header needs {data_start + end}; "
            "re-download or re-save this shard"
        )
    return header, data_start


def read_into(info: TensorInfo, dst: torch.Tensor) -> None:
    """Read a tensor's bytes straight into dst (same dtype, contiguous): no mmap, no temporary copy."""
    buf = memoryview(dst.view(torch.uint8).reshape(-1).numpy()).cast("B") if dst.numel() else memoryview(b"")
    with open(info.file, "rb", buffering=0) as f:
        f.seek(info.start)
        done = 0
        while done < info.nbytes:
            n = f.readinto(buf[done:])
            if not n:
                raise CheckpointError(f"{info.file} ended early while reading {info.name}: re-download this shard")
            done += n


def read_tensor(info: TensorInfo, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One tensor, read with plain file reads into a fresh tensor, optionally cast to dtype."""
    t = torch.empty(info.shape, dtype=info.torch_dtype)
    read_into(info, t)
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


def _shard_files(folder: Path) -> tuple[dict[str, str] | None, list[str]]:
    """(weight_map or None, shard file names) of a folder: index, else model.safetensors, else *.safetensors."""
    index = folder / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index} is corrupt (no weight_map): re-download it") from None
        return weight_map, files
    if (folder / SINGLE_NAME).exists():
        return None, [SINGLE_NAME]
    found = sorted(x.name for x in folder.glob("*.safetensors"))
    if not found:
        raise CheckpointError(
            f"{folder} holds no model.safetensors nor {INDEX_NAME}: is this a checkpoint folder? "
            "(PyTorch .bin checkpoints are not supported; convert them with save_pretrained(safe_serialization=True))"
        )
    return None, found


class SafetensorsIndex:
    """The tensors of a safetensors folder, by name (headers only; nothing is read until asked)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder)
        self.infos: dict[str, TensorInfo] = {}
        weight_map, files = _shard_files(self.path)
        for fname in files:
            header, data_start = read_safetensors_header(self.path / fname)
            for name, meta in header.items():
                if name == "__metadata__" or (weight_map is not None and weight_map.get(name) != fname):
                    continue
                a, b = meta["data_offsets"]
                self.infos[name] = TensorInfo(
                    name, self.path / fname, meta["dtype"], tuple(meta["shape"]), data_start + a, data_start + b
                )
        if weight_map is not None:
            missing = [n for n in weight_map if n not in self.infos]
            if missing:
                raise CheckpointError(
                    f"{len(missing)} tensors listed in {INDEX_NAME} are not in their shards (first: {missing[0]}); "
                    "re-download the checkpoint"
                )

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def names(self) -> list[str]:
        return list(self.infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.infos[name]
        except KeyError:
            raise CheckpointError(
                f"tensor {name} is missing from {self.path}: the checkpoint is incomplete or of another layout"
            ) from None

    def files(self) -> list[Path]:
        """The shard files that hold at least one tensor."""
        return sorted({i.file for i in self.infos.values()})

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())

    @property
    def stored_dtype(self) -> torch.dtype:
        """The dtype holding most bytes (float32 for an empty folder)."""
        counts: dict[str, int] = {}
        for i in self.infos.values():
            counts[i.dtype] = counts.get(i.dtype, 0) + i.nbytes
        return ST_DTYPES[max(counts, key=counts.get)] if counts else torch.float32

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor `name`, read into a fresh tensor, optionally cast."""
        return read_tensor(self.info(name), dtype)
