"""The merge workflow: a (fine-tuned) slice's experts written back into the full model it was cut from."""

from __future__ import annotations

from dataclasses import dataclass

from emo_slice.workflows.common import Progress, phase


@dataclass(frozen=True)
class MergeRun:
    """`emo-slice merge FULL --slice TUNED --out DIR`."""

    full: str
    """The full model the slice was cut from (checkpoint folder or Hub id)."""
    slice: str
    """The slice, fine-tuned or not: a folder holding the slice.json `extract` wrote."""
    out: str
    """Folder to write: the full model with the slice's experts merged back."""
    mode: str = "replace"
    """replace: the slice's tensors; average: (1 - weight) * full + weight * slice."""
    weight: float | None = None
    """The slice's weight in --mode average (default 0.5)."""
    also: tuple[str, ...] = ()
    """Parts merged besides the kept routed experts: router (their router rows), shared, non-moe."""
    overwrite: bool = False
    max_shard_size: str = "5GB"


def run(spec: MergeRun, progress: Progress | None = None) -> dict:
    """Merge (emo_slice.slicing.merge); returns the record written as merge.json."""
    from emo_slice.slicing.merge import MergeSpec, merge  # inside: importing the workflows loads no torch

    bar = phase(progress, "merge")
    return merge(
        spec.full,
        spec.slice,
        spec.out,
        MergeSpec(spec.mode, spec.weight, spec.also),
        overwrite=spec.overwrite,
        max_shard_size=spec.max_shard_size,
        progress=bar,
    )
