"""`emo-slice pretrain`: the configuration a run resolves to, checked before anything is written, the run
itself, and the summary of what it did (what the command runs around Trainer).

- `run(PretrainSpec(out, preset=..., options=..., settings=...))`: resolve, check the paths and the
  configuration, train; returns the summary on rank 0 (`configure(spec)` stops after the checks).

- `resolve_config(out, preset=..., options=..., settings=...)`: the preset's configuration, or with
  resume the run's own train_config.json; then the explicit options; then the `--set key=value` list.
- `check_config(cfg)`: every check the Trainer makes before touching the disk (fields, architecture,
  pools, micro-batch split), so `--show-config` never prints a configuration that would not run.
- `pretrain(cfg, announce)`: the run itself (Trainer), its banner announced on rank 0, its summary returned.
- `run_summary(out, checkpoint)`: last step, loss and evaluation, from the run's log.jsonl.
- `interrupted_message(out)`: what Ctrl-C leaves: the last checkpoint and --resume, or nothing saved yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from emo_slice.errors import DataError, UsageError
from emo_slice.io.safefiles import folder_file
from emo_slice.safejson import read_json
from emo_slice.specs import OUTPUT, OVERWRITE, Spec, param
from emo_slice.train.runlog import read_log
from emo_slice.workflows.paths import check_spec_paths

CONFIG_FILE = "train_config.json"
LOG_FILE = "log.jsonl"
OPTION_FIELDS = (  # the fields `emo-slice pretrain` sets with flags of their own (the rest: --set key=value)
    "data",
    "router",
    "steps",
    "batch_size",
    "micro_batch_size",
    "seq_len",
    "lr",
    "tokenizer",
    "vocab_size",
    "field",
    "split",
    "valid_data",
    "dtype",
    "save_every",
    "eval_every",
    "seed",
    "stop_after",
    "remote_code",
    "init_from",
)


NOT_PATHS = ("auto", "bytes", "train")  # --tokenizer values that name no file


@dataclass(frozen=True)
class PretrainSpec(Spec):
    """A pretraining run: its folder, the preset (or the resumed run's configuration), the options given and the
    `--set key=value` overrides (TrainConfig's field docs say what each option does)."""

    out: str = param(doc="Run folder: checkpoints (HF EMO layout), token files, log.jsonl.", role=OUTPUT)
    preset: str | None = param(
        None,
        "Architecture (and training) preset: tiny (tests), small (CPU demo of minutes) or emo-1b14b (the release "
        "configuration, GPU clusters); default small.",
    )
    resume: bool = param(False, "Continue the run in --out from its latest checkpoint.")
    overwrite: bool = param(False, OVERWRITE)
    fsdp: bool = param(False, "Under torchrun: shard with FSDP2 fully_shard instead of DDP.")
    options: dict = param({}, "TrainConfig fields given by their own flags (None: not given).")
    settings: tuple[str, ...] = param(
        (),
        "key=value for any training field or model (EmoConfig) key, e.g. --set lb_weight=0.05 --set "
        "num_hidden_layers=8. Repeatable.",
        flag="--set",
    )

    def inputs(self) -> list[tuple[str, str]]:
        o = {k: v for k, v in self.options.items() if v is not None}
        pairs = [(f"--{k.replace('_', '-')}", o.get(k)) for k in ("data", "valid_data", "init_from", "remote_code")]
        if o.get("tokenizer") not in (None, *NOT_PATHS):
            pairs.append(("--tokenizer", o["tokenizer"]))
        return [(f, str(v)) for f, v in pairs if v]


def configure(spec: PretrainSpec):
    """The TrainConfig the run uses, every check made (the paths, the fields, the architecture) before anything
    is written."""
    check_spec_paths(spec)
    cfg = resolve_config(
        spec.out,
        preset=spec.preset,
        resume=spec.resume,
        overwrite=spec.overwrite,
        fsdp=spec.fsdp,
        options=spec.options,
        settings=list(spec.settings),
    )
    check_config(cfg)
    return cfg


def run(spec: PretrainSpec, announce: Callable[[str], None] | None = None) -> dict | None:
    """Configure and run; the summary on rank 0 (None on the others). See `pretrain`."""
    return pretrain(configure(spec), announce)


def resolve_config(
    out: str | os.PathLike,
    *,
    preset: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    fsdp: bool = False,
    options: dict | None = None,
    settings: list[str] | None = None,
):
    """The configuration a run in `out` uses. options: explicit fields (None = not given), applied on the
    preset (default small; or, with resume, on the run's saved configuration); settings: `key=value` overrides,
    applied last. On resume, stop_after is only what this call gives (the saved run's stop is not inherited).
    With options['init_from'] the architecture is the checkpoint's, so a preset given too is refused."""
    from emo_slice.train.config import apply_overrides, train_preset  # torch-free --help

    saved = Path(out) / CONFIG_FILE
    given = {k: v for k, v in (options or {}).items() if v is not None}
    if given.get("init_from") is not None and preset is not None:
        raise UsageError(
            f"`init_from={given['init_from']}` takes the architecture from that checkpoint; drop `preset={preset}` "
            "(set training settings with their flags or --set)"
        )
    if resume:
        cfg = _saved_config(saved)
    else:
        cfg = train_preset(preset or "small")
    apply_overrides(cfg, given)
    apply_overrides(cfg, list(settings or []))
    cfg.out, cfg.resume, cfg.overwrite = str(out), resume, overwrite
    cfg.fsdp = cfg.fsdp or fsdp
    if resume:
        cfg.stop_after = given.get("stop_after")
    return cfg


def _saved_config(saved: Path):
    """The configuration a run folder was started with, every field checked (one line if it is damaged)."""
    from emo_slice.train.config import TrainConfig, check_fields  # torch-free --help

    if not saved.is_file():
        raise UsageError(
            f"`resume`: {saved.parent} holds no {CONFIG_FILE}, so no run to continue; start without `resume`"
        )
    fix = "repair it, or start afresh with --overwrite"
    path = folder_file(saved.parent, CONFIG_FILE, "run configuration", kind="run folder", error=DataError, hint=fix)
    d = read_json(path, hint=fix, expect=dict, max_bytes=1 << 24)
    try:
        cfg = TrainConfig(**d)
        check_fields(cfg)
    except (TypeError, UsageError) as e:
        why = str(e).replace("TrainConfig.__init__() ", "")[:160]
        raise DataError(
            f"{saved} is not a train_config.json emo-slice wrote ({why}); repair it, or start afresh with --overwrite"
        ) from None
    return cfg


def check_config(cfg, world_size: int | None = None) -> None:
    """Refuse (UsageError) a configuration the Trainer would refuse, without touching the disk (the Trainer's own
    check, `train.config.check_run`, on WORLD_SIZE ranks unless told)."""
    from emo_slice.train.config import check_run  # torch-free --help

    check_run(cfg, world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1")))


def pretrain(cfg, announce: Callable[[str], None] | None = None) -> dict | None:
    """Run a configuration (`resolve_config`, checked by `check_config`): its `run_summary` on rank 0, None on
    the other ranks. announce: called on rank 0, before the first step, with one line (rich markup) saying
    what runs. Ctrl-C propagates; `interrupted_message` says what the run folder then holds."""
    if not cfg.data:
        raise UsageError("`data` is required: a .txt, JSONL or dataset with the training text")
    from emo_slice.train.trainer import Trainer  # torch-free --help

    trainer = Trainer(cfg)
    if trainer.rank == 0 and announce is not None:
        latest = Path(cfg.out) / "latest"
        announce(banner(trainer, latest.read_text().strip() if cfg.resume and latest.exists() else None))
    path = trainer.run()
    return run_summary(cfg.out, path, trainer.world) if trainer.rank == 0 else None


def banner(trainer, resume_from: str | None) -> str:
    """What a run trains (architecture, data, pool, ranks, micro-batches), in one line with rich markup."""
    cfg, m, meta = trainer.cfg, trainer.mcfg, trainer.meta
    return (
        f"[bold]pretrain[/] {cfg.router} router, "
        + (f"from {cfg.init_from}" if cfg.init_from else f"preset {cfg.preset}")
        + f": {m.num_hidden_layers} layers, "
        f"{m.num_experts} experts (top {m.num_experts_per_tok}), d_model {m.hidden_size}, vocab {m.vocab_size}; "
        f"tokenizer {meta['tokenizer']}; {meta['train_tokens']:,} training tokens; pool {trainer.pool or 'none'}; "
        f"{trainer.world} rank(s) on {trainer.device}, micro-batch {trainer.mb} x {trainer.accum} accumulation"
        + (f"; resuming from {resume_from}" if resume_from else "")
        + _mfu_note(trainer)
    )


def _mfu_note(trainer) -> str:
    """What MFU in the progress bar and log.jsonl is measured against (nothing on a CPU without a peak)."""
    fpt = f"{trainer.flops_per_token / 1e9:.3g} GFLOP/token"
    if trainer.peak_tflops:
        return f"; MFU: {fpt} against {trainer.peak_tflops:g} TFLOP/s per device"
    if trainer.device.type == "cuda":
        return f"; MFU: {fpt}, this GPU's peak is unknown (give it with --set peak_tflops=N)"
    return ""


def run_summary(out: str | os.PathLike, checkpoint: str | os.PathLike, world_size: int = 1) -> dict:
    """checkpoint, steps, final training loss, last evaluation record, log path, world size."""
    log_path = Path(out) / LOG_FILE
    log = [rec for _, rec in read_log(Path(out))]
    train = [r for r in log if r.get("kind") == "train"]
    evals = [r for r in log if r.get("kind") == "eval"]
    return {
        "checkpoint": str(checkpoint),
        "steps": train[-1]["step"] if train else 0,
        "final_loss": train[-1]["loss"] if train else None,
        "eval": evals[-1] if evals else None,
        "log": str(log_path),
        "world_size": world_size,
    }


def interrupted_message(out: str | os.PathLike) -> str:
    """What a Ctrl-C during pretraining leaves in `out`, as one line: the checkpoint to continue from."""
    out = Path(out)
    try:
        name = (out / "latest").read_text().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if name and (out / name).is_dir():
        return f"interrupted; the last checkpoint is {out / name}; continue with --resume"
    if (out / CONFIG_FILE).is_file():
        return (
            f"interrupted before the first checkpoint; {out} holds only the run's set-up; start again with --overwrite"
        )
    return "interrupted; nothing was written"


def summary_line(summary: dict) -> str:
    """One line for people: step, training loss, validation losses, checkpoint."""
    ev = summary["eval"] or {}
    val = ", ".join(f"{k[9:]} {v:.4f}" for k, v in ev.items() if k.startswith("val_loss_"))
    loss = f", train loss {summary['final_loss']:.4f}" if summary["final_loss"] is not None else ""
    return (
        f"done: step {summary['steps']}{loss}"
        + (f", validation loss {val}" if val else "")
        + f"; checkpoint {summary['checkpoint']}"
    )
