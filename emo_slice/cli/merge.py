"""`emo-slice merge`: a (fine-tuned) slice's experts back into its full model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.options import Json, MaxShardSize, MergeMode, ModelArg, Overwrite, opt, out_option, value

EPILOG = """Examples:

  emo-slice merge ./Emo_1b14b_1T --slice runs/ft-code/final --out ./emo-code-merged

  emo-slice merge ./model --slice runs/ft/final --mode average --weight 0.5 --also router,shared --out ./merged
"""


SliceOpt = opt("--slice", str, "The slice (fine-tuned or not): a folder with the slice.json extract wrote.")
Mode = opt("--mode", MergeMode, "replace: the slice's tensors; average: (1 - weight) * full + weight * slice.")
Weight = opt("--weight", Optional[float], "The slice's weight with --mode average, 0 to 1 (default 0.5).")
Also = opt(
    "--also", Optional[str], "Merge these too, comma-separated: router (the kept experts' rows), shared, non-moe."
)


@app.command("merge", epilog=EPILOG)
@cli_errors
def merge_cmd(
    full: ModelArg,
    slice_: SliceOpt,
    out: Annotated[Path, out_option("Folder to write: the full model with the slice's experts merged back.")],
    mode: Mode = MergeMode.replace,
    weight: Weight = None,
    also: Also = None,
    max_shard_size: MaxShardSize = "5GB",
    overwrite: Overwrite = False,
    json_out: Json = False,
):
    """Write FULL with the kept experts of a slice (ids from its slice.json) merged back at their positions.

    Only the kept routed experts by default, as AllenAI's merge_pruned_experts_back.py; one tensor at a
    time, every other tensor a byte copy; the slice must have been cut from FULL (fingerprint and routers
    checked). merge.json records both parents."""
    from emo_slice.cli.display import progress_bars
    from emo_slice.workflows.merge import MergeRun, run

    parts = tuple(p.strip() for p in (also or "").split(",") if p.strip())
    spec = MergeRun(full, slice_, str(out), value(mode), weight, parts, overwrite, max_shard_size)
    with progress_bars({"merge": "bytes"}, enabled=not json_out) as bar:
        record = run(spec, bar)
    if json_out:
        print_json(record)
        return
    n = record["tensors_merged"]
    console.print(
        f"wrote {out}: {n['routed']} routed-expert, {n['shared']} shared-expert, {n['router']} router and "
        f"{n['non-moe']} other tensors from {spec.slice} ({record['mode']}"
        + (f", weight {record['weight']:g}" if record["weight"] is not None else "")
        + "); the rest is the full model's"
    )
