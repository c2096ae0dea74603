"""`emo-slice profile`: score every routed expert on calibration input; write a reusable profile file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from emo_slice.cli import app, cli_errors, console, err_console, print_json
from emo_slice.cli.display import concentration_table, progress_bars
from emo_slice.cli.options import DType, Json, Method, max_memory_option, spec_argument, spec_option, value
from emo_slice.slicing.profile_settings import ProfileSettings
from emo_slice.workflows import profile as workflow
from emo_slice.workflows.profile import ProfileSpec, profile_summary

S = ProfileSettings


EPILOG = """Examples:

  emo-slice profile ./Emo_1b14b_1T --examples code-5shot.txt --out code.profile.json

  emo-slice profile ./model --examples tasks/code.jsonl --shots 5 --out code.profile.json

  emo-slice profile ./model --examples docs.jsonl --field text --greedy --keep 16 --out code.greedy.json
"""


@app.command(epilog=EPILOG)
@cli_errors
def profile(
    model: str = spec_argument(ProfileSpec, "model"),
    examples: str = spec_option(S, "examples", default=...),
    out: Optional[Path] = spec_option(ProfileSpec, "out"),
    overwrite: bool = spec_option(ProfileSpec, "overwrite"),
    field: str = spec_option(S, "field", show_default=True),
    split: Optional[str] = spec_option(S, "split"),
    shots: Optional[int] = spec_option(S, "shots"),
    seed: int = spec_option(S, "seed", show_default=True),
    max_length: Optional[int] = spec_option(S, "max_length"),
    max_batch_tokens: int = spec_option(S, "max_batch_tokens", show_default=True),
    max_tokens_in_memory: int = spec_option(S, "max_tokens_in_memory", show_default=True),
    dtype: Optional[DType] = spec_option(S, "dtype"),
    device: str = spec_option(S, "device", show_default=True),
    layerwise: bool = spec_option(S, "layerwise"),
    max_memory: Optional[int] = max_memory_option(S),
    greedy: bool = spec_option(S, "greedy"),
    keep: Optional[str] = spec_option(S, "keep"),
    method: Method = spec_option(S, "method", enum=Method, show_default=True),
    pool: Optional[int] = spec_option(S, "pool"),
    json_out: Json = False,
):
    """Score every routed expert on calibration input; write a reusable profile file.

    Scores per layer: mean router probability (EMO's default), selection frequency, REAP, EASY-EP and
    token counts. Runs on --device: the whole model when it fits in the device's free memory, else (or
    with --layerwise) layer by layer from the checkpoint (peak memory: about two layers plus the
    activations of at most --max-tokens-in-memory tokens). The profile file is reusable: `extract` slices
    at any K and method from it without running the model again."""
    calib = dict(examples=examples, field=field, split=split, shots=shots, seed=seed, max_length=max_length)
    run = dict(max_batch_tokens=max_batch_tokens, max_tokens_in_memory=max_tokens_in_memory, dtype=value(dtype))
    run |= dict(device=device, layerwise=layerwise, max_memory=max_memory, pool=pool or None)
    settings = S(**calib, **run, greedy=greedy, keep=keep, method=value(method))
    spec = ProfileSpec(model, settings, None if out is None else str(out), overwrite)
    with progress_bars({"profiling": "layers"}, enabled=not json_out) as bar:
        prof, path = workflow.run(spec, progress=bar)
    summary = profile_summary(prof, path) | {k: prof["settings"][k] for k in ("device", "placement", "dtype")}
    if json_out:
        print_json(summary)
        return
    _print_summary(summary, path, model)


def _print_summary(summary: dict, path: Path, model: str) -> None:
    """Where it ran, the concentration table, the file written and the next command."""
    err_console.print(f"tokenizer: {summary['tokenizer']}")
    err_console.print(f"ran on {summary['device']} ({summary['placement']}), {summary['dtype']}")
    console.print(concentration_table(summary))
    g = summary["greedy"]
    console.print(
        f"wrote {path} ({summary['tokens']:,} tokens, {summary['layers']} layers"
        + (f", greedy K={g['keep']} {g['method']}" if g else "")
        + f"). Next: emo-slice extract {model} --keep K --profile {path} --out DIR"
    )
