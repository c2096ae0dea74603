"""safetensors folders, read lazily: headers only, then one tensor at a time with plain file reads.

Knows nothing of EMO: `SafetensorsIndex` opens a folder (model.safetensors.index.json, or one
model.safetensors, or every *.safetensors) and maps tensor name -> `TensorInfo`, the exact byte range
of the tensor in its shard. `read_into` fills a tensor from that range and `read_tensor` makes one;
no memory map is kept, so pages of a 50 GB checkpoint never pile up in the process's memory.

This is the one validation layer every reader goes through (the folder may come from anywhere):
- a header is a JSON object whose entries each have a known dtype, a shape of non-negative ints and
  `data_offsets` [begin, end] that, sorted, tile the data section exactly (contiguous from 0, no
  overlap, ending at the end of the file), with shape x itemsize == end - begin: what the `safetensors`
  library enforces, plus no duplicate keys and no NaN/Infinity;
- an index's `weight_map` maps str -> plain `*.safetensors` file names of the folder (no separators,
  no `..`, not absolute);
- every file read (`folder_file`) is a regular file (checked with stat before opening, so a FIFO never
  blocks), and a symlink is followed only when it stays in the folder or is a Hugging Face cache
  snapshot link into the blobs of the same repository (`snapshots/<rev>/name -> ../../blobs/<hash>`).
Every failure is one CheckpointError line naming the file, what is wrong and how to fix it.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from emo_slice.errors import CheckpointError
from emo_slice.io.safefiles import REDOWNLOAD, RegularFile, folder_file, parse_json_bytes, short

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit
MAX_INDEX_BYTES = 100_000_000
MAX_DIM = 2**63 - 1  # torch sizes are int64
MAX_NDIM = 64

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


# ---- headers --------------------------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """Return (header dict, offset of the data section) of a safetensors file, fully validated."""
    path = Path(path)
    with RegularFile(path) as f:
        raw, size = f.read(8), f.size
        if len(raw) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes, not even a header length): {REDOWNLOAD}")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(
                f"{path} is truncated or not a safetensors file (header length {n}, file {size} bytes): {REDOWNLOAD}"
            )
        raw = f.read(n)
    try:
        header = parse_json_bytes(raw)
    except ValueError as e:
        raise CheckpointError(
            f"{path} has a corrupt header ({e}); it is not a safetensors file: {REDOWNLOAD}"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path} has a corrupt header (a JSON {type(header).__name__}, not an object): {REDOWNLOAD}"
        )
    _check_metadata(path, header.get("__metadata__"))
    ranges = [_check_entry(path, name, entry) for name, entry in header.items() if name != "__metadata__"]
    _check_layout(path, ranges, size - 8 - n)
    return header, 8 + n


def _check_metadata(path: Path, meta) -> None:
    if meta is None:
        return
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(
            f"{path} has a corrupt header: __metadata__ must map strings to strings, not {short(meta)}; {REDOWNLOAD}"
        )


def _is_count(x) -> bool:
    return type(x) is int and 0 <= x <= MAX_DIM


def _check_entry(path: Path, name: str, entry) -> tuple[int, int, str]:
    """(begin, end, name) of one header entry, after checking its dtype, shape, offsets and byte count."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: tensor {short(name)} {what}; the header is corrupt: {REDOWNLOAD}")

    if not isinstance(entry, dict):
        raise bad(f"is {short(entry)}, not an object with dtype, shape and data_offsets")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise bad(f"has no {key}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ST_DTYPES:
        raise bad(f"has dtype {short(dtype)}, not one of {', '.join(ST_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"has shape {short(shape)}, not a list of non-negative integers")
    if len(shape) > MAX_NDIM or math.prod(max(d, 1) for d in shape) > MAX_DIM // 2:
        raise bad(f"has shape {short(shape)}, too large for a tensor")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise bad(f"has data_offsets {short(offsets)}, not two non-negative integers [begin, end]")
    begin, end = offsets
    if begin > end:
        raise bad(f"has reversed data_offsets [{begin}, {end}]")
    nbytes = math.prod(shape) * ST_DTYPES[dtype].itemsize
    if nbytes != end - begin:
        raise bad(f"has shape {shape} of {dtype} ({nbytes} bytes) but data_offsets span {end - begin} bytes")
    return begin, end, name


def _check_layout(path: Path, ranges: list[tuple[int, int, str]], data_len: int) -> None:
    """Sorted by offset, the tensors must tile the data section exactly: contiguous, no overlap, no gap."""
    cursor = 0
    for begin, end, name in sorted(ranges, key=lambda r: (r[0], r[1])):
        if begin != cursor:
            what = "overlaps the tensor before it" if begin < cursor else f"leaves a gap of {begin - cursor} bytes"
            raise CheckpointError(
                f"{path}: tensor {short(name)} at data_offsets [{begin}, {end}] {what}; the header is corrupt: "
                f"{REDOWNLOAD}"
            )
        cursor = end
    if cursor > data_len:
        raise CheckpointError(
            f"{path} is truncated: its header needs {cursor} bytes of data but the file holds {data_len}; "
            "re-download or re-save this shard"
        )
    if cursor < data_len:
        raise CheckpointError(
            f"{path} holds {data_len - cursor} bytes after its last tensor (the header does not describe the file): "
            f"{REDOWNLOAD}"
        )


# ---- tensors --------------------------------------------------------------------------------------------


def read_into(info: TensorInfo, dst: torch.Tensor) -> None:
    """Read a tensor's bytes straight into dst (same dtype, contiguous): no mmap, no temporary copy."""
    buf = memoryview(dst.reshape(-1).view(torch.uint8).numpy()).cast("B") if dst.numel() else memoryview(b"")
    try:
        with open(info.file, "rb", buffering=0) as f:
            f.seek(info.start)
            done = 0
            while done < info.nbytes:
                n = f.readinto(buf[done:])
                if not n:
                    raise CheckpointError(f"{info.file} ended early while reading {info.name}: re-download this shard")
                done += n
    except OSError as e:
        raise CheckpointError(f"cannot read {info.file} ({e.strerror}); check the file and its permissions") from None


def read_tensor(info: TensorInfo, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One tensor, read with plain file reads into a fresh tensor, optionally cast to dtype."""
    t = torch.empty(info.shape, dtype=info.torch_dtype)
    read_into(info, t)
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


# ---- folders --------------------------------------------------------------------------------------------


def _check_shard_name(index: Path, name) -> None:
    """A weight_map value must be a plain *.safetensors file name of the folder."""
    if not isinstance(name, str):
        raise CheckpointError(f"{index} is corrupt: weight_map holds {short(name)}, not a file name; {REDOWNLOAD}")
    plain = (
        name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and not os.path.isabs(name)
        and name.endswith(".safetensors")
    )
    if not plain:
        raise CheckpointError(
            f"{index} names shard {short(name)}, which is not a plain *.safetensors file name inside the folder; "
            "emo-slice reads no file outside a checkpoint folder: re-download the checkpoint"
        )


def read_index(folder: Path, real_folder: Path | None = None) -> dict[str, str]:
    """The weight_map (tensor name -> shard file name) of folder's index, validated."""
    index = folder_file(folder, INDEX_NAME, "index", real_folder)
    with RegularFile(index) as f:
        if f.size > MAX_INDEX_BYTES:
            raise CheckpointError(f"{index} is {f.size} bytes, too large for an index: {REDOWNLOAD}")
        raw = f.read(MAX_INDEX_BYTES)
    try:
        data = parse_json_bytes(raw)
    except ValueError as e:
        raise CheckpointError(f"{index} is corrupt ({e}): re-download it") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        what = (
            "is not a JSON object"
            if not isinstance(data, dict)
            else (
                "has no weight_map"
                if "weight_map" not in data
                else f"has a weight_map that is a {type(weight_map).__name__}"
            )
        )
        raise CheckpointError(
            f"{index} is corrupt: it {what} (weight_map must map tensor names to shard files); re-download it"
        )
    for shard in weight_map.values():
        _check_shard_name(index, shard)
    return weight_map


def _shard_files(folder: Path, real: Path) -> tuple[dict[str, str] | None, list[str]]:
    """(weight_map or None, shard file names) of a folder: index, else model.safetensors, else *.safetensors."""
    if os.path.lexists(folder / INDEX_NAME):
        weight_map = read_index(folder, real)
        return weight_map, sorted(set(weight_map.values()))
    if os.path.lexists(folder / SINGLE_NAME):
        return None, [SINGLE_NAME]
    try:
        found = sorted(x.name for x in folder.glob("*.safetensors"))
    except OSError as e:
        raise CheckpointError(f"cannot list {folder} ({e.strerror}); check its permissions") from None
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
        real = self.path.resolve()
        weight_map, files = _shard_files(self.path, real)
        what = f"shard listed in {INDEX_NAME}" if weight_map is not None else "shard"
        for fname in files:
            path = folder_file(self.path, fname, what, real)
            header, data_start = read_safetensors_header(path)
            for name, meta in header.items():
                if name == "__metadata__" or (weight_map is not None and weight_map.get(name) != fname):
                    continue
                if name in self.infos:
                    raise CheckpointError(
                        f"tensor {short(name)} is in both {self.infos[name].file.name} and {fname}; keep one copy "
                        "(or write a model.safetensors.index.json naming its shard)"
                    )
                a, b = meta["data_offsets"]
                self.infos[name] = TensorInfo(
                    name, path, meta["dtype"], tuple(meta["shape"]), data_start + a, data_start + b
                )
        if weight_map is not None:
            missing = [n for n in weight_map if n not in self.infos]
            if missing:
                raise CheckpointError(
                    f"{len(missing)} tensors listed in {INDEX_NAME} are not in their shards (first: {short(missing[0])}); "
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
