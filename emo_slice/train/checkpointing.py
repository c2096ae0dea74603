"""The run folder and its checkpoints: set-up, atomic saves, the `latest` pointer, pruning, resume.

A run folder holds train_config.json, data/ (token files), log.jsonl, and checkpoints: step-NNNNNN/
(periodic, the last `keep_last` kept) and final/. Each checkpoint is a Hugging Face EMO model folder
(loadable with emo_slice.load_model; written one parameter at a time, gathered under FSDP2) plus
training_state/ (training_state.py: a JSON manifest with step, data position, param groups and config, and
every rank's DCP shards of weights, optimizer state and RNG; no pickle), so a resumed run continues exactly,
on the same or another number of ranks. A checkpoint folder is written by all ranks under a temporary name
(.NAME.saving) and renamed into place by rank 0, then `latest` (a one-line file naming it) is replaced
atomically: a crash or Ctrl-C during a save leaves the previous checkpoint and pointer intact. `latest` is trusted only to name a checkpoint
folder directly inside the run folder (step-NNNNNN or final), never a path.

A fresh run that fails (bad data, tokenizer, divergence) before its first checkpoint leaves nothing
behind: `discard_run` removes what `prepare_run_folder` set up, so a rerun starts cleanly.

The run folder's marker (`.emo-slice`, created_by "emo-slice pretrain") records the checkpoints the run saved
(recorded before each rename into place). Pruning deletes only recorded checkpoints; `--overwrite` deletes a
run folder only when it carries that marker and holds nothing but what a run writes; resume refuses a folder
named like a checkpoint that the run did not record (a save of that name would replace it). A run folder is
checked whole before a resume reads it (io.safefiles.check_tree: no link out of it, no FIFO).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from emo_slice.artifacts import (
    MARKER,
    TEMPORARY,
    _swap_in,
    _write_marker,
    atomic_write_text,
    made_by_emo_slice,
    provenance,
    read_marker,
    remove,
    write_marker,
)
from emo_slice.errors import CheckpointError, UsageError
from emo_slice.io.build import REMOTE_CODE, remote_code_files, write_side_files
from emo_slice.io.safefiles import check_tree
from emo_slice.io.tokenizer import write_tokenizer_files
from emo_slice.io.writer import ShardWriter
from emo_slice.model.config import EmoConfig
from emo_slice.model.hf_names import stacked_to_hf
from emo_slice.train.config import TrainConfig
from emo_slice.train.dcp import read_metadata, save_sharded
from emo_slice.train.distributed import barrier
from emo_slice.train.runlog import read_log
from emo_slice.train.training_state import (
    SHARDED_DIR,
    STATE_FILE,
    gather_state,
    read_manifest,
    restore_state,
    write_manifest,
)

LATEST = "latest"
EXPORT_SHARD_BYTES = 2 * 1024**3  # the HF export's safetensors shards: what rank 0 holds at most while saving
CONFIG_FILE = "train_config.json"
CHECKPOINT_NAME = re.compile(r"step-\d{6,}|final")
INITIAL = "step-000000"  # fine-tuning's weights before the first step: kept, never pruned, never resumed from
RUN_CREATOR = "emo-slice pretrain"  # the run folder marker's created_by
RUN_FILES = {CONFIG_FILE, "log.jsonl", LATEST, "data", MARKER}  # what a run writes besides its checkpoints


def prepare_run_folder(cfg: TrainConfig, out: Path) -> str | None:
    """Check `out` against resume / overwrite, then (rank 0) for a fresh run (re)create it with the run's marker
    and train_config.json (a resumed run's configuration is written by record_resume).

    Returns what a fresh run found ('absent', 'empty' or 'replaced'; None on resume), for discard_run."""
    if cfg.resume:
        if not (out / LATEST).exists():
            raise UsageError(
                f"--resume: {out} holds no checkpoint (no 'latest' file): the run saved none; "
                "start it afresh with --overwrite"
            )
        check_resumable(out)
        for stale in out.glob(".*.saving"):  # a save that was killed before its rename
            remove(stale)
        return None  # train_config.json is written by record_resume, once the checkpoint has loaded
    if out.exists() and any(out.iterdir()):
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
        check_replaceable(out)
        shutil.rmtree(out)
        found = "replaced"
    else:
        found = "empty" if out.exists() else "absent"
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, RUN_CREATOR, checkpoints=[])
    atomic_write_text(out / CONFIG_FILE, _json(cfg.to_dict()))
    return found


# -- what the run wrote: its marker records the checkpoints --------------------------------------------------


def run_marker(out: Path) -> dict | None:
    """The run folder's marker (written when the run started; its `checkpoints` are the ones it saved), or None."""
    marker = read_marker(out)
    return marker if marker is not None and marker.get("created_by") == RUN_CREATOR else None


def recorded_checkpoints(out: Path) -> list[str]:
    """The checkpoint folders the run recorded writing (names directly inside it: step-NNNNNN or final)."""
    names = (run_marker(out) or {}).get("checkpoints")
    return [n for n in names if isinstance(n, str) and CHECKPOINT_NAME.fullmatch(n)] if isinstance(names, list) else []


def _record(out: Path, names: list[str]) -> None:
    marker = run_marker(out) or provenance(created_by=RUN_CREATOR)
    atomic_write_text(out / MARKER, json.dumps({**marker, "checkpoints": sorted(set(names))}, indent=1) + "\n")


def record_checkpoint(out: Path, name: str) -> None:
    """Add `name` to the checkpoints the run recorded (before its rename into place: none is ever unrecorded)."""
    _record(out, [*recorded_checkpoints(out), name])


def _adopted(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and made_by_emo_slice(p))


def check_replaceable(out: Path) -> None:
    """Refuse (one line) to delete `out` for `pretrain --overwrite` unless it is an emo-slice run (its marker)
    holding only what the run writes: its configuration, log, data, `latest`, the checkpoints it recorded."""
    if run_marker(out) is None:
        raise UsageError(
            f"--out {out} is not an emo-slice pretraining run (no {MARKER} marker of a run); refusing to delete it "
            "with --overwrite: choose another folder, or delete it yourself"
        )
    known = RUN_FILES | set(recorded_checkpoints(out))
    foreign = sorted(n for n in os.listdir(out) if n not in known and not TEMPORARY.fullmatch(n))
    if foreign:
        raise UsageError(
            f"--out {out} holds {foreign[0]!r}, which the run did not write; refusing to delete it with "
            "--overwrite: move it out of the run folder, or choose another folder"
        )


def check_resumable(out: Path) -> None:
    """Refuse (one line) a run folder whose latest checkpoint or log cannot be resumed, before anything is written:
    the manifest, the DCP metadata, the log (the shards themselves are checked as they load)."""
    check_tree(out, kind="run folder", hint="start afresh with --overwrite")  # links to outside, FIFOs: refused
    recorded = recorded_checkpoints(out) if run_marker(out) is not None else _adopted(out)
    stray = sorted(p.name for p in out.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and p.name not in recorded)
    if stray:
        raise CheckpointError(
            f"{out / stray[0]} is not a checkpoint this run recorded writing, and a save of the same name would "
            "replace it: move it out of the run folder, then resume"
        )
    folder = latest_checkpoint(out)
    read_manifest(folder)
    read_metadata(folder / SHARDED_DIR)
    read_log(out)


def record_resume(cfg: TrainConfig, out: Path) -> None:
    """After a resumed run's checkpoint, data and first windows were checked (rank 0): its configuration, and the
    marker of a run an older emo-slice started (its checkpoints: the folders carrying a marker)."""
    if run_marker(out) is None:
        write_marker(out, RUN_CREATOR, checkpoints=_adopted(out))
    atomic_write_text(out / CONFIG_FILE, _json(cfg.to_dict()))


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


def save_checkpoint(
    out: Path,
    name: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    rank: int,
    cfg: TrainConfig,
    mcfg: EmoConfig,
    tokenizer,
    manifest: dict,
    command: str = "pretrain",
    side: dict[str, bytes] | None = None,
) -> Path:
    """Write out/<name> atomically and point out/latest at it; every rank calls this (a collective).

    All ranks write their DCP shards into out/.<name>.saving (rank 0 made it), rank 0 adds the HF export
    (gathered one parameter at a time), the manifest and the marker, renames the folder into place, then
    replaces `latest`. A failure or kill before the rename leaves the previous checkpoint and `latest`.
    command: the emo-slice command named in the provenance; side: more files (name -> bytes) written last."""
    final, tmp = out / name, out / f".{name}.saving"
    if rank == 0:
        remove(tmp)
        (tmp / SHARDED_DIR).mkdir(parents=True)
    barrier()
    try:
        flat, optim_json = gather_state(model, optimizer, rank)
        save_sharded(tmp / SHARDED_DIR, flat)
        del flat
        prov = provenance(created_by=f"emo-slice {command}", step=manifest["step"], router=getattr(cfg, "router", None))
        export_hf(tmp, _unwrap(model), mcfg, write=rank == 0, metadata=prov)
        if rank == 0:
            _write_side(tmp, cfg, mcfg, tokenizer, {**prov, "data": manifest.get("data", {})})
            write_manifest(tmp / STATE_FILE, **manifest, **optim_json, config=cfg.to_dict())
            for fname, data in (side or {}).items():
                (tmp / fname).write_bytes(data)
            _write_marker(tmp)
        barrier()
        if rank == 0:
            record_checkpoint(out, name)  # before the rename: never an unrecorded checkpoint
            _swap_in(tmp, final, out / f".{name}.old")
            atomic_write_text(out / LATEST, name + "\n")
            prune(out, cfg.keep_last, keep_name=name)
    except BaseException:
        if rank == 0:
            remove(tmp)
        raise
    barrier()
    return final


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "no_sync") and hasattr(model, "module") else model


def export_hf(folder: Path, model: torch.nn.Module, mcfg: EmoConfig, *, write: bool, metadata: dict) -> None:
    """The weights as a Hugging Face EMO checkpoint (float32), one parameter at a time: under FSDP2 every
    rank gathers each parameter (`full_tensor`, a collective) and only the writer keeps it, until its
    safetensors shard is written (host memory: one shard of EXPORT_SHARD_BYTES plus one parameter)."""
    writer = ShardWriter(folder, EXPORT_SHARD_BYTES, metadata) if write else None
    for name, p in model.state_dict().items():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
        if writer is None:
            del full
            continue
        full = full.to("cpu", torch.float32)
        for hf_name, t in stacked_to_hf({name: full}, mcfg):
            writer.add(hf_name, t)
    if writer is not None:
        writer.finish()


def _write_side(folder: Path, cfg: TrainConfig, mcfg: EmoConfig, tokenizer, prov: dict) -> None:
    """config.json (float32, auto_map only with --remote-code), generation config, tokenizer, run files."""
    out_cfg = EmoConfig.from_dict(mcfg.to_dict())
    out_cfg.torch_dtype, out_cfg.output_router_logits = "float32", False
    out_cfg.extra.pop("auto_map", None)
    code = remote_code_files(cfg.remote_code) if cfg.remote_code is not None else []
    if code:
        out_cfg.extra["auto_map"] = dict(REMOTE_CODE)
    write_side_files(folder, out_cfg)
    if tokenizer is not None:
        write_tokenizer_files(folder, tokenizer, out_cfg)
    for src in code:
        shutil.copy2(src, folder / src.name)
    (folder / CONFIG_FILE).write_text(_json(cfg.to_dict()))
    (folder / "provenance.json").write_text(_json(prov))


def prune(out: Path, keep_last: int, keep_name: str) -> None:
    """Remove periodic checkpoints beyond the newest `keep_last` (never `keep_name`; final is not periodic); only
    checkpoints the run recorded writing are candidates (a user's `step-000000-mybackup` is never one)."""
    recorded = recorded_checkpoints(out)
    steps = sorted(n for n in recorded if n.startswith("step-") and n != INITIAL and (out / n).is_dir())
    gone = [n for n in steps[: max(0, len(steps) - keep_last)] if n != keep_name]
    for name in gone:
        remove(out / name)
    if gone:
        _record(out, [n for n in recorded if n not in gone])


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int = 0) -> dict:
    """Load weights, optimizer state and RNG from a checkpoint folder into (possibly wrapped or sharded)
    `model` and `optimizer`, whatever number of ranks saved it; returns its manifest (step, data_position ...).
    Nothing is unpickled (training_state.py, dcp.py)."""
    return restore_state(folder, model, optimizer, rank)


def _json(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"
