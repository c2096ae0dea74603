"""`emo-slice merge`: a (fine-tuned) slice's experts back into its full model."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.display import progress_bars
from emo_slice.cli.options import Json, MergeMode, spec_argument, spec_option, value
from emo_slice.workflows import merge as workflow
from emo_slice.workflows.merge import MERGING, MergeSpec

EPILOG = """Examples:

  emo-slice merge ./Emo_1b14b_1T --slice runs/ft-code/final --out ./emo-code-merged

  emo-slice merge ./model --slice runs/ft/final --mode average --weight 0.5 --also router,shared --out ./merged
"""


@app.command("merge", epilog=EPILOG)
@cli_errors
def merge_cmd(
    full: str = spec_argument(MergeSpec, "full"),
    slice: str = spec_option(MergeSpec, "slice"),
    out: Path = spec_option(MergeSpec, "out"),
    mode: MergeMode = spec_option(MergeSpec, "mode", enum=MergeMode),
    weight: Optional[float] = spec_option(MergeSpec, "weight"),
    also: List[str] = spec_option(MergeSpec, "also"),
    max_shard_size: str = spec_option(MergeSpec, "max_shard_size"),
    overwrite: bool = spec_option(MergeSpec, "overwrite"),
    json_out: Json = False,
):
    """Write FULL with the kept experts of a slice (ids from its slice.json) merged back at their positions.

    Only the kept routed experts by default, as AllenAI's merge_pruned_experts_back.py; one tensor at a time,
    every other tensor a byte copy (the untuned slice gives FULL back bit for bit); the slice must have been cut
    from FULL (fingerprint and routers checked). merge.json records both parents."""
    spec = MergeSpec(full, slice, str(out), value(mode), weight, tuple(also), max_shard_size, overwrite)
    with progress_bars({MERGING: "bytes"}, enabled=not json_out) as bar:
        record = workflow.run(spec, bar)
    if json_out:
        print_json(record)
        return
    n = record["tensors_merged"]
    console.print(
        f"wrote {out}: {n['routed']} routed-expert, {n['shared']} shared-expert, {n['router']} router and "
        f"{n['non-moe']} other tensors from {spec.slice} ({record['mode']}"
        + (f", weight {record['weight']:g}" if record["weight"] is not None else "")
        + "); every other tensor is FULL's"
    )
