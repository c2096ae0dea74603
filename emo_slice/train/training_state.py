"""The training state of a checkpoint, without pickle: a JSON manifest plus sharded tensors (DCP).

`training_state/` (a subfolder, so tools that glob a model folder's `*.safetensors` never take it for
weights) holds

- `state.safetensors`: no tensors, only the metadata entry `emo_slice_training_state`: JSON with the format
  tag, step, samples seen, the data position (training.data_position), the world size it was saved on,
  the run's TrainConfig, the optimizer's param groups (hyper-parameters and parameter names) and any
  optimizer state entry that is not a tensor. Rank 0 writes it.
- `sharded/`: every rank's shards of the weights, the optimizer tensors and its RNG states (dcp.py; JSON
  metadata, tensors read with torch's weights-only loader).

A `training_state.pt` (the pickle old versions wrote) is never opened. Version 1 states (the optimizer
state gathered into state.safetensors) are refused with a pointer to --init-from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from emo_slice.errors import CheckpointError
from emo_slice.safejson import parse_json
from emo_slice.train.dcp import load_sharded, read_metadata

STATE_FILE = "training_state/state.safetensors"
SHARDED_DIR = "training_state/sharded"
LEGACY_STATE_FILE = "training_state.pt"
STATE_FORMAT = "emo-slice-training-state"
STATE_VERSION = 2
META_KEY = "emo_slice_training_state"


def write_manifest(path: Path, **meta) -> None:
    """Write the manifest (JSON in a safetensors header, no tensors) to `path`."""
    from safetensors.torch import save_file

    doc = {"format": STATE_FORMAT, "format_version": STATE_VERSION, **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({}, str(path), metadata={META_KEY: json.dumps(doc)})


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


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_meta(path: Path, meta: dict | None) -> dict:
    try:
        m = parse_json((meta or {})[META_KEY])
    except (KeyError, ValueError, TypeError):
        raise _bad(path, "has no emo-slice training-state metadata") from None
    if not isinstance(m, dict) or m.get("format") != STATE_FORMAT:
        raise _bad(path, "is not an emo-slice training state")
    version = m.get("format_version")
    if not isinstance(version, int) or version > STATE_VERSION:
        raise _bad(path, f"has format version {version!r}, newer than this emo-slice reads")
    if version < STATE_VERSION:
        raise CheckpointError(
            f"{path} is a version {version} training state (an older emo-slice: optimizer state not sharded), "
            f"which this emo-slice does not resume; continue from its weights with --init-from {path.parent.parent} "
            "(fresh optimizer and schedule)"
        )
    if not _is_count(m.get("step")):
        raise _bad(path, f"records step {m.get('step')!r}, not a step count")
    if not _is_count(m.get("world_size")) or m["world_size"] < 1:
        raise _bad(path, f"records world size {m.get('world_size')!r}")
    groups = m.get("param_groups")
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) and all(isinstance(n, str) for n in g["params"])
        for g in groups
    ):
        raise _bad(path, "has malformed optimizer parameter groups")
    known = {n for g in groups for n in g["params"]}
    scalars = m.get("scalars", {})
    if not isinstance(scalars, dict) or not all(k in known and isinstance(v, dict) for k, v in scalars.items()):
        raise _bad(path, "has a malformed optimizer state")
    if not isinstance(m.get("data_position", {}), dict):
        raise _bad(path, "has a malformed data position")
    return m


def read_manifest(folder: Path) -> dict:
    """The checked manifest of a checkpoint folder (step, world_size, config, param_groups, data_position ...)."""
    from safetensors import safe_open

    path = _state_path(folder)
    try:
        with safe_open(str(path), "pt") as f:
            meta = _check_meta(path, f.metadata())
    except CheckpointError:
        raise
    except Exception as e:  # the library's SafetensorError, OSError: truncated, foreign or unreadable
        raise _bad(path, f"is truncated or not a safetensors file ({str(e).splitlines()[0][:120]})") from None
    sharded = folder / SHARDED_DIR
    if sharded.is_symlink() or not sharded.is_dir():
        raise _bad(folder, f"has no {SHARDED_DIR} folder (the weights and optimizer shards)")
    return meta


# -- the flat state DCP saves ------------------------------------------------------------------------------


def gather_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> tuple[dict, dict]:
    """(flat {name: tensor} for DCP, JSON part {param_groups, scalars}) of this rank (a collective under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    flat = {f"model/{k}": v for k, v in model_sd.items()}
    scalars: dict = {}
    for param, entries in optim_sd["state"].items():
        for key, v in entries.items():
            if isinstance(v, torch.Tensor):
                flat[f"optim/{param}/{key}"] = v
            else:
                scalars.setdefault(param, {})[key] = v
    flat[f"rng/cpu/{rank}"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        flat[f"rng/cuda/{rank}"] = torch.cuda.get_rng_state()
    return flat, {"param_groups": optim_sd["param_groups"], "scalars": scalars}


def restore_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> dict:
    """Load weights, optimizer state and this rank's RNG from checkpoint `folder` into (wrapped or sharded)
    `model` and `optimizer`, whatever world size it was saved on; returns the manifest."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict

    meta = read_manifest(folder)
    saved = read_metadata(folder / SHARDED_DIR).state_dict_metadata
    flat, mine = gather_state(model, optimizer, rank)  # the template: this run's shapes, shards and groups
    check_param_groups(_state_path(folder), meta["param_groups"], mine["param_groups"])
    src = rank % meta["world_size"]
    rng = {f"rng/cpu/{rank}": f"rng/cpu/{src}", f"rng/cuda/{rank}": f"rng/cuda/{src}"}
    want = {rng.get(k, k): v for k, v in flat.items() if rng.get(k, k) in saved or not k.startswith("rng/")}
    missing = [k for k in want if k not in saved]
    if missing:
        raise _bad(folder, f"does not fit this run's model and optimizer (no {missing[0][:80]!r} in its shards)")
    try:
        load_sharded(folder / SHARDED_DIR, want)
        model_sd = {k[6:]: v for k, v in want.items() if k.startswith("model/")}
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=_optim_state(want, meta))
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # DCP's (a BaseException), shape mismatches, KeyError: one line
        raise _bad(folder, f"does not fit this run's model and optimizer ({_why(e)})") from None
    try:
        torch.set_rng_state(want[f"rng/cpu/{src}"])
        if f"rng/cuda/{src}" in want:
            torch.cuda.set_rng_state(want[f"rng/cuda/{src}"])
    except (RuntimeError, TypeError, ValueError) as e:  # torch checks the generator state it is given
        raise _bad(folder, f"holds a random generator state torch refuses ({_why(e)})") from None
    return meta


_NON_NEGATIVE = ("lr", "eps", "weight_decay", "initial_lr")
_REQUIRED = ("lr", "betas", "eps", "weight_decay")


def check_param_groups(path: Path, saved: list, mine: list) -> None:
    """Refuse (one line) optimizer parameter groups that do not fit this run's optimizer: the same groups of the
    same parameters, every hyperparameter this optimizer has of the same kind (a finite number, non-negative for
    lr / eps / weight_decay; betas two numbers in [0, 1); a flag), lr, betas, eps and weight_decay present."""
    if len(saved) != len(mine):
        raise _bad(path, f"has {len(saved)} optimizer parameter groups; this run's optimizer has {len(mine)}")
    for i, (theirs, ours) in enumerate(zip(saved, mine)):
        if set(theirs["params"]) != set(ours["params"]):
            raise _bad(path, f"optimizer group {i} lists other parameters than this run's model has")
        for key in sorted(set(ours) - {"params"}):
            if key not in theirs:
                if key in _REQUIRED:
                    raise _bad(path, f"optimizer group {i} has no {key!r}")
                continue
            why = _bad_hyper(key, theirs[key], ours[key])
            if why:
                raise _bad(path, f"optimizer group {i} has {key} {theirs[key]!r}: {why}")


def _bad_hyper(key: str, value, like) -> str | None:
    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if isinstance(like, bool) or like is None:
        return None if value is None or isinstance(value, bool) else "not a flag"
    if isinstance(like, (list, tuple)):
        ok = isinstance(value, list) and len(value) == len(like) and all(number(x) for x in value)
        if not ok:
            return f"not {len(like)} finite numbers"
        return "not in [0, 1)" if key == "betas" and not all(0 <= x < 1 for x in value) else None
    if isinstance(like, (int, float)):
        if not number(value):
            return "not a finite number"
        return "negative" if key in _NON_NEGATIVE and value < 0 else None
    return None if type(value) is type(like) else f"not a {type(like).__name__}"


def _optim_state(flat: dict, meta: dict) -> dict:
    """The optimizer state dict (FQN keys) from the loaded `optim/<fqn>/<key>` tensors and the manifest."""
    state: dict = {}
    for k, v in flat.items():
        if k.startswith("optim/"):
            param, key = k[6:].rsplit("/", 1)
            state.setdefault(param, {})[key] = v
    for param, entries in meta.get("scalars", {}).items():
        state.setdefault(param, {}).update(entries)
    groups = [
        {**g, "betas": tuple(g["betas"])} if isinstance(g.get("betas"), list) else g for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def _why(e: BaseException) -> str:
    """One line for an error while loading shards (DCP wraps each rank's exception in CheckpointException)."""
    import pickle

    inner = [f[0] if isinstance(f, tuple) else f for f in getattr(e, "failures", {}).values()]
    e = next((x for x in inner if isinstance(x, BaseException)), e)
    if isinstance(e, pickle.UnpicklingError):
        return "a shard holds something other than tensors, which torch's weights-only loader refused"
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__
