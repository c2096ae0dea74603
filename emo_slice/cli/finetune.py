"""`emo-slice finetune`: supervised fine-tuning of a model (a slice, typically) on task items."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from emo_slice.cli import app, cli_errors, err_console, fail, print_json
from emo_slice.cli.options import DType, Json, ModelArg, Overwrite, TrainPart, dtype_option, opt, out_option, value

EPILOG = """Examples:

  emo-slice finetune ./emo-code-16 --task tasks/train/code.jsonl --out runs/ft-code

  emo-slice finetune ./slice --task arc_easy --train routed --epochs 3 --out runs/ft-arc

  emo-slice eval runs/ft-code/final --against runs/ft-code/step-000000 --task tasks/code.jsonl

  torchrun --nproc-per-node 8 -m emo_slice finetune ./slice --task pairs.jsonl --out runs/ft --dtype bfloat16
"""

Tasks = Annotated[
    List[str],
    typer.Option(
        "--task",
        help="What to train on (repeatable): a built-in benchmark (its train split: context + gold answer), gsm8k "
        "(prompt + chain of thought), a task file or dataset, a JSONL of prompt/completion pairs, or a JSONL of "
        "chat 'messages' (the model's chat template). Loss on the answer tokens only, EOS appended.",
        show_default=False,
    ),
]
Train = opt("--train", Optional[TrainPart], "What learns: routed, routed+shared, routed+shared+router, all (default).")
Split = opt(
    "--split", Optional[str], "Split of a benchmark or dataset to train on (default train; never the scored one)."
)
Epochs = opt("--epochs", Optional[float], "Passes over the training items (default 3).")
Steps = opt("--steps", Optional[int], "Optimizer steps (default: from --epochs).")
Batch = opt("--batch-size", Optional[int], "Examples per optimizer step, global (default 16).")
Micro = opt("--micro-batch-size", Optional[int], "Examples per forward on one rank; the rest is accumulation.")
SeqLen = opt("--seq-len", Optional[int], "Longest example in tokens (default: the model's context).")
LR = opt("--lr", Optional[float], "Peak learning rate (default 5e-5, 10% warmup).")
Valid = opt("--valid-share", Optional[float], "Share of the training items held out for evaluation (default 0.1).")
EvalEvery = opt("--eval-every", Optional[int], "Score the held-out items every N steps (always before and after).")
SaveEvery = opt("--save-every", Optional[int], "Checkpoint every N steps (always step-000000 and final).")
Seed = opt("--seed", Optional[int], "Random seed of the held-out draw and the example order (default 0).")
StopAfter = opt("--stop-after", Optional[int], "Stop with a checkpoint after this step; continue with --resume.")
Fsdp = opt("--fsdp", bool, "Under torchrun: shard with FSDP2 instead of DDP.")
Resume = opt("--resume", bool, "Continue the run in --out from its latest checkpoint.")
Settings = opt("--set", List[str], "key=value for any other setting (warmup_ratio, weight_decay, eval_items, ...).")


@app.command("finetune", epilog=EPILOG)
@cli_errors
def finetune_cmd(
    model: ModelArg,
    out: Annotated[Path, out_option("Run folder: step-000000 (before), checkpoints, final, log.jsonl.")],
    task: Tasks = [],
    train: Train = None,
    split: Split = None,
    epochs: Epochs = None,
    steps: Steps = None,
    batch_size: Batch = None,
    micro_batch_size: Micro = None,
    seq_len: SeqLen = None,
    lr: LR = None,
    valid_share: Valid = None,
    dtype: Annotated[Optional[DType], dtype_option("float32; bfloat16 = bf16 compute, fp32 master weights")] = None,
    eval_every: EvalEvery = None,
    save_every: SaveEvery = None,
    seed: Seed = None,
    stop_after: StopAfter = None,
    fsdp: Fsdp = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
    settings: Settings = [],
    json_out: Json = False,
):
    """Fine-tune MODEL on task items: the loss covers the answer tokens only, the parts --train does not name are
    frozen (never given to the optimizer). As AllenAI's EMO fine-tuning, on emo-slice's trainer (bf16, DDP/FSDP
    under torchrun, checkpoints, --resume). Writes step-000000 before the first step; checkpoints keep the model's
    slice.json, so `emo-slice merge FULL --slice RUN/final` puts the tuned experts back."""
    from emo_slice.workflows import finetune as wf

    options = dict(train=value(train), dtype=value(dtype), fsdp=fsdp, resume=resume, overwrite=overwrite)
    spec = wf.FinetuneRun(
        model, tuple(task), str(out), split=split, epochs=epochs, steps=steps, batch_size=batch_size,
        micro_batch_size=micro_batch_size, seq_len=seq_len, lr=lr, valid_share=valid_share, eval_every=eval_every,
        save_every=save_every, seed=seed, stop_after=stop_after, settings=tuple(settings), **options,
    )  # fmt: skip
    try:
        summary = wf.run(wf.resolve(spec), announce=None if json_out else err_console.print)
    except KeyboardInterrupt:
        from emo_slice.workflows.pretrain import interrupted_message

        fail(interrupted_message(out), 130)
    if summary is not None:
        print_json(summary) if json_out else err_console.print(wf.summary_line(summary), markup=False)
