"""`emo-slice demo-data`: the embedded four-domain corpus, with a multiple-choice task per domain."""

from __future__ import annotations

from dataclasses import dataclass

from emo_slice.data.democorpus import write_demo_corpus
from emo_slice.specs import OUTPUT, OVERWRITE, Spec, param
from emo_slice.workflows.paths import check_spec_paths


@dataclass(frozen=True)
class DemoDataSpec(Spec):
    """The demo corpus `emo-slice demo-data` writes."""

    out: str = param(doc="Folder to write (must be absent or empty, or pass --overwrite).", role=OUTPUT)
    chars_per_domain: int = param(400_000, "Characters of text per domain.")
    seed: int = param(0, "Random seed of the arithmetic domain and the task distractors.")
    overwrite: bool = param(False, OVERWRITE)


def run(spec: DemoDataSpec) -> dict:
    """Write the corpus; returns per domain: documents, held out, task items, characters."""
    check_spec_paths(spec)
    return write_demo_corpus(spec.out, chars_per_domain=spec.chars_per_domain, seed=spec.seed, overwrite=spec.overwrite)
