"""`emo-slice pretrain`: train an EMO (or standard) MoE from text, on one process or under torchrun."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from emo_slice.cli import app, cli_errors, err_console, fail, print_json
from emo_slice.cli.options import DType, Preset, Router, opt, spec_option, value
from emo_slice.specs import attribute_docs
from emo_slice.workflows import pretrain as workflow
from emo_slice.workflows.pretrain import PretrainSpec

EPILOG = """Examples:

  emo-slice demo-data --out ./demo && emo-slice pretrain --data demo/train.jsonl --out runs/emo --preset small

  emo-slice pretrain --data corpus.jsonl --out runs/std --preset small --router standard

  emo-slice pretrain --data corpus.jsonl --out runs/emo --resume

  torchrun --nproc-per-node 8 -m emo_slice pretrain --data corpus.jsonl --out runs/emo --preset emo-1b14b --fsdp

  emo-slice pretrain --data c.jsonl --out r --preset tiny --set lr=1e-3 --set hidden_size=128 --set pool_min=4

  emo-slice pretrain --data health.jsonl --out runs/ft --init-from slices/health --steps 200 --lr 3e-4
"""
TRAIN_DOCS = attribute_docs("emo_slice.train.config_fields", "TrainConfig")  # read, not imported: no torch


def train_option(name: str, flag: str | None = None):
    """A TrainConfig field as an option: its doc as the help; None (not given) leaves the preset's value (or the
    resumed run's)."""
    return typer.Option(None, flag or "--" + name.replace("_", "-"), help=TRAIN_DOCS[name], show_default=False)


ShowConfig = opt("--show-config", bool, "Check and print the resolved configuration, then exit.")
JsonSummary = opt("--json", bool, "Print machine-readable JSON on stdout instead of tables: a summary at the end.")


@app.command("pretrain", epilog=EPILOG)
@cli_errors
def pretrain_cmd(
    out: Path = spec_option(PretrainSpec, "out"),
    data: Optional[str] = train_option("data"),
    preset: Optional[Preset] = spec_option(PretrainSpec, "preset"),
    init_from: Optional[str] = train_option("init_from"),
    router: Optional[Router] = train_option("router"),
    steps: Optional[int] = train_option("steps"),
    batch_size: Optional[int] = train_option("batch_size"),
    micro_batch_size: Optional[int] = train_option("micro_batch_size"),
    seq_len: Optional[int] = train_option("seq_len"),
    lr: Optional[float] = train_option("lr"),
    tokenizer: Optional[str] = train_option("tokenizer"),
    vocab_size: Optional[int] = train_option("vocab_size"),
    field: Optional[str] = train_option("field"),
    split: Optional[str] = train_option("split"),
    valid_data: Optional[str] = train_option("valid_data"),
    dtype: Optional[DType] = train_option("dtype"),
    fsdp: bool = spec_option(PretrainSpec, "fsdp"),
    save_every: Optional[int] = train_option("save_every"),
    eval_every: Optional[int] = train_option("eval_every"),
    seed: Optional[int] = train_option("seed"),
    stop_after: Optional[int] = train_option("stop_after"),
    remote_code: Optional[str] = train_option("remote_code"),
    resume: bool = spec_option(PretrainSpec, "resume"),
    overwrite: bool = spec_option(PretrainSpec, "overwrite"),
    settings: List[str] = spec_option(PretrainSpec, "settings"),
    show_config: ShowConfig = False,
    json_out: JsonSummary = False,
):
    """Pretrain an EMO (or standard) mixture-of-experts model from text.

    As AllenAI did: document-level expert pools (top-P experts of each document, P drawn per document
    and layer), global load balancing over all ranks, router and LM z-losses, AdamW with warmup and
    cosine decay. Writes Hugging Face EMO checkpoints that profile, extract and eval read. Runs data
    parallel under torchrun (DDP, or --fsdp)."""
    given = locals()  # the training options are named as their TrainConfig fields
    options = {k: value(given[k]) for k in workflow.OPTION_FIELDS}
    spec = PretrainSpec(str(out), value(preset), resume, overwrite, fsdp, options, tuple(settings))
    if show_config:
        print_json(workflow.configure(spec).to_dict())
        return
    try:
        summary = workflow.run(spec, announce=None if json_out else err_console.print)
    except KeyboardInterrupt:  # say what the run folder holds, not "nothing was written"
        fail(workflow.interrupted_message(out), 130)
    if summary is not None:
        print_json(summary) if json_out else err_console.print(workflow.summary_line(summary), markup=False)
