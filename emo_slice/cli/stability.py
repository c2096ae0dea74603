"""`emo-slice stability`: how the kept experts change with the number of calibration examples."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from emo_slice.cli import app, cli_errors, console, err_console, print_json
from emo_slice.cli.options import (
    Device,
    DeviceComputeDType,
    Field,
    Json,
    Layerwise,
    MaxLength,
    ModelArg,
    Overwrite,
    Split,
    keep_option,
    opt,
    out_option,
)
from emo_slice.cli.options import value as v

Examples = Annotated[str, typer.Option("--examples", help="Calibration examples: documents (.txt, JSONL --field, a "
                                       "dataset), or with --task a multiple-choice task (one item = one example).")]  # fmt: skip
Keep = Annotated[str, keep_option()]
CalibN = opt("--calib-n", str, "Numbers of examples to compare, comma-separated; the largest is the reference.",
             show_default=True)  # fmt: skip
Seeds = opt("--seeds", int, "Seeded orders of the examples (seed 0, 1, ...): the N first of each.", show_default=True)
StabilityMethod = opt(
    "--method", str, "How experts are ranked: mean-prob (EMO's default) or frequency.", show_default=True
)
Task = opt("--task", bool, "Read --examples as a multiple-choice task: each item with its gold answer is one example.")
OutFile = Annotated[Optional[Path], out_option("JSON report to write (kept sets, Jaccard per layer).")]

EPILOG = """Example:

  emo-slice stability ./emo/final --examples tasks/code.jsonl --task --keep 8 --calib-n 1,5,10,100
"""


@app.command(epilog=EPILOG)
@cli_errors
def stability(
    model: ModelArg,
    examples: Examples,
    keep: Keep,
    calib_n: CalibN = "1,5,10,100",
    seeds: Seeds = 3,
    method: StabilityMethod = "mean-prob",
    task: Task = False,
    field: Field = "text",
    split: Split = None,
    max_length: MaxLength = None,
    dtype: DeviceComputeDType = None,
    device: Device = "auto",
    layerwise: Layerwise = False,
    out: OutFile = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
):
    """Is one few-shot example enough? Per layer, the Jaccard overlap of the experts kept when chosen from N
    examples with those chosen from the most (EMO's analyze_nprune_keep_sets), and across seeded draws.
    The model runs once over the examples; each N reuses their router statistics."""
    from emo_slice.workflows.stability import StabilitySpec, run_stability  # here: --help loads no torch

    spec = StabilitySpec(model, examples, keep, calib_n, seeds, method, task, field, split, max_length, v(dtype),
                         device, layerwise, out, overwrite)  # fmt: skip
    report = run_stability(spec)
    if json_out:
        print_json({k: report[k] for k in ("reference", "sizes", "settings")})
        return
    _print(report, out)


def _print(report: dict, out: Optional[Path]) -> None:
    from rich.table import Table

    t = Table("examples", "mean Jaccard vs reference", "worst layer", "across seeds")
    for r in report["sizes"]:
        across = r["mean_jaccard_across_seeds"]
        n = f"{r['n']}" + (f" ({r['n_effective']} available)" if r["n_effective"] != r["n"] else "")
        t.add_row(n, f"{r['mean_jaccard_vs_reference']:.3f}", f"{r['min_layer_jaccard_vs_reference']:.3f}",
                  "–" if across is None else f"{across:.3f}")  # fmt: skip
    console.print(t)
    ref = report["reference"]
    keep = report["settings"]["keep_routed"]
    err_console.print(
        f"reference: the {keep} routed experts per layer chosen from {ref['n_effective']} examples, seed 0"
    )
    if out is not None:
        err_console.print(f"wrote {out}")
