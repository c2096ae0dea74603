"""`emo-slice stability`: how the kept experts change with the number of calibration examples."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from emo_slice.cli import app, cli_errors, console, err_console, print_json
from emo_slice.cli.options import DType, Json, spec_argument, spec_option, value
from emo_slice.workflows.stability import StabilitySpec as S

EPILOG = """Example:

  emo-slice stability ./emo/final --examples tasks/code.jsonl --multiple-choice --keep 8 --calib-n 1,5,10,100
"""


@app.command(epilog=EPILOG)
@cli_errors
def stability(
    model: str = spec_argument(S, "model"),
    examples: str = spec_option(S, "examples"),
    keep: str = spec_option(S, "keep"),
    calib_n: str = spec_option(S, "calib_n", show_default=True),
    seeds: int = spec_option(S, "seeds", show_default=True),
    method: str = spec_option(S, "method", show_default=True),
    multiple_choice: bool = spec_option(S, "multiple_choice"),
    field: str = spec_option(S, "field", show_default=True),
    split: Optional[str] = spec_option(S, "split"),
    max_length: Optional[int] = spec_option(S, "max_length"),
    dtype: Optional[DType] = spec_option(S, "dtype"),
    device: str = spec_option(S, "device", show_default=True),
    layerwise: bool = spec_option(S, "layerwise"),
    out: Optional[Path] = spec_option(S, "out"),
    overwrite: bool = spec_option(S, "overwrite"),
    json_out: Json = False,
):
    """Is one few-shot example enough? Per layer, the Jaccard overlap of the experts kept when chosen from N
    examples with those chosen from the most (EMO's analyze_nprune_keep_sets), and across seeded draws.
    The model runs once over the examples; each N reuses their router statistics."""
    from emo_slice.workflows.stability import run_stability  # torch-free --help

    spec = S(model, examples, keep, calib_n, seeds, method, multiple_choice, field, split, max_length, value(dtype),
             device, layerwise, None if out is None else str(out), overwrite)  # fmt: skip
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
