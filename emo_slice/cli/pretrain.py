"""`emo-slice pretrain`: train an EMO (or standard) MoE from text, on one process or under torchrun."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from emo_slice.cli import app, cli_errors, err_console, fail, print_json
from emo_slice.cli.options import DType, Overwrite, Preset, Router, dtype_option, out_option, seed_option, value

EPILOG = """Examples:

  emo-slice demo-data ./demo && emo-slice pretrain --data demo/train.jsonl --out runs/emo --preset small

  emo-slice pretrain --data corpus.jsonl --out runs/std --preset small --router standard

  emo-slice pretrain --data corpus.jsonl --out runs/emo --resume

  torchrun --nproc-per-node 8 -m emo_slice pretrain --data corpus.jsonl --out runs/emo --preset emo-1b14b --fsdp

  emo-slice pretrain --data c.jsonl --out r --preset tiny --set lr=1e-3 --set hidden_size=128 --set pool_min=4

  emo-slice pretrain --data health.jsonl --out runs/ft --init-from slices/health --steps 200 --lr 3e-4
"""


def _opt(flag: str, typ, help: str):
    """A training option: None (not given) leaves the preset's (or the resumed run's) value."""
    return Annotated[Optional[typ], typer.Option(flag, help=help, show_default=False)]


def _flag(flag: str, help: str):
    return Annotated[bool, typer.Option(flag, help=help)]


Data = _opt(
    "--data",
    str,
    "Training text: .txt, JSONL (field --field) or a Hugging Face dataset (saved folder, data file, or cached name).",
)
PresetOpt = Annotated[
    Optional[Preset],
    typer.Option(
        "--preset",
        help="tiny (tests), small (CPU demo of minutes) or emo-1b14b (the release configuration, GPU clusters); "
        "default small.",
        show_default=False,
    ),
]
InitFrom = _opt(
    "--init-from",
    str,
    "Start from this EMO checkpoint (a release, or a slice): its architecture and weights, a fresh optimizer and "
    "schedule (fine-tuning); --preset and architecture --set keys are then refused.",
)
RouterOpt = _opt(
    "--router",
    Router,
    "emo (document pool, intra-document attention) or standard (the standard-MoE baseline, same everything else).",
)
Steps = _opt("--steps", int, "Optimizer steps of the schedule.")
BatchSize = _opt("--batch-size", int, "Windows per optimizer step (global).")
MicroBatchSize = _opt("--micro-batch-size", int, "Windows per forward on one rank; the rest is gradient accumulation.")
SeqLen = _opt("--seq-len", int, "Tokens per window.")
LR = _opt("--lr", float, "Peak learning rate.")
Tokenizer = _opt("--tokenizer", str, "auto, bytes, train, or a model folder / tokenizer.json to reuse.")
VocabSize = _opt("--vocab-size", int, "Vocabulary of a tokenizer trained on the data.")
FieldOpt = _opt("--field", str, "Record field holding the text (JSONL/datasets).")
SplitOpt = _opt("--split", str, "Dataset split (default train).")
ValidData = _opt("--valid-data", str, "Held-out text for evaluation (default: 2% of the training documents).")
TrainDType = Annotated[Optional[DType], dtype_option("the preset's; bfloat16 = autocast, fp32 master weights")]
SaveEvery = _opt("--save-every", int, "Checkpoint every N steps.")
EvalEvery = _opt("--eval-every", int, "Evaluate every N steps.")
TrainSeed = Annotated[
    Optional[int], seed_option("the weights, the data order and the pool draws (default: the preset's)")
]
StopAfter = _opt(
    "--stop-after", int, "Stop with a checkpoint after this step (the schedule is unchanged); continue with --resume."
)
RemoteCode = _opt(
    "--remote-code",
    str,
    "Folder with configuration_emo.py and modeling_emo.py, copied into every checkpoint and named by its "
    "config.json auto_map (default: none, and no auto_map).",
)
Fsdp = _flag("--fsdp", "Under torchrun: shard with FSDP2 fully_shard instead of DDP.")
Resume = _flag("--resume", "Continue the run in --out from its latest checkpoint.")
ShowConfig = _flag("--show-config", "Check and print the resolved configuration, then exit.")
JsonSummary = _flag("--json", "Print a JSON summary at the end.")
Settings = Annotated[
    List[str],
    typer.Option(
        "--set",
        help="key=value for any training field or model (EmoConfig) "
        "key, e.g. --set lb_weight=0.05 --set num_hidden_layers=8. Repeatable.",
        show_default=False,
    ),
]


@app.command("pretrain", epilog=EPILOG)
@cli_errors
def pretrain_cmd(
    out: Annotated[Path, out_option("Run folder: checkpoints (HF EMO layout), token files, log.jsonl.")],
    data: Data = None,
    preset: PresetOpt = None,
    init_from: InitFrom = None,
    router: RouterOpt = None,
    steps: Steps = None,
    batch_size: BatchSize = None,
    micro_batch_size: MicroBatchSize = None,
    seq_len: SeqLen = None,
    lr: LR = None,
    tokenizer: Tokenizer = None,
    vocab_size: VocabSize = None,
    field: FieldOpt = None,
    split: SplitOpt = None,
    valid_data: ValidData = None,
    dtype: TrainDType = None,
    fsdp: Fsdp = False,
    save_every: SaveEvery = None,
    eval_every: EvalEvery = None,
    seed: TrainSeed = None,
    stop_after: StopAfter = None,
    remote_code: RemoteCode = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    settings: Settings = [],
    show_config: ShowConfig = False,
    json_out: JsonSummary = False,
):
    """Pretrain an EMO (or standard) mixture-of-experts model from text.

    As AllenAI did: document-level expert pools (top-P experts of each document, P drawn per document
    and layer), global load balancing over all ranks, router and LM z-losses, AdamW with warmup and
    cosine decay. Writes Hugging Face EMO checkpoints that profile, extract and eval read. Runs data
    parallel under torchrun (DDP, or --fsdp)."""
    given = locals()  # the training options are named as their TrainConfig fields
    from emo_slice.workflows import pretrain as run

    options = {k: value(given[k]) for k in run.OPTION_FIELDS}
    cfg = run.resolve_config(
        out, preset=value(preset), resume=resume, overwrite=overwrite, fsdp=fsdp, options=options, settings=settings
    )
    run.check_config(cfg)
    if show_config:
        print_json(cfg.to_dict())
        return
    try:
        summary = run.pretrain(cfg, announce=None if json_out else err_console.print)
    except KeyboardInterrupt:  # say what the run folder holds, not "nothing was written"
        fail(run.interrupted_message(out), 130)
    if summary is not None:
        print_json(summary) if json_out else err_console.print(run.summary_line(summary), markup=False)
