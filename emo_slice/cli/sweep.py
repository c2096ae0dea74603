"""`emo-slice sweep`: score slices at several K against the full model and against random experts."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from emo_slice.cli import app, cli_errors, console, print_json, warning_line
from emo_slice.cli.display import progress_bars
from emo_slice.cli.options import DType, Json, Method, Rescale, max_memory_option, spec_option, value
from emo_slice.cli.sweep_display import sweep_table
from emo_slice.eval.settings import EvalSettings
from emo_slice.slicing.profile_settings import ProfileSettings
from emo_slice.specs import doc
from emo_slice.workflows import sweep as workflow
from emo_slice.workflows.sweep import SweepSpec

EPILOG = """Examples:

  emo-slice sweep ./model --examples tasks/code.jsonl --shots 5 --task tasks/code.jsonl --keep 8,16,32,64

  emo-slice sweep ./model --profile code.profile.json --lm valid/code.jsonl --keep 12.5%,25%,50% --out sweep.json

  emo-slice sweep ./emo ./standard --examples code.txt --lm code-valid.jsonl --keep 4,8,16 --controls 3
"""
P, E = ProfileSettings, EvalSettings
BARS = {"profiling": "layers", "slices scored": "slices"}


@app.command(epilog=EPILOG)
@cli_errors
def sweep(
    models: List[str] = typer.Argument(..., help=doc(SweepSpec, "models"), show_default=False),
    keeps: str = spec_option(SweepSpec, "keeps"),
    examples: Optional[str] = spec_option(P, "examples", default=None),
    profile: Optional[Path] = spec_option(SweepSpec, "profile"),
    tasks: List[str] = spec_option(SweepSpec, "tasks"),
    lm: List[str] = spec_option(SweepSpec, "lm"),
    method: Method = spec_option(SweepSpec, "method", enum=Method, show_default=True),
    rescale: Rescale = spec_option(SweepSpec, "rescale", enum=Rescale, show_default=True),
    controls: int = spec_option(SweepSpec, "controls", show_default=True),
    seed: int = spec_option(SweepSpec, "seed", show_default=True),
    field: str = spec_option(P, "field", show_default=True),
    split: Optional[str] = spec_option(P, "split"),
    shots: Optional[int] = spec_option(P, "shots"),
    max_length: Optional[int] = spec_option(P, "max_length"),
    eval_shots: int = spec_option(E, "shots", flag="--eval-shots", show_default=True),
    limit: Optional[int] = spec_option(E, "limit"),
    batch_size: int = spec_option(E, "batch_size", show_default=True),
    layerwise: bool = spec_option(E, "layerwise"),
    max_memory: Optional[int] = max_memory_option(E),
    device: str = spec_option(E, "device", show_default=True),
    pool: Optional[int] = spec_option(P, "pool"),
    dtype: Optional[DType] = spec_option(E, "dtype"),
    metric: List[str] = spec_option(SweepSpec, "metric"),
    keep_slices: Optional[Path] = spec_option(SweepSpec, "keep_slices"),
    out: Optional[Path] = spec_option(SweepSpec, "out"),
    plot: Optional[Path] = spec_option(SweepSpec, "plot"),
    overwrite: bool = spec_option(SweepSpec, "overwrite"),
    json_out: Json = False,
):
    """How much of the full model's score each K keeps, with a random-experts control at each K.

    Profiles once (or reads --profile), scores the full model once, then for each K writes the slice
    (temporary unless --keep-slices) and scores it on the very same items; calibration items of a
    --task are held out of its scoring. Prints one table (K, bytes and their share of the full model's,
    each metric and the share of the full score kept, the random controls' mean and standard deviation,
    tokens/s in a wide terminal), writes --out (JSON, with each K's control statistics) and a PNG."""
    where = dict(dtype=value(dtype), device=device, layerwise=layerwise, pool=pool or None, max_memory=max_memory)
    calib = None
    if examples is not None:
        calib = P(examples=examples, field=field, split=split, shots=shots, seed=seed, max_length=max_length, **where)
    scoring = E(shots=eval_shots, seed=seed, limit=limit, batch_size=batch_size, split=split, **where)
    paths = {
        k: None if v is None else str(v)
        for k, v in dict(profile=profile, keep_slices=keep_slices, out=out, plot=plot).items()
    }
    spec = SweepSpec(
        tuple(models),
        keeps,
        tuple(tasks),
        tuple(lm),
        calibration=calib,
        method=value(method),
        rescale=value(rescale),
        controls=controls,
        seed=seed,
        scoring=scoring,
        metric=tuple(metric),
        overwrite=overwrite,
        **paths,
    )
    with progress_bars(BARS, enabled=not json_out) as bar:
        data = workflow.run(spec, progress=bar, warn=warning_line)
    if json_out:
        print_json(data)
        return
    console.print(sweep_table(data, list(metric) or None, console.width))
    png = spec.png()
    for path in (out, png if png is not None and Path(png).exists() else None):
        if path is not None:
            console.print(f"wrote {path}")
