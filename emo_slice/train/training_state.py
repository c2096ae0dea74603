"""The training state of a checkpoint without pickle: one safetensors file, tensors plus JSON metadata.

`training_state/state.safetensors` (a subfolder, so tools that glob a model folder's `*.safetensors` never
take it for weights) holds

- tensors: `optimizer/<parameter name>/<key>` (AdamW's step, exp_avg, exp_avg_sq of every parameter),
  `rng` (the CPU generator state) and `cuda_rng/<device>`;
- metadata `emo_slice_training_state`: JSON with the format tag, step, samples seen, world size, the run's
  TrainConfig, the optimizer's param groups (hyper-parameters and parameter names) and any optimizer
  state entry that is not a tensor.

Nothing in it is code: reading it parses a JSON header and copies bytes (the `safetensors` library), so
a run folder from elsewhere can be resumed without running anything. A `training_state.pt` (the pickle
older versions wrote) is never opened.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from emo_slice.errors import CheckpointError

STATE_FILE = "training_state/state.safetensors"
LEGACY_STATE_FILE = "training_state.pt"
STATE_FORMAT = "emo-slice-training-state"
STATE_VERSION = 1
META_KEY = "emo_slice_training_state"


def write_training_state(
    path: Path, optim_sd: dict, *, step: int, samples_seen: int, config: dict, world_size: int
) -> None:
    """Write the optimizer state dict (full, FQN keys) and the RNG states to `path` (a safetensors file)."""
    from safetensors.torch import save_file

    tensors = {"rng": torch.get_rng_state()}
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    tensors.update({f"cuda_rng/{i}": t for i, t in enumerate(cuda)})
    scalars: dict = {}
    for param, entries in optim_sd["state"].items():
        for key, v in entries.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer/{param}/{key}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(param, {})[key] = v
    meta = {
        "format": STATE_FORMAT,
        "format_version": STATE_VERSION,
        "step": step,
        "samples_seen": samples_seen,
        "world_size": world_size,
        "cuda_devices": len(cuda),
        "config": config,
        "param_groups": optim_sd["param_groups"],
        "scalars": scalars,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta)})


def _bad(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} {why}; resume from another checkpoint (write its name into 'latest') or start afresh with --overwrite"
    )


def _state_path(folder: Path) -> Path:
    path = folder / STATE_FILE
    if not path.is_file():
        if (folder / LEGACY_STATE_FILE).exists():
            raise CheckpointError(
                f"{folder} holds {LEGACY_STATE_FILE}, a pickle (written by an older emo-slice, or by someone else), "
                "which emo-slice never loads because unpickling can run code; start afresh with --overwrite"
            )
        raise _bad(folder, f"has no {STATE_FILE}: it is not a pretraining checkpoint emo-slice wrote")
    if not path.resolve().is_relative_to(folder.resolve()):
        raise _bad(path, "is a link to a file outside the checkpoint")
    return path


def _check_meta(path: Path, meta: dict | None) -> dict:
    try:
        m = json.loads((meta or {})[META_KEY])
    except (KeyError, json.JSONDecodeError, TypeError):
        raise _bad(path, "has no emo-slice training-state metadata") from None
    if not isinstance(m, dict) or m.get("format") != STATE_FORMAT:
        raise _bad(path, "is not an emo-slice training state")
    if not isinstance(m.get("format_version"), int) or m["format_version"] > STATE_VERSION:
        raise _bad(path, f"has format version {m.get('format_version')!r}, newer than this emo-slice reads")
    step = m.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise _bad(path, f"records step {step!r}, not a step count")
    groups = m.get("param_groups")
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) and all(isinstance(n, str) for n in g["params"])
        for g in groups
    ):
        raise _bad(path, "has malformed optimizer parameter groups")
    if not isinstance(m.get("scalars", {}), dict) or not isinstance(m.get("cuda_devices", 0), int):
        raise _bad(path, "has a malformed optimizer state")
    return m


def read_training_state(folder: Path, tensors: bool = True) -> dict:
    """The training state of a checkpoint folder: {step, samples_seen, world_size, config, optimizer (a full
    state dict with FQN keys), rng, cuda_rng}; tensors=False checks the header only (no tensor is read)."""
    from safetensors import safe_open

    path = _state_path(folder)
    try:
        with safe_open(str(path), "pt") as f:
            meta = _check_meta(path, f.metadata())
            names = list(f.keys())
            data = {k: f.get_tensor(k) for k in names} if tensors else {}
    except CheckpointError:
        raise
    except Exception as e:  # the library's SafetensorError, OSError: truncated, foreign or unreadable
        raise _bad(path, f"is truncated or not a safetensors file ({str(e).splitlines()[0][:120]})") from None
    known = {n for g in meta["param_groups"] for n in g["params"]}
    state: dict = {}
    for name in names:
        if name.startswith("optimizer/"):
            _, param, key = name.split("/", 2) if name.count("/") >= 2 else (None, None, None)
            if param not in known:
                raise _bad(path, f"holds {name[:80]!r}, which no optimizer parameter group names")
            if tensors:
                state.setdefault(param, {})[key] = data[name]
        elif name != "rng" and not name.startswith("cuda_rng/"):
            raise _bad(path, f"holds an unexpected tensor {name[:80]!r}")
    if "rng" not in names:
        raise _bad(path, "has no RNG state")
    if not tensors:
        return meta
    if data["rng"].dtype != torch.uint8 or data["rng"].dim() != 1:
        raise _bad(path, "has an RNG state that is not a byte vector")
    for param, entries in meta.get("scalars", {}).items():
        if param not in known or not isinstance(entries, dict):
            raise _bad(path, "has a malformed optimizer state")
        state.setdefault(param, {}).update(entries)
    groups = [
        {**g, "betas": tuple(g["betas"])} if isinstance(g.get("betas"), list) else g for g in meta["param_groups"]
    ]
    cuda = [data[f"cuda_rng/{i}"] for i in range(meta.get("cuda_devices", 0)) if f"cuda_rng/{i}" in data]
    return {**meta, "optimizer": {"state": state, "param_groups": groups}, "rng": data["rng"], "cuda_rng": cuda or None}
