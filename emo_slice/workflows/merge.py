"""`emo-slice merge`: a (fine-tuned) slice's experts written back into the full model it was cut from."""

from __future__ import annotations

from dataclasses import dataclass

from emo_slice.specs import INPUT, MODEL, OUTPUT, OVERWRITE, Spec, param
from emo_slice.workflows.common import Progress, phase
from emo_slice.workflows.paths import check_spec_paths

MERGING = "merging"


@dataclass(frozen=True)
class MergeSpec(Spec):
    """What `emo-slice merge` writes, and how."""

    full: str = param(doc="The full model the slice was cut from. " + MODEL, flag="FULL", role=INPUT)
    slice: str = param(
        doc="The slice, fine-tuned or not: a folder holding the slice.json `extract` wrote (`finetune` keeps it).",
        role=INPUT,
    )
    out: str = param(
        doc="Folder to write: FULL with the slice's experts merged back; outside both models.", role=OUTPUT
    )
    mode: str = param("replace", "replace: the slice's tensors; average: (1 - weight) * FULL + weight * slice.")
    weight: float | None = param(
        None, "The slice's weight with --mode average, from 0 (FULL) to 1 (the slice, as replace); default 0.5."
    )
    also: tuple[str, ...] = param(
        (),
        "Merge these too (repeatable or comma-separated): router (the kept experts' router rows), shared (the "
        "shared experts), non-moe (every other tensor the slice holds with FULL's shape). Default: only the kept "
        "routed experts, as EMO's merge.",
    )
    max_shard_size: str = param("5GB", "Largest weight file, e.g. 500MB, 5GB.")
    overwrite: bool = param(False, OVERWRITE)


def run(spec: MergeSpec, progress: Progress | None = None) -> dict:
    """Merge (emo_slice.slicing.merge) after the guard; returns the record written as merge.json."""
    from emo_slice.slicing.merge import MergeRecipe, merge  # torch-free --help: torch loads when the command runs

    check_spec_paths(spec)
    parts = tuple(p.strip() for a in spec.also for p in a.split(",") if p.strip())
    return merge(
        spec.full,
        spec.slice,
        spec.out,
        MergeRecipe(spec.mode, spec.weight, parts),
        overwrite=spec.overwrite,
        max_shard_size=spec.max_shard_size,
        progress=phase(progress, MERGING),
    )
