"""The run folder and its checkpoints: set-up, atomic saves, the `latest` pointer, pruning, resume.

A run folder holds train_config.json, data/ (token files), log.jsonl, and checkpoints: step-NNNNNN/
(periodic, the last `keep_last` kept) and final/. Each checkpoint is a Hugging Face EMO model folder
(loadable with emo_slice.load_model) plus training_state/state.safetensors (training_state.py: optimizer
tensors and RNG states, with step, param groups and config as JSON in its metadata; no pickle), so a
resumed run continues exactly. A checkpoint folder is written under a temporary name and renamed into
place, then `latest` (a one-line file naming it) is replaced atomically: a crash or Ctrl-C during a
save leaves the previous checkpoint and pointer intact. `latest` is trusted only to name a checkpoint
folder directly inside the run folder (step-NNNNNN or final), never a path.

A fresh run that fails (bad data, tokenizer, divergence) before its first checkpoint leaves nothing
behind: `discard_run` removes what `prepare_run_folder` set up, so a rerun starts cleanly.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from emo_slice.artifacts import atomic_output_dir, atomic_write_text, provenance
from emo_slice.errors import CheckpointError, UsageError
from emo_slice.model.config import EmoConfig
from emo_slice.model.modeling import EmoForCausalLM
from emo_slice.train.config import TrainConfig
from emo_slice.train.distributed import barrier
from emo_slice.train.training_state import STATE_FILE, read_training_state, write_training_state

LATEST = "latest"
CONFIG_FILE = "train_config.json"
CHECKPOINT_NAME = re.compile(r"step-\d{6,}|final")


def prepare_run_folder(cfg: TrainConfig, out: Path) -> str | None:
    """Check `out` against resume / overwrite, then (re)create it and write train_config.json (rank 0).

    Returns what a fresh run found ('absent', 'empty' or 'replaced'; None on resume), for discard_run."""
    if cfg.resume:
        if not (out / LATEST).exists():
            raise UsageError(
                f"--resume: {out} holds no checkpoint (no 'latest' file): the run saved none; "
                "start it afresh with --overwrite"
            )
        read_training_state(latest_checkpoint(out), tensors=False)  # refuse a bad checkpoint before any work
        found = None
    elif out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            if (out / CONFIG_FILE).exists() and not (out / LATEST).exists():
                raise UsageError(
                    f"--out {out} holds a run that saved no checkpoint, so nothing to resume; "
                    "pass --overwrite to start afresh, or choose another folder"
                )
            raise UsageError(
                f"--out {out} already holds files; pass --resume to continue that run, "
                "--overwrite to start afresh, or choose another folder"
            )
        if not (out / CONFIG_FILE).exists():
            raise UsageError(
                f"--out {out} is not a pretraining run folder; refusing to delete it with "
                "--overwrite; choose another folder"
            )
        shutil.rmtree(out)
        found = "replaced"
    else:
        found = "empty" if out.exists() else "absent"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, _json(cfg.to_dict()))
    return found


def discard_run(out: Path, found: str | None) -> None:
    """After a fresh run failed before its first checkpoint: remove what it wrote (the folder, or its contents
    when it was an empty folder already). A resumed run, or one with a checkpoint, is left alone."""
    if found is None or (out / LATEST).exists() or not out.is_dir():
        return
    if found != "empty":
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def latest_checkpoint(out: Path) -> Path:
    """The checkpoint folder `out/latest` names: a folder directly inside `out` called step-NNNNNN or final."""
    pointer = out / LATEST
    if not pointer.is_file() or pointer.resolve().parent != out.resolve():
        raise CheckpointError(
            f"{pointer} is missing or not a file inside {out}; it should name the checkpoint "
            "to resume from (e.g. step-000100); start afresh with --overwrite"
        )
    with open(pointer, "rb") as f:
        raw = f.read(256)
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        name = None
    if not name:
        raise CheckpointError(
            f"{pointer} is {'empty' if name == '' else 'not text'}; write the name of the "
            "checkpoint folder to resume from into it (e.g. step-000100), or start afresh"
        )
    folder = out / name
    if not CHECKPOINT_NAME.fullmatch(name) or not folder.is_dir() or folder.resolve().parent != out.resolve():
        raise CheckpointError(
            f"{pointer} names {name[:60]!r}, which is not a checkpoint folder of this run "
            "(step-NNNNNN or final, inside it); write the name of one into it, or start afresh"
        )
    return folder


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts on the CPU (a collective under FSDP2: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def save_checkpoint(
    out: Path,
    name: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    cfg: TrainConfig,
    mcfg: EmoConfig,
    rank: int,
    world: int,
    tokenizer,
    data_meta: dict,
) -> Path:
    """Write out/<name> atomically and point out/latest at it; every rank calls this, rank 0 writes."""
    model_sd, optim_sd = full_state_dicts(model, optimizer)
    final = out / name
    if rank == 0:
        _write_checkpoint(
            final,
            model_sd,
            optim_sd,
            step=step,
            cfg=cfg,
            mcfg=mcfg,
            world=world,
            tokenizer=tokenizer,
            data_meta=data_meta,
        )
        atomic_write_text(out / LATEST, name + "\n")
        prune(out, cfg.keep_last, keep_name=name)
    barrier()
    return final


def _write_checkpoint(
    final: Path,
    model_sd: dict,
    optim_sd: dict,
    *,
    step: int,
    cfg: TrainConfig,
    mcfg: EmoConfig,
    world: int,
    tokenizer,
    data_meta: dict,
) -> None:
    """The HF EMO folder (float32 weights, tokenizer, config, provenance) plus the training state."""
    from emo_slice.io.build import save_model

    with torch.device("meta"):
        export = EmoForCausalLM(mcfg)
    export = export.to_empty(device="cpu")
    export.load_state_dict({k: v.float() for k, v in model_sd.items()})
    prov = provenance(created_by="emo-slice pretrain", step=step, router=cfg.router)
    with atomic_output_dir(final, overwrite=True) as tmp:
        extra = {CONFIG_FILE: _json(cfg.to_dict()), "provenance.json": _json({**prov, "data": data_meta})}
        save_model(
            export,
            tmp,
            dtype=torch.float32,
            overwrite=True,
            tokenizer=tokenizer,
            metadata=prov,
            extra_files=extra,
            remote_code=cfg.remote_code,
        )
        write_training_state(
            tmp / STATE_FILE,
            optim_sd,
            step=step,
            samples_seen=step * cfg.batch_size,
            config=cfg.to_dict(),
            world_size=world,
        )


def prune(out: Path, keep_last: int, keep_name: str) -> None:
    """Remove periodic checkpoints beyond the newest `keep_last` (never `keep_name`; final is not periodic)."""
    steps = sorted(p for p in out.glob("step-*") if p.is_dir())
    for p in steps[: max(0, len(steps) - keep_last)]:
        if p.name != keep_name:
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load weights, optimizer state and RNG states from a checkpoint folder into (possibly wrapped or
    sharded) `model` and `optimizer`; returns the step it was saved at. Nothing is unpickled."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    from emo_slice.io.loading import load_model

    state = read_training_state(folder)
    full = load_model(folder, dtype=torch.float32).state_dict()
    opts = StateDictOptions(full_state_dict=True)
    try:
        set_model_state_dict(model, full, options=opts)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=opts)
        torch.set_rng_state(state["rng"])
    except (RuntimeError, KeyError, ValueError, IndexError) as e:
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{folder} does not fit this run's model and optimizer ({msg}); "
            "resume with the settings it was saved with, or start afresh"
        ) from None
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


def _json(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"
