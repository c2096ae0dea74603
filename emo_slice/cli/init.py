"""`emo-slice init`: a random EMO checkpoint from a preset, to try every command offline."""

from __future__ import annotations

from typing import Annotated

import typer

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.options import (
    DType,
    FolderArg,
    Json,
    MaxShardSize,
    Overwrite,
    Preset,
    save_dtype_option,
    seed_option,
    value,
)

EPILOG = """Example:

  emo-slice init ./tiny-emo --preset tiny --seed 0
"""


@app.command(epilog=EPILOG)
@cli_errors
def init(
    out: FolderArg,
    preset: Annotated[Preset, typer.Option("--preset", help="Architecture preset.")] = Preset.tiny,
    seed: Annotated[int, seed_option("the random weights")] = 0,
    std: Annotated[float, typer.Option("--std", help="Standard deviation of the random weights.")] = 0.1,
    save_dtype: Annotated[DType, save_dtype_option("float32")] = DType.float32,
    max_shard_size: MaxShardSize = "5GB",
    overwrite: Overwrite = False,
    json_out: Json = False,
):
    """Write a random EMO checkpoint (Hugging Face layout) from a preset, to try every command offline."""
    from emo_slice.io.build import random_checkpoint

    path = random_checkpoint(
        out,
        value(preset),
        seed=seed,
        std=std,
        dtype=value(save_dtype),
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )
    if json_out:
        print_json({"path": str(path), "preset": value(preset), "seed": seed, "save_dtype": value(save_dtype)})
    else:
        console.print(f"wrote a random {value(preset)} EMO checkpoint to {path}")
