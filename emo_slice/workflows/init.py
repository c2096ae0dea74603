"""`emo-slice init`: a random checkpoint (EMO, or another family) from a preset, to try every command offline."""

from __future__ import annotations

from dataclasses import dataclass

from emo_slice.model.presets import family_config
from emo_slice.specs import OUTPUT, OVERWRITE, Spec, param
from emo_slice.workflows.paths import check_spec_paths

SHARD_SIZE = "Largest weight file, e.g. 500MB, 5GB."


@dataclass(frozen=True)
class InitSpec(Spec):
    """The random checkpoint `emo-slice init` writes."""

    out: str = param(doc="Folder to write (must be absent or empty, or pass --overwrite).", role=OUTPUT)
    preset: str = param("tiny", "Architecture preset.")
    family: str = param(
        "emo",
        "Model family: the preset's shape as an EMO, OLMoE, Qwen2-MoE, Qwen3-MoE or Mixtral checkpoint (the non-EMO "
        "ones load in stock transformers).",
    )
    seed: int = param(0, "Random seed of the random weights.")
    std: float = param(0.1, "Standard deviation of the random weights.")
    save_dtype: str = param("float32", "Stored dtype of the written weights (default: float32).")
    max_shard_size: str = param("5GB", SHARD_SIZE)
    overwrite: bool = param(False, OVERWRITE)


def run(spec: InitSpec) -> str:
    """Write the checkpoint; returns its folder."""
    from emo_slice.io.build import random_checkpoint  # torch-free --help: torch loads when the command runs

    check_spec_paths(spec)
    path = random_checkpoint(
        spec.out,
        family_config(spec.family, spec.preset),
        seed=spec.seed,
        std=spec.std,
        dtype=spec.save_dtype,
        max_shard_size=spec.max_shard_size,
        overwrite=spec.overwrite,
    )
    return str(path)
