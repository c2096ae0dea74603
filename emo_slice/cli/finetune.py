"""`emo-slice finetune`: supervised fine-tuning of a model (a slice, typically) on task items."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from emo_slice.cli import app, cli_errors, err_console, fail, print_json
from emo_slice.cli.options import DType, Json, TrainPart, spec_argument, spec_option, value
from emo_slice.specs import attribute_docs
from emo_slice.workflows import finetune as workflow
from emo_slice.workflows.finetune import FinetuneSpec
from emo_slice.workflows.pretrain import interrupted_message

EPILOG = """Examples:

  emo-slice finetune ./emo-code-16 --task tasks/train/code.jsonl --train routed --out runs/ft-code

  emo-slice finetune ./slice --task arc_easy --epochs 3 --out runs/ft-arc

  emo-slice eval runs/ft-code/final --against runs/ft-code/step-000000 --task tasks/code.jsonl

  torchrun --nproc-per-node 8 -m emo_slice finetune ./slice --task pairs.jsonl --out runs/ft --dtype bfloat16
"""
DOCS = attribute_docs("emo_slice.train.finetune_config", "FinetuneConfig")  # read, not imported: no torch


def config_option(name: str):
    """A FinetuneConfig field as an option: its doc as the help; None (not given) leaves the default."""
    return typer.Option(None, "--" + name.replace("_", "-"), help=DOCS[name], show_default=False)


@app.command("finetune", epilog=EPILOG)
@cli_errors
def finetune_cmd(
    model: str = spec_argument(FinetuneSpec, "model"),
    tasks: List[str] = spec_option(FinetuneSpec, "tasks"),
    out: Path = spec_option(FinetuneSpec, "out"),
    train: Optional[TrainPart] = config_option("train"),
    split: Optional[str] = config_option("split"),
    epochs: Optional[float] = config_option("epochs"),
    steps: Optional[int] = config_option("steps"),
    batch_size: Optional[int] = config_option("batch_size"),
    lr: Optional[float] = config_option("lr"),
    valid_share: Optional[float] = config_option("valid_share"),
    dtype: Optional[DType] = config_option("dtype"),
    eval_every: Optional[int] = config_option("eval_every"),
    save_every: Optional[int] = config_option("save_every"),
    seed: Optional[int] = config_option("seed"),
    stop_after: Optional[int] = config_option("stop_after"),
    fsdp: bool = spec_option(FinetuneSpec, "fsdp"),
    resume: bool = spec_option(FinetuneSpec, "resume"),
    overwrite: bool = spec_option(FinetuneSpec, "overwrite"),
    settings: List[str] = spec_option(FinetuneSpec, "settings"),
    json_out: Json = False,
):
    """Fine-tune MODEL on task items: the loss covers the answer tokens only, the parts --train does not name are
    frozen (never given to the optimizer). As AllenAI's EMO fine-tuning, on emo-slice's trainer (bf16, DDP/FSDP
    under torchrun, checkpoints, --resume). Writes step-000000 before the first step; checkpoints keep the model's
    slice.json, so `emo-slice merge FULL --slice RUN/final` puts the tuned experts back."""
    given = locals()  # the options are named as their FinetuneConfig fields
    options = {k: value(given[k]) for k in workflow.OPTION_FIELDS}
    spec = FinetuneSpec(
        model, str(out), tuple(tasks), resume=resume, overwrite=overwrite, fsdp=fsdp, options=options,
        settings=tuple(settings),
    )  # fmt: skip
    try:
        summary = workflow.run(spec, announce=None if json_out else err_console.print)
    except KeyboardInterrupt:
        fail(interrupted_message(out), 130)
    if summary is not None:
        print_json(summary) if json_out else err_console.print(workflow.summary_line(summary), markup=False)
