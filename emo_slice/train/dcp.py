"""Sharded training state with torch.distributed.checkpoint (DCP), its metadata as JSON instead of a pickle.

Every rank writes its own shards (`__<rank>_0.distcp`) of one flat state dict:

- `model/<fqn>`: the weights as `get_state_dict` gives them (DTensor shards under FSDP2, full tensors
  otherwise: DCP writes a replicated tensor once);
- `optim/<fqn>/<key>`: AdamW's step, exp_avg and exp_avg_sq per parameter (sharded like the weights);
- `rng/cpu/<rank>`, `rng/cuda/<rank>`: each rank's generator states.

Loading reads only what this rank's shards need and reshards: a checkpoint saved on N ranks (FSDP2, DDP
or one process) loads on M ranks, with or without FSDP2.

Why not DCP's own `.metadata`: torch (2.13 included) writes it with `pickle.dump` and
`FileSystemReader.read_metadata` reads it with a plain `pickle.load`, which runs whatever code a crafted
file names. Here `JsonWriter.finish` writes `metadata.json` instead (tensor names, dtypes, sizes, chunks,
byte ranges; no pickle is written at all) and `JsonReader.read_metadata` rebuilds DCP's metadata objects
from it after checking every field (file names inside the folder, dtypes from a fixed list, integer
offsets). The tensor bytes in the `.distcp` files are read by DCP itself with
`torch.load(weights_only=True)`, torch's restricted unpickler that only rebuilds tensors (it cannot call
arbitrary code). Byte entries (DCP pickles non-tensor values and loads them with weights_only=False) are
never written and refused on load; non-tensor state goes to the JSON manifest (training_state.py).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from emo_slice.artifacts import atomic_write_text
from emo_slice.errors import CheckpointError
from emo_slice.safejson import parse_json, read_limited

METADATA_FILE = "metadata.json"
METADATA_FORMAT = "emo-slice-dcp-metadata"
MAX_METADATA_BYTES = 1 << 30  # the metadata of a 14B model sharded over many ranks is tens of MB
DCP_VERSION = "1.0.0"
SHARD_FILE = re.compile(r"__\d{1,6}_\d{1,6}\.distcp")
DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int8)
    + (torch.int16, torch.int32, torch.int64, torch.bool)
}


def _storage_info(relative_path: str, offset: int, length: int):
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    return _StorageInfo(relative_path=relative_path, offset=offset, length=length)


def metadata_to_json(metadata: Metadata, storage: dict) -> dict:
    """DCP's metadata (tensor entries only) and the byte ranges of every chunk, as JSON-ready data."""
    tensors = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if not isinstance(md, TensorStorageMetadata):
            raise CheckpointError(f"the training state holds a non-tensor entry {fqn!r}; only tensors are saved")
        tensors[fqn] = {
            "dtype": str(md.properties.dtype).removeprefix("torch."),
            "size": list(md.size),
            "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in md.chunks],
        }
    ranges = []
    for index, info in storage.items():
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError("DCP stream transforms are not supported in a training state")
        offset = None if index.offset is None else list(index.offset)
        ranges.append(
            {"fqn": index.fqn, "offset": offset, "index": index.index, "file": info.relative_path}
            | {"start": info.offset, "length": info.length}
        )
    return {"format": METADATA_FORMAT, "dcp_version": DCP_VERSION, "tensors": tensors, "storage": ranges}


class JsonWriter(FileSystemWriter):
    """DCP's file-system writer, its metadata written as JSON (metadata.json) instead of a pickle."""

    def __init__(self, path):
        super().__init__(path, single_file_per_rank=True, sync_files=True, thread_count=1)

    def finish(self, metadata: Metadata, results) -> None:
        storage = {wr.index: wr.storage_data for per_rank in results for wr in per_rank}
        atomic_write_text(Path(self.path) / METADATA_FILE, json.dumps(metadata_to_json(metadata, storage)))


def _ints(v, where: str, n: int | None = None) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        raise ValueError(f"{where} is not a list of non-negative integers")
    if n is not None and len(v) != n:
        raise ValueError(f"{where} has {len(v)} entries, expected {n}")
    return v


def _tensor_md(fqn: str, d: dict) -> TensorStorageMetadata:
    if not isinstance(d, dict) or d.get("dtype") not in DTYPES:
        raise ValueError(f"tensor {fqn[:80]!r} has no known dtype")
    size = _ints(d.get("size"), f"the size of {fqn[:80]!r}")
    if not isinstance(d.get("chunks"), list):
        raise ValueError(f"tensor {fqn[:80]!r} has no chunk list")
    chunks = []
    for c in d["chunks"]:
        if not isinstance(c, dict):
            raise ValueError(f"a chunk of {fqn[:80]!r} is not an object")
        off = _ints(c.get("offsets"), f"a chunk offset of {fqn[:80]!r}", len(size))
        sz = _ints(c.get("sizes"), f"a chunk size of {fqn[:80]!r}", len(size))
        if any(o + s > n for o, s, n in zip(off, sz, size)):
            raise ValueError(f"a chunk of {fqn[:80]!r} lies outside the tensor")
        chunks.append(ChunkStorageMetadata(offsets=torch.Size(off), sizes=torch.Size(sz)))
    props = TensorProperties(dtype=DTYPES[d["dtype"]])
    return TensorStorageMetadata(properties=props, size=torch.Size(size), chunks=chunks)


def metadata_from_json(doc, folder: Path) -> Metadata:
    """DCP metadata rebuilt from metadata.json, every field checked (ValueError says what is wrong)."""
    if not isinstance(doc, dict) or doc.get("format") != METADATA_FORMAT:
        raise ValueError("it is not emo-slice DCP metadata")
    if not isinstance(doc.get("tensors"), dict) or not isinstance(doc.get("storage"), list):
        raise ValueError("it has no tensor table or no storage table")
    state = {fqn: _tensor_md(fqn, d) for fqn, d in doc["tensors"].items()}
    storage = {}
    for r in doc["storage"]:
        if not isinstance(r, dict) or r.get("fqn") not in state:
            raise ValueError("a storage entry names no tensor of the table")
        name = r.get("file")
        if not isinstance(name, str) or not SHARD_FILE.fullmatch(name) or not (folder / name).is_file():
            raise ValueError(f"a storage entry names {str(name)[:60]!r}, not a shard file of this folder")
        off = r.get("offset")
        off = None if off is None else torch.Size(_ints(off, "a storage offset", len(state[r["fqn"]].size)))
        index = r.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
            raise ValueError("a storage entry has a bad chunk index")
        start, length = _ints([r.get("start"), r.get("length")], "a byte range")
        storage[MetadataIndex(fqn=r["fqn"], offset=off, index=index)] = _storage_info(name, start, length)
    planner = {fqn: (fqn,) for fqn in state}
    return Metadata(state_dict_metadata=state, planner_data=planner, storage_data=storage, version=DCP_VERSION)


class JsonReader(FileSystemReader):
    """DCP's file-system reader that takes its metadata from metadata.json (never unpickles .metadata)."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        return read_metadata(Path(self.path), self.load_id)


def read_metadata(folder: Path, load_id: str | None = None) -> Metadata:
    """The checked metadata of a DCP folder emo-slice wrote (CheckpointError naming the folder otherwise)."""
    path = folder / METADATA_FILE
    try:
        if path.is_symlink() or not path.is_file():
            raise ValueError(f"it has no {METADATA_FILE}")
        raw = read_limited(path, MAX_METADATA_BYTES, error=CheckpointError)
        md = metadata_from_json(parse_json(raw), folder)
    except (OSError, ValueError, CheckpointError) as e:
        why = str(e).replace(f"{path}: ", "")[:160]
        raise CheckpointError(
            f"{folder} is not a sharded training state emo-slice wrote ({METADATA_FILE}: {why}); resume from another "
            "checkpoint (write its name into 'latest') or start afresh with --overwrite"
        ) from None
    md.storage_meta = StorageMeta(load_id=load_id)
    return md


def save_sharded(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Write this rank's part of a flat {name: tensor} state (a collective under a process group)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, storage_writer=JsonWriter(folder), no_dist=not dist.is_initialized())


def load_sharded(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Fill the tensors of `state` in place from the checkpoint (a collective under a process group)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=JsonReader(folder), no_dist=not dist.is_initialized())
