"""Checkpoints (EMO, OLMoE, Qwen2-MoE, Qwen3-MoE, Mixtral): a safetensors folder (or Hub id) plus its
config.json, opened lazily.

`Checkpoint` = `SafetensorsIndex` (shard headers, a few KB each; see io/safetensors.py) + `EmoConfig` +
`fingerprint()`, refusing on opening tensors that disagree with config.json (`check_tensors`). Tensors
are named per expert, the family's own names (`canonical_infos` turns transformers 5's fused experts and
renamed routers into those names, each a byte range of its file, so nothing downstream sees the layout). Every file
is read through io/safefiles.py: inside the folder, a regular file. Tensors are read one at a time with
plain file reads when asked. `resolve_checkpoint` turns a local folder or a Hugging Face Hub id (cache
first) into a folder. Writing lives in io/writer.py (`ShardWriter`) and io/build.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from dataclasses import replace
from pathlib import Path

import torch

from emo_slice.errors import CheckpointError, UsageError
from emo_slice.io.safefiles import cache_ref, cache_repo, folder_file, member_stat
from emo_slice.io.safetensors import INDEX_NAME, SINGLE_NAME, SafetensorsIndex, TensorInfo, read_into, read_tensor
from emo_slice.model.config import EmoConfig
from emo_slice.model.hf_names import (
    expert_name,
    fused_names,
    hf_tensor_shapes,
    implied_tensor_count,
    router_aliases,
    router_name,
)
from emo_slice.safejson import read_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.txt", "*.model", "*.tiktoken"]
FLOAT_ST = ("F32", "BF16", "F16", "F64")


def parse_dtype(name: str | torch.dtype | None, flag: str = "`dtype`") -> torch.dtype | None:
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
    cache_ref(cache_repo(repo_id, "model"))  # a FIFO or foreign ref would block or mislead huggingface_hub
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


def canonical_infos(infos: dict[str, TensorInfo], cfg: EmoConfig) -> dict[str, TensorInfo]:
    """The tensors under the family's per-expert names: a layer stored with transformers 5's fused experts
    (`experts.gate_up_proj` [E, 2F, D], `experts.down_proj` [E, D, F]) becomes E x 3 views, each expert's gate,
    up and down a contiguous byte range of the fused tensor; a router saved under `mlp.gate` is renamed."""
    out = dict(infos)
    if cfg.num_hidden_layers > 100_000:
        return out  # refused by check_tensors (a hostile config): nothing to map
    for l in cfg.moe_layers():
        want = router_name(cfg, l)
        for alias in router_aliases(cfg, l):
            if want not in out and alias in out:
                out[want] = replace(out.pop(alias), name=want)
        if expert_name(cfg, l, 0, "gate") in out:
            continue
        for gate_up, down in fused_names(cfg, l):
            if gate_up in out and down in out:
                out.update(_unfused(cfg, l, out.pop(gate_up), out.pop(down)))
                break
    return out


def _unfused(cfg: EmoConfig, l: int, gate_up: TensorInfo, down: TensorInfo) -> dict[str, TensorInfo]:
    E = cfg.experts_in_layer(l)
    if len(gate_up.shape) != 3 or gate_up.shape[0] != E or len(down.shape) != 3 or down.shape[0] != E:
        raise CheckpointError(
            f"{gate_up.file}: fused experts {gate_up.name} {list(gate_up.shape)} / {down.name} {list(down.shape)} "
            f"do not hold the {E} experts config.json implies; re-download the checkpoint"
        )
    if gate_up.shape[1] % 2:
        raise CheckpointError(f"{gate_up.file}: {gate_up.name} has an odd gate/up width {gate_up.shape[1]}")
    F_, D = gate_up.shape[1] // 2, gate_up.shape[2]
    half, whole = gate_up.nbytes // (2 * E), down.nbytes // E
    out = {}
    for e in range(E):
        for kind, src, start, n, shape in (
            ("gate", gate_up, gate_up.start + 2 * e * half, half, (F_, D)),
            ("up", gate_up, gate_up.start + (2 * e + 1) * half, half, (F_, D)),
            ("down", down, down.start + e * whole, whole, tuple(down.shape[1:])),
        ):
            name = expert_name(cfg, l, e, kind)
            out[name] = TensorInfo(name, src.file, src.dtype, shape, start, start + n)
    return out


class Checkpoint:
    """A checkpoint folder (or Hub id), opened lazily: config.json and the shard headers only."""

    def __init__(self, path_or_id: str | os.PathLike):
        self.source = str(path_or_id)
        self.path = resolve_checkpoint(path_or_id)
        if os.path.lexists(self.path / "config.json"):
            folder_file(self.path, "config.json", "config")  # inside the folder, a regular file
        self.config = EmoConfig.from_file(self.path / "config.json")
        self.index = SafetensorsIndex(self.path)
        self.infos: dict[str, TensorInfo] = canonical_infos(self.index.infos, self.config)
        self.check_tensors()

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
                f"tensor {name} is missing from {self.path}: the checkpoint is incomplete or config.json belongs to "
                "another model"
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

    def check_tensors(self, exact: bool = False) -> None:
        """Refuse tensors that disagree with config.json: every tensor it implies must exist with the implied
        shape and a float dtype; exact: no other tensor either (a tied lm_head.weight aside)."""
        cfg, n = self.config, len(self.infos)
        if not n:
            raise CheckpointError(
                f"{self.path} holds no tensors although config.json describes a model; re-download the checkpoint"
            )
        implied = implied_tensor_count(cfg)
        if implied > n + 100_000:  # refused before listing the names: a hostile config may imply billions
            raise CheckpointError(
                f"{self.path} holds {n} tensors but config.json implies {implied}; the checkpoint is incomplete "
                "or config.json belongs to another model"
            )
        shapes = hf_tensor_shapes(cfg)
        missing = [name for name in shapes if name not in self.infos]
        if missing:
            raise CheckpointError(
                f"{self.path} lacks {len(missing)} tensors that config.json implies (first: {missing[0]}); "
                "the checkpoint is incomplete or config.json belongs to another model"
            )
        for name, shape in shapes.items():
            info = self.infos[name]
            if tuple(info.shape) != shape:
                raise CheckpointError(
                    f"{self.path}: tensor {name} has shape {list(info.shape)} but config.json implies {list(shape)}; "
                    "config.json does not match the weights: re-download the checkpoint"
                )
            if info.dtype not in FLOAT_ST:
                raise CheckpointError(
                    f"{self.path}: tensor {name} is stored as {info.dtype}, not a float type ({', '.join(FLOAT_ST)}); "
                    "emo-slice reads unquantised checkpoints only: use the original (bf16/fp16/fp32) weights"
                )
        extra = sorted(set(self.infos) - set(shapes) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set()))
        if exact and extra:
            raise CheckpointError(
                f"{self.path} holds {len(extra)} tensors config.json does not imply (first: {extra[0][:80]!r}); "
                "config.json does not match the weights: re-download the checkpoint"
            )

    def param_counts(self) -> dict[str, int]:
        """Parameters counted from the tensors themselves (after check_tensors): total, active per token, ..."""
        cfg = self.config
        numel = {n: math.prod(i.shape) for n, i in self.infos.items()}
        if cfg.tie_word_embeddings:
            numel.pop("lm_head.weight", None)  # tied: the embedding's own values
        embed = numel["model.embed_tokens.weight"] + numel.get("lm_head.weight", 0)
        experts = inactive = 0
        for l in cfg.moe_layers():
            per_expert = [
                sum(numel[expert_name(cfg, l, e, k)] for k in ("gate", "up", "down"))
                for e in range(cfg.experts_in_layer(l))
            ]
            experts += sum(per_expert)
            inactive += sum(sorted(per_expert)[: len(per_expert) - cfg.top_k_in_layer(l)])
        total = sum(numel.values())
        active = total - inactive
        return {
            "total": total,
            "active": active,
            "active_non_embedding": active - embed,
            "experts": experts,
            "embedding": embed,
        }

    def extra_files(self) -> list[Path]:
        """Regular files of the folder that are not weights, index or config (tokenizer, remote code, ...).

        A symlink is followed only inside the folder (or a Hugging Face cache's blobs); one pointing
        elsewhere is refused, so nothing outside the folder is ever read or copied."""
        weights = {p.name for p in self.index.files()} | {INDEX_NAME, "config.json"}
        real = self.path.resolve()
        out = []
        for p in sorted(self.path.iterdir()):
            if p.name not in weights:
                st = member_stat(self.path, p.name, real)
                if st is not None and stat.S_ISREG(st.st_mode):
                    out.append(p)
        return out

    def side_json(self, name: str) -> dict | list | None:
        """A JSON file of the folder (slice.json, generation_config.json, ...): None when absent; refused
        (CheckpointError) when it links outside the folder, is not a regular file, or is not JSON."""
        if member_stat(self.path, name) is None:
            return None
        path = folder_file(self.path, name, "file")
        return read_json(path, error=CheckpointError, hint="restore it from the original download", max_bytes=1 << 26)

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
