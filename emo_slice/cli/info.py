"""`emo-slice info` and `emo-slice init`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from emo_slice.cli import app, cli_errors, console, print_json


def _human(n: float, unit: str = "B") -> str:
    for p in ["", "K", "M", "G", "T"]:
        if abs(n) < 1000 or p == "T":
            return f"{n:.3g} {p}{unit}" if p else f"{n:.0f} {unit}"
        n /= 1000 if unit != "B" else 1024
    return str(n)


@app.command(epilog="Examples:\n\n  emo-slice info ./Emo_1b14b_1T\n\n  emo-slice info allenai/Emo_1b14b_1T --json")
@cli_errors
def info(
    model: str = typer.Argument(..., help="Checkpoint folder or Hugging Face Hub id."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables."),
):
    """Architecture, parameters (total and active per token), experts per layer, bytes, slice sizes."""
    from emo_slice.io.checkpoint import Checkpoint
    from emo_slice.io.info import checkpoint_info

    data = checkpoint_info(Checkpoint(model))
    if json_out:
        print_json(data)
        return
    a, e, p = data["architecture"], data["experts"], data["parameters"]
    per_layer = e["per_layer"]
    layers_txt = f"{per_layer[0]} in every layer" if len(set(per_layer)) == 1 else ", ".join(map(str, per_layer))
    t = Table(title=f"{data['path']}  ({data['model_type']}, fingerprint {data['fingerprint']})", show_header=False)
    t.add_row("layers / hidden / expert hidden", f"{a['layers']} / {a['hidden_size']} / {a['intermediate_size']}")
    t.add_row("heads / kv heads / head dim", f"{a['heads']} / {a['kv_heads']} / {a['head_dim']}")
    t.add_row("vocab", str(a["vocab_size"]))
    t.add_row("experts per layer", f"{layers_txt} ({e['shared']} shared, last)")
    t.add_row("experts per token", f"{e['per_token']} ({e['routed_per_token']} routed + {e['shared']} shared)")
    t.add_row("parameters total", f"{p['total']:,} ({_human(p['total'], '')})")
    t.add_row("active per token", f"{p['active']:,} ({_human(p['active_non_embedding'], '')} without embeddings)")
    t.add_row("on disk", f"{_human(data['bytes_on_disk'])} in {data['tensors']} tensors, {data['stored_dtype']}")
    console.print(t)
    s = Table(title="What a slice would weigh (same K in every layer, shared experts kept)")
    for col in ("share of experts", "K (experts/layer)", "parameters", "bytes", "of the full model"):
        s.add_column(col, justify="right")
    for row in data["slices"]:
        s.add_row(f"{row['share']:.1%}", str(row["keep"]), _human(row["params_total"], ""), _human(row["bytes"]),
                  f"{row['share_of_bytes']:.1%}")
    console.print(s)


@app.command(epilog="Example:\n\n  emo-slice init ./tiny-emo --preset tiny --seed 0")
@cli_errors
def init(
    out: Path = typer.Argument(..., help="Folder to write the new checkpoint to (must not hold files)."),
    preset: str = typer.Option("tiny", help="Architecture preset: tiny, small or emo-1b14b."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
    std: float = typer.Option(0.1, help="Standard deviation of the random weights."),
    dtype: str = typer.Option("float32", help="Stored dtype: float32 or bfloat16."),
    max_shard_size: str = typer.Option("5GB", help="Largest shard, e.g. 500MB, 5GB."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it already holds files."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
):
    """Write a random EMO checkpoint (Hugging Face layout) from a preset, to try every command offline."""
    from emo_slice.io.build import random_checkpoint

    path = random_checkpoint(out, preset, seed=seed, std=std, dtype=dtype, max_shard_size=max_shard_size,
                             overwrite=overwrite)
    if json_out:
        print_json({"path": str(path), "preset": preset, "seed": seed})
    else:
        console.print(f"wrote a random {preset} EMO checkpoint to {path}")
