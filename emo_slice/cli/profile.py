"""`emo-slice profile`: score every routed expert on calibration input; write a reusable profile file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from emo_slice.cli import app, cli_errors, console, err_console, print_json
from emo_slice.cli.options import (
    Device,
    DeviceComputeDType,
    Examples,
    Field,
    Greedy,
    Json,
    Layerwise,
    MaxLength,
    Method,
    ModelArg,
    Overwrite,
    Shots,
    Split,
    calibration,
    keep_option,
    method_option,
    out_option,
    pool_option,
    seed_option,
    value,
)

MaxTokensInMemory = Annotated[
    int,
    typer.Option(
        "--max-tokens-in-memory",
        help="Calibration tokens whose activations are held at once: longer input runs in chunks of this many "
        "(the layers are read once per chunk; scores are the same). Memory about 2 x this x hidden_size x 4 bytes. "
        "--greedy needs every token at once and refuses longer input.",
    ),
]


OutFile = Annotated[
    Optional[Path], out_option("Profile file to write (JSON). Default: MODELNAME.profile.json in the current folder.")
]
Seed = Annotated[int, seed_option("the demonstrations draw (and of --method random with --greedy)")]
Keep = Annotated[Optional[str], keep_option("Only with --greedy.")]
MethodOpt = Annotated[Method, method_option("Only with --greedy: how earlier layers are sliced.")]
Pool = Annotated[Optional[int], pool_option("Each calibration document (row) gets its own pool.")]


def plain_progress(label: str, done: int, total: int | None) -> None:
    """Progress when stderr is not a terminal (a log file, CI): one plain line per update, no bar."""
    err_console.print(f"{label}: {done}/{total if total is not None else '?'} layer passes", markup=False)


EPILOG = """Examples:

  emo-slice profile ./Emo_1b14b_1T --examples code-5shot.txt --out code.profile.json

  emo-slice profile ./model --examples tasks/code.jsonl --shots 5 --out code.profile.json

  emo-slice profile ./model --examples docs.jsonl --field text --greedy --keep 16 --out code.greedy.json
"""


@app.command(epilog=EPILOG)
@cli_errors
def profile(
    model: ModelArg,
    examples: Examples,
    out: OutFile = None,
    overwrite: Overwrite = False,
    field: Field = "text",
    split: Split = None,
    shots: Shots = None,
    seed: Seed = 0,
    max_length: MaxLength = None,
    max_tokens_in_memory: MaxTokensInMemory = 262_144,
    dtype: DeviceComputeDType = None,
    device: Device = "auto",
    layerwise: Layerwise = False,
    greedy: Greedy = False,
    keep: Keep = None,
    method: MethodOpt = Method.mean_prob,
    pool: Pool = None,
    json_out: Json = False,
):
    """Score every routed expert on calibration input; write a reusable profile file.

    Scores per layer: mean router probability (EMO's default), selection frequency, REAP, EASY-EP and
    token counts. Runs on --device: the whole model when it fits in the device's free memory, else (or
    with --layerwise) layer by layer from the checkpoint (peak memory: about two layers plus the
    activations of at most --max-tokens-in-memory tokens). The profile file is reusable: `extract` slices
    at any K and method from it without running the model again."""
    from emo_slice.cli.display import progress_bars
    from emo_slice.model.devices import resolve_device
    from emo_slice.slicing.profile import ProfileSettings
    from emo_slice.workflows.profile import profile_summary, write_profile

    resolve_device(device)  # a bad --device: one line before anything is read
    calib = calibration(examples, field, split, shots, seed, max_length, dtype)
    run = dict(max_tokens_in_memory=max_tokens_in_memory, device=device, layerwise=layerwise, pool=pool or None)
    settings = ProfileSettings(**calib, **run, greedy=greedy, keep=keep, method=value(method))
    with progress_bars({"profiling": "layer passes"}, enabled=not json_out and err_console.is_terminal) as bar:
        progress = bar if bar is not None or json_out else plain_progress
        prof, path = write_profile(model, out, settings, overwrite=overwrite, progress=progress)
    summary = profile_summary(prof, path) | {k: prof["settings"][k] for k in ("device", "placement", "dtype")}
    if json_out:
        print_json(summary)
        return
    _print_summary(summary, path, model)


def _print_summary(summary: dict, path: Path, model: str) -> None:
    """Where it ran, the concentration table, the file written and the next command."""
    from emo_slice.cli.display import concentration_table

    err_console.print(f"tokenizer: {summary['tokenizer']}")
    err_console.print(f"ran on {summary['device']} ({summary['placement']}), {summary['dtype']}")
    console.print(concentration_table(summary))
    g = summary["greedy"]
    console.print(
        f"wrote {path} ({summary['tokens']:,} tokens, {summary['layers']} layers"
        + (f", greedy K={g['keep']} {g['method']}" if g else "")
        + f"). Next: emo-slice extract {model} --keep K --profile {path} --out DIR"
    )
