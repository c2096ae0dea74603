"""`emo-slice init`: a random checkpoint (EMO, or another family) from a preset, to try every command offline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.options import (
    DType,
    Family,
    Json,
    Preset,
    out_or_positional,
    positional_out,
    spec_option,
    value,
)
from emo_slice.workflows import init as workflow
from emo_slice.workflows.init import InitSpec

EPILOG = """Examples:

  emo-slice init --out ./tiny-emo --preset tiny --seed 0

  emo-slice init --out ./tiny-olmoe --preset tiny --family olmoe     (a stock OlmoeForCausalLM checkpoint)
"""


@app.command(epilog=EPILOG)
@cli_errors
def init(
    old_out: Optional[Path] = positional_out(),
    out: Optional[Path] = spec_option(InitSpec, "out", default=None),
    preset: Preset = spec_option(InitSpec, "preset", enum=Preset, show_default=True),
    family: Family = spec_option(InitSpec, "family", enum=Family, show_default=True),
    seed: int = spec_option(InitSpec, "seed", show_default=True),
    std: float = spec_option(InitSpec, "std", show_default=True),
    save_dtype: DType = spec_option(InitSpec, "save_dtype", enum=DType),
    max_shard_size: str = spec_option(InitSpec, "max_shard_size", show_default=True),
    overwrite: bool = spec_option(InitSpec, "overwrite"),
    json_out: Json = False,
):
    """Write a random checkpoint (Hugging Face layout) from a preset, to try every command offline."""
    spec = InitSpec(
        out=str(out_or_positional(out, old_out)),
        preset=value(preset),
        family=value(family),
        seed=seed,
        std=std,
        save_dtype=value(save_dtype),
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )
    path = workflow.run(spec)
    if json_out:
        print_json(
            {"path": path, "preset": spec.preset, "family": spec.family, "seed": seed, "save_dtype": spec.save_dtype}
        )
    else:
        console.print(f"wrote a random {spec.preset} {spec.family} checkpoint to {path}")
