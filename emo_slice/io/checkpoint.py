"""Checkpoint I/O: read Hugging Face safetensors folders lazily, write them atomically.

Reading never loads a whole checkpoint: `Checkpoint` parses the shard headers (a few KB each) and
hands out one tensor at a time from the memory-mapped shard. `TensorInfo` gives the exact byte range
of a tensor so surgery can copy bytes without materialising them.

Writing goes through `ShardWriter`: entries are (name, dtype, shape, source) where the source is a
byte range of an existing file or a callable that makes the tensor when its turn comes, so at most
one tensor is in memory. Shards + `model.safetensors.index.json` (or one `model.safetensors` when it
fits), all inside a temporary folder that `atomic_output_dir` renames into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Union

import torch

from emo_slice.model.config import EmoConfig
from emo_slice.errors import CheckpointError, UsageError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_ST = {v: k for k, v in ST_DTYPES.items()}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype | None, flag: str = "--dtype") -> torch.dtype | None:
    """'float32' | 'bfloat16' | 'float16' (or a torch.dtype, or None) -> torch.dtype."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(name, name)
    if key not in DTYPES:
        raise UsageError(f"{flag} {name!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[key]


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
            if n > 100_000_000 or 8 + n > size:
                raise CheckpointError(f"{path} is truncated or not a safetensors file: re-download or re-save it")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(
            f"shard {path.name} listed in the index is missing from {path.parent}: re-download the checkpoint"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has a corrupt header (not a safetensors file): re-download or re-save it") from None
    data_start = 8 + n
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if data_start + end > size:
        raise CheckpointError(
            f"{path} is truncated: {size} bytes on disk but its header needs {data_start + end}; "
            "re-download or re-save this shard"
        )
    return header, data_start


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_checkpoint(path_or_id: str | os.PathLike) -> Path:
    """A local folder, or a Hugging Face Hub id resolved through huggingface_hub (cache first)."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise CheckpointError(f"{p} is a file; give the checkpoint folder that holds config.json and the shards")
    s = str(path_or_id)
    if not HUB_ID.match(s) or s.startswith((".", "/", "~")):
        raise CheckpointError(
            f"no checkpoint folder at {s}: give a folder with config.json and *.safetensors, or a Hub id "
            "such as allenai/Emo_1b14b_1T"
        )
    return _snapshot(s)


def _snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError("huggingface_hub is not installed: pip install huggingface_hub") from None
    patterns = ["*.json", "*.safetensors", "*.py", "*.txt", "*.model", "*.tiktoken"]
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        if offline:
            raise CheckpointError(
                f"{repo_id} is not a local folder and is not in the Hugging Face cache (HF_HUB_OFFLINE is set): "
                f"download it first with `hf download {repo_id}` on a machine with network, or pass a local folder"
            ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"could not fetch {repo_id} from the Hugging Face Hub ({first[:200]}); check the id and your network, "
            f"or download it with `hf download {repo_id}` and pass the local folder"
        ) from None


class Checkpoint:
    """A safetensors checkpoint folder, opened lazily (headers only)."""

    def __init__(self, path_or_id: str | os.PathLike):
        self.source = str(path_or_id)
        self.path = resolve_checkpoint(path_or_id)
        self.config = EmoConfig.from_file(self.path / "config.json")
        self.infos: dict[str, TensorInfo] = {}
        index = self.path / INDEX_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CheckpointError(f"{index} is corrupt (no weight_map): re-download it") from None
            files = sorted(set(weight_map.values()))
        elif (self.path / SINGLE_NAME).exists():
            weight_map, files = None, [SINGLE_NAME]
        else:
            found = sorted(x.name for x in self.path.glob("*.safetensors"))
            if not found:
                raise CheckpointError(
                    f"{self.path} holds no model.safetensors nor {INDEX_NAME}: is this a checkpoint folder? "
                    "(PyTorch .bin checkpoints are not supported; convert them with save_pretrained(safe_serialization=True))"
                )
            weight_map, files = None, found
        for fname in files:
            header, data_start = read_safetensors_header(self.path / fname)
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                if weight_map is not None and weight_map.get(name) != fname:
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

    # ---- queries -------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def names(self) -> list[str]:
        return list(self.infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.infos[name]
        except KeyError:
            raise CheckpointError(
                f"tensor {name} is missing from {self.path}: the checkpoint is incomplete or not an EMO layout"
            ) from None

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())

    @property
    def stored_dtype(self) -> torch.dtype:
        counts: dict[str, int] = {}
        for i in self.infos.values():
            counts[i.dtype] = counts.get(i.dtype, 0) + i.nbytes
        return ST_DTYPES[max(counts, key=counts.get)] if counts else torch.float32

    def fingerprint(self) -> str:
        """sha256 over config and tensor names/shapes/dtypes/sizes: identifies the model, cheap to compute."""
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True, default=str).encode())
        for name in sorted(self.infos):
            i = self.infos[name]
            h.update(f"{name}|{i.dtype}|{i.shape}|{i.nbytes}\n".encode())
        return h.hexdigest()[:16]

    # ---- tensors -------------------------------------------------------------------------
    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, read with plain file reads into a fresh tensor, optionally cast.

        No memory map is kept: pages of a 50 GB checkpoint never pile up in the process's memory."""
        info = self.info(name)
        t = torch.empty(info.shape, dtype=info.torch_dtype)
        read_into(info, t)
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    def read_into(self, name: str, dst: torch.Tensor) -> None:
        """Fill dst (a parameter or a slice of one) with tensor `name`, casting if the dtypes differ."""
        info = self.info(name)
        if tuple(info.shape) != tuple(dst.shape):
            raise CheckpointError(f"tensor {name} has shape {tuple(info.shape)} but config.json implies "
                                  f"{tuple(dst.shape)}; the config does not match the weights")
        if info.torch_dtype == dst.dtype and dst.is_contiguous():
            read_into(info, dst)
        else:
            dst.copy_(self.get(name))

    def close(self) -> None:
        """Nothing stays open between reads; kept for symmetry with file-like objects."""

    def extra_files(self) -> list[Path]:
        """Files of the folder that are not weights, index or config (tokenizer, remote code, ...)."""
        weights = {i.file.name for i in self.infos.values()} | {INDEX_NAME, "config.json"}
        return sorted(p for p in self.path.iterdir() if p.is_file() and p.name not in weights)


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


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

Source = Union[TensorInfo, Callable[[], torch.Tensor], torch.Tensor]


@dataclass
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    source: Source


def _copy_range(src: Path, start: int, length: int, dst) -> None:
    """Copy bytes [start, start+length) of src into the open file dst, in the kernel when possible."""
    with open(src, "rb") as f:
        fd_in, fd_out = f.fileno(), dst.fileno()
        dst.flush()
        offset = start
        remaining = length
        try:
            while remaining:
                n = os.copy_file_range(fd_in, fd_out, min(remaining, 1 << 30), offset)
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
            chunk = f.read(min(remaining, 16 << 20))
            if not chunk:
                raise CheckpointError(f"{src} ended early while copying: re-download this shard")
            dst.write(chunk)
            remaining -= len(chunk)


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
        if isinstance(source, TensorInfo):
            entry = _Entry(name, source.dtype, source.shape, source.nbytes, source)
        elif isinstance(source, torch.Tensor):
            entry = _Entry(name, TORCH_TO_ST[source.dtype], tuple(source.shape), source.numel() * source.element_size(), source)
        else:
            if dtype is None or shape is None:
                raise ValueError("a callable source needs dtype and shape")
            numel = 1
            for s in shape:
                numel *= s
            entry = _Entry(name, TORCH_TO_ST[dtype], tuple(shape), numel * torch.empty((), dtype=dtype).element_size(), source)
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


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success rename it to `out`, on error remove it.

    Refuses an `out` that already holds files unless overwrite (then the old folder is replaced only
    after the new one is complete).
    """
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UsageError(f"{flag} {out} already exists and is not empty; choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


