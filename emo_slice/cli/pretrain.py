"""`emo-slice pretrain`: train an EMO (or standard) MoE from text, on one process or under torchrun."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from emo_slice.cli import app, cli_errors, err_console, print_json

EPILOG = """Examples:

  emo-slice demo-data ./demo && emo-slice pretrain --data demo/train.jsonl --out runs/emo --preset small

  emo-slice pretrain --data corpus.jsonl --out runs/std --preset small --router standard

  emo-slice pretrain --data corpus.jsonl --out runs/emo --resume

  torchrun --nproc-per-node 8 -m emo_slice pretrain --data corpus.jsonl --out runs/emo --preset emo-1b14b --fsdp

  emo-slice pretrain --data c.jsonl --out r --preset tiny --set lr=1e-3 --set hidden_size=128 --set pool_min=4
"""


@app.command("pretrain", epilog=EPILOG)
@cli_errors
def pretrain_cmd(
    data: Optional[str] = typer.Option(None, "--data", help="Training text: .txt, JSONL (field --field) or a Hugging "
                                       "Face dataset (saved folder, data file, or cached name)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints (HF EMO layout), token files, log.jsonl."),
    preset: str = typer.Option("small", "--preset", help="tiny (tests), small (CPU demo of minutes) or emo-1b14b "
                               "(the release configuration, GPU clusters)."),
    router: Optional[str] = typer.Option(None, "--router", help="emo (document pool, intra-document attention) or "
                                         "standard (the standard-MoE baseline, same everything else)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps of the schedule."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Windows per optimizer step (global)."),
    micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size", help="Windows per forward on one "
                                                   "rank; the rest is gradient accumulation."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per window."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="auto, bytes, train, or a model folder / "
                                            "tokenizer.json to reuse."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Vocabulary of a tokenizer trained on the data."),
    field: Optional[str] = typer.Option(None, "--field", help="Record field holding the text (JSONL/datasets)."),
    split: Optional[str] = typer.Option(None, "--split", help="Dataset split (default train)."),
    valid_data: Optional[str] = typer.Option(None, "--valid-data", help="Held-out text for evaluation (default: 2% "
                                             "of the training documents)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, or bfloat16 (autocast, fp32 master weights)."),
    fsdp: bool = typer.Option(False, "--fsdp", help="Under torchrun: shard with FSDP2 fully_shard instead of DDP."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Evaluate every N steps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seeds weights, data order and pool draws."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Stop with a checkpoint after this step "
                                             "(the schedule is unchanged); continue with --resume."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in a non-empty run folder."),
    settings: List[str] = typer.Option([], "--set", help="key=value for any training field or model (EmoConfig) key, "
                                       "e.g. --set lb_weight=0.05 --set num_hidden_layers=8. Repeatable."),
    show_config: bool = typer.Option(False, "--show-config", help="Print the resolved configuration and exit."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary at the end."),
):
    """Pretrain an EMO mixture-of-experts model the way AllenAI did: document-level expert pools (top-P
    experts of each document, P drawn per document and layer), global load balancing over all ranks,
    router and LM z-losses, AdamW with warmup and cosine decay. Writes Hugging Face EMO checkpoints that
    profile, extract and eval read. Runs data parallel under torchrun (DDP, or --fsdp)."""
    from emo_slice.errors import UsageError
    from emo_slice.train.config import TrainConfig, apply_overrides, train_preset

    if resume and (out / "train_config.json").exists() and not show_config:
        # continue with the run's own configuration; explicit options still apply on top
        saved = json.loads((out / "train_config.json").read_text())
        cfg = TrainConfig(**saved)
    else:
        cfg = train_preset(preset)
    explicit = {"data": data, "router": router, "steps": steps, "batch_size": batch_size,
                "micro_batch_size": micro_batch_size, "seq_len": seq_len, "lr": lr, "tokenizer": tokenizer,
                "vocab_size": vocab_size, "field": field, "split": split, "valid_data": valid_data, "dtype": dtype,
                "save_every": save_every, "eval_every": eval_every, "seed": seed, "stop_after": stop_after}
    apply_overrides(cfg, {k: v for k, v in explicit.items() if v is not None})
    apply_overrides(cfg, list(settings))
    cfg.out, cfg.resume, cfg.overwrite = str(out), resume, overwrite
    cfg.fsdp = cfg.fsdp or fsdp
    if resume:
        cfg.stop_after = stop_after
    if show_config:
        print_json(cfg.to_dict())
        return
    if not cfg.data:
        raise UsageError("--data is required: a .txt, JSONL or dataset with the training text")
    from emo_slice.train.trainer import Trainer

    trainer = Trainer(cfg)
    rank0 = trainer.rank == 0
    if rank0 and not json_out:
        m = trainer.mcfg
        err_console.print(f"[bold]pretrain[/] {cfg.router} router, preset {cfg.preset}: {m.num_hidden_layers} layers, "
                          f"{m.num_experts} experts (top {m.num_experts_per_tok}), d_model {m.hidden_size}, "
                          f"vocab {m.vocab_size}; tokenizer {trainer.meta['tokenizer']}; "
                          f"{trainer.meta['train_tokens']:,} training tokens; pool {trainer.pool or 'none'}; "
                          f"{trainer.world} rank(s) on {trainer.device}, micro-batch {trainer.mb} x {trainer.accum} "
                          "accumulation" + (f"; resuming from {(out / 'latest').read_text().strip()}" if resume else ""),
                          markup=True)
    path = trainer.run()
    if not rank0:
        return
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]
    train = [r for r in log if r["kind"] == "train"]
    evals = [r for r in log if r["kind"] == "eval"]
    summary = {"checkpoint": str(path), "steps": train[-1]["step"] if train else 0,
               "final_loss": train[-1]["loss"] if train else None, "eval": evals[-1] if evals else None,
               "log": str(out / "log.jsonl"), "world_size": trainer.world}
    if json_out:
        print_json(summary)
    else:
        ev = summary["eval"] or {}
        extra = ", ".join(f"{k[9:]} {v:.4f}" for k, v in ev.items() if k.startswith("val_loss_"))
        err_console.print(f"done: step {summary['steps']}, train loss {summary['final_loss']:.4f}"
                          + (f", validation loss {extra}" if extra else "") + f"; checkpoint {path}")
