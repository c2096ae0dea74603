"""`emo-slice sweep`: score slices at several K against the full model and against random experts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from emo_slice.cli import app, cli_errors, console, print_json, warning_line
from emo_slice.cli.options import (
    ComputeDType,
    Examples,
    Field,
    Json,
    MaxLength,
    Method,
    Overwrite,
    Shots,
    Split,
    calibration,
    method_option,
    opt,
    out_option,
    pool_option,
    seed_option,
    value,
)

EPILOG = """Examples:

  emo-slice sweep ./model --examples tasks/code.jsonl --shots 5 --task tasks/code.jsonl --keep 8,16,32,64

  emo-slice sweep ./model --profile code.profile.json --lm valid/code.jsonl --keep 12.5%,25%,50% --out sweep.json

  emo-slice sweep ./emo ./standard --examples code.txt --lm code-valid.jsonl --keep 4,8,16 --controls 3
"""


Models = Annotated[
    List[str],
    typer.Argument(
        help="Checkpoint folder(s) or Hub id(s); several: the same sweep for each, side by side.", show_default=False
    ),
]
Keeps = opt("--keep", str, "Experts kept per layer at each step, counts or shares: 8,16,32,64 or 12.5%,25%,50%.")
Profile = opt("--profile", Optional[Path], "A profile file of the (one) model instead of --examples.")
Controls = opt("--controls", int, "Random-expert slices per K (seeds --seed, --seed+1, ...).", show_default=True)
KeepSlices = opt("--keep-slices", Optional[Path], "Keep the slices in this folder (default: a temporary one).")
Plot = opt("--plot", Optional[Path], "PNG of score vs memory (default: --out with .png; needs emo-slice[plot]).")
Metric = opt("--metric", List[str], "Metric(s) the table and picture show (default: acc_per_char / bits_per_byte).")
Tasks = opt("--task", List[str], "Multiple-choice task scored at every K (as in `eval`). Repeatable.")
Texts = opt("--lm", List[str], "Text scored by bits per byte at every K (as in `eval --lm`). Repeatable.")
EvalShots = opt("--eval-shots", int, "Demonstrations before each scored item (as `eval --shots`).", show_default=True)
Limit = opt("--limit", Optional[int], "Score only the first N items of each task.")
BatchSize = opt("--batch-size", int, "Items (rows) per forward pass.", show_default=True)
Layerwise = opt(
    "--layerwise/--no-layerwise",
    Optional[bool],
    "Hold one layer in memory at a time (default: only when the model does not fit on the device, as `eval`).",
)
Device = opt("--device", Optional[str], "Where the evaluations run (cpu, cuda, cuda:N; as `eval --device`).")
MethodOpt = Annotated[Method, method_option("How the swept slices are chosen (random: see --controls).")]
Seed = Annotated[int, seed_option("the random controls and of the demonstrations draw")]
Pool = Annotated[Optional[int], pool_option("Used by the profile and every evaluation.")]
OutFile = Annotated[Optional[Path], out_option("Write the results here (JSON).")]
BARS = {"profiling": "layer passes", "slices scored": "slices"}


@app.command(epilog=EPILOG)
@cli_errors
def sweep(
    models: Models,
    keep: Keeps,
    examples: Examples = None,
    profile_path: Profile = None,
    task: Tasks = [],
    lm: Texts = [],
    method: MethodOpt = Method.mean_prob,
    controls: Controls = 1,
    seed: Seed = 0,
    field: Field = "text",
    split: Split = None,
    shots: Shots = None,
    max_length: MaxLength = None,
    eval_shots: EvalShots = 0,
    limit: Limit = None,
    batch_size: BatchSize = 16,
    layerwise: Layerwise = None,
    device: Device = None,
    pool: Pool = None,
    dtype: ComputeDType = None,
    metric: Metric = [],
    keep_slices: KeepSlices = None,
    out: OutFile = None,
    plot: Plot = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
):
    """How much of the full model's score each K keeps, with a random-experts control at each K.

    Profiles once (or reads --profile), scores the full model once, then for each K writes the slice
    (temporary unless --keep-slices) and scores it on the very same items; calibration items of a
    --task are held out of its scoring. Prints one table (K, bytes, share of the full model's bytes,
    each metric and the share of the full score kept, tokens/s), writes --out (JSON) and a PNG."""
    from emo_slice.artifacts import locked
    from emo_slice.cli.display import progress_bars
    from emo_slice.workflows.sweep import sweep_models

    png = plot if plot is not None else (out.with_suffix(".png") if out is not None else None)
    _check_outputs(models, out, png, keep_slices, overwrite, profile_path)
    calib = calibration(examples, field, split, shots, seed, max_length, dtype)
    settings = _settings(calib, device=device, layerwise=layerwise, pool=pool)
    eval_opts = dict(shots=eval_shots, seed=seed, limit=limit, batch_size=batch_size, split=split, layerwise=layerwise)
    eval_opts |= dict(dtype=value(dtype), device=device, pool=pool)
    choice = dict(profile_path=profile_path, settings=settings, method=value(method), controls=controls, seed=seed)
    run = dict(keep_slices=keep_slices, overwrite=overwrite, eval_opts=eval_opts)
    with (
        locked((out, "--out"), (png, "--plot"), (keep_slices, "--keep-slices")),
        progress_bars(BARS, enabled=not json_out) as bar,
    ):
        data = sweep_models(models, keeps=keep, tasks=task, lm=lm, **choice, **run, progress=bar)
        _write(data, out, png, metric)
    _print(data, metric, out, png, json_out)


def _settings(calib: dict, **where):
    """ProfileSettings of --examples (None without): the calibration options, and --device, --layerwise and --pool
    where given (else ProfileSettings' defaults)."""
    from emo_slice.slicing.profile import ProfileSettings

    if calib["examples"] is None:
        return None
    return ProfileSettings(**calib, **{k: v for k, v in where.items() if v is not None})


def _print(data: dict, metric, out, png, json_out: bool) -> None:
    from emo_slice.cli.sweep_display import sweep_table

    if json_out:
        print_json(data)
        return
    console.print(sweep_table(data, metric))
    for path in (out, png if png is not None and png.exists() else None):
        if path is not None:
            console.print(f"wrote {path}")


def _check_outputs(models, out, png, keep_slices, overwrite, profile_path) -> None:
    from emo_slice.artifacts import check_output
    from emo_slice.errors import UsageError
    from emo_slice.io.checkpoint import resolve_checkpoint

    if profile_path is not None and len(models) > 1:
        raise UsageError("--profile belongs to one model; with several models give --examples (each is profiled)")
    if len(set(models)) != len(models):
        raise UsageError("a model is listed twice; list each once")
    inputs = [resolve_checkpoint(m) for m in models]
    if out is not None:
        check_output(out, inputs=inputs, overwrite=overwrite, suffixes=(".json",))
    if png is not None:
        check_output(png, inputs=inputs, overwrite=overwrite, flag="--plot", suffixes=(".png",))
    if keep_slices is not None:
        check_output(keep_slices, inputs=inputs, overwrite=overwrite, flag="--keep-slices", folder=True)


def _write(data: dict, out, png, metric) -> None:
    import json

    from emo_slice.artifacts import atomic_write_text
    from emo_slice.workflows.sweep import PLOT_HINT, write_plot

    if out is not None:
        atomic_write_text(out, json.dumps(data, indent=1, default=str) + "\n")
    if png is not None and not write_plot(data, png, metric or None):
        warning_line(PLOT_HINT)
