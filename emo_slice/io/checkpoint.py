"""EMO checkpoints: a safetensors folder (or Hub id) plus its config.json, opened lazily.

`Checkpoint` = `SafetensorsIndex` (shard headers, a few KB each; see io/safetensors.py) + `EmoConfig` +
`fingerprint()`. Tensors are read one at a time with plain file reads when asked. `resolve_checkpoint`
turns a local folder or a Hugging Face Hub id (cache first) into a folder. Writing lives in
io/writer.py (`ShardWriter`) and io/build.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch

from emo_slice.errors import CheckpointError, UsageError
from emo_slice.io.safetensors import INDEX_NAME, SINGLE_NAME, SafetensorsIndex, TensorInfo, read_into, read_tensor
from emo_slice.model.config import EmoConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.txt", "*.model", "*.tiktoken"]


def parse_dtype(name: str | torch.dtype | None, flag: str = "--dtype") -> torch.dtype | None:
    """'float32' | 'bfloat16' | 'float16' (or a torch.dtype, or None) -> torch.dtype."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(name, name)
    if key not in DTYPES:
        raise UsageError(f"{flag} {name!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[key]


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
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:
        if offline:
            raise CheckpointError(
                f"{repo_id} is not a local folder and is not in the Hugging Face cache (HF_HUB_OFFLINE is set): "
                f"download it first with `hf download {repo_id}` on a machine with network, or pass a local folder"
            ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"could not fetch {repo_id} from the Hugging Face Hub ({first[:200]}); check the id and your network, "
            f"or download it with `hf download {repo_id}` and pass the local folder"
        ) from None


class Checkpoint:
    """An EMO checkpoint folder (or Hub id), opened lazily: config.json and the shard headers only."""

    def __init__(self, path_or_id: str | os.PathLike):
        self.source = str(path_or_id)
        self.path = resolve_checkpoint(path_or_id)
        self.config = EmoConfig.from_file(self.path / "config.json")
        self.index = SafetensorsIndex(self.path)
        self.infos: dict[str, TensorInfo] = self.index.infos

    # ---- queries -------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def names(self) -> list[str]:
        return self.index.names()

    def info(self, name: str) -> TensorInfo:
        try:
            return self.infos[name]
        except KeyError:
            raise CheckpointError(
                f"tensor {name} is missing from {self.path}: the checkpoint is incomplete or not an EMO layout"
            ) from None

    @property
    def total_bytes(self) -> int:
        return self.index.total_bytes

    @property
    def stored_dtype(self) -> torch.dtype:
        return self.index.stored_dtype

    def fingerprint(self) -> str:
        """sha256 over config and tensor names/shapes/dtypes/sizes: identifies the model, cheap to compute."""
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True, default=str).encode())
        for name in sorted(self.infos):
            i = self.infos[name]
            h.update(f"{name}|{i.dtype}|{i.shape}|{i.nbytes}\n".encode())
        return h.hexdigest()[:16]

    def extra_files(self) -> list[Path]:
        """Files of the folder that are not weights, index or config (tokenizer, remote code, ...)."""
        weights = {p.name for p in self.index.files()} | {INDEX_NAME, "config.json"}
        return sorted(p for p in self.path.iterdir() if p.is_file() and p.name not in weights)

    # ---- tensors -------------------------------------------------------------------------
    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, read with plain file reads into a fresh tensor (no memory map kept), optionally cast."""
        return read_tensor(self.info(name), dtype)

    def read_into(self, name: str, dst: torch.Tensor) -> None:
        """Fill dst (a parameter or a slice of one) with tensor `name`, casting if the dtypes differ."""
        info = self.info(name)
        if tuple(info.shape) != tuple(dst.shape):
            raise CheckpointError(
                f"tensor {name} has shape {tuple(info.shape)} but config.json implies "
                f"{tuple(dst.shape)}; the config does not match the weights"
            )
        if info.torch_dtype == dst.dtype and dst.is_contiguous():
            read_into(info, dst)
        else:
            dst.copy_(self.get(name))


__all__ = ["Checkpoint", "resolve_checkpoint", "parse_dtype", "DTYPES", "INDEX_NAME", "SINGLE_NAME"]
