"""The map's settings, torch- and numpy-free (the command line builds its options from their field docs)."""

from __future__ import annotations

from dataclasses import dataclass

from emo_slice.specs import DEVICE, DTYPE, LAYERWISE, param


@dataclass(frozen=True)
class CaptureSettings:
    """How the documents run through a model."""

    max_tokens_per_doc: int = param(256, "Each document's first tokens (EMO's clustering used 100 to 250).")
    max_batch_tokens: int = param(2048, "Tokens (padded) per forward pass.")
    max_tokens_in_memory: int = param(262_144, "Tokens whose activations are held at once (longer input: chunks).")
    dtype: str | None = param(None, DTYPE)
    device: str = param("auto", DEVICE)
    layerwise: bool = param(False, LAYERWISE)


@dataclass(frozen=True)
class ClusterSettings:
    """How tokens are clustered."""

    clusters: int = param(16, "Token clusters (k-means K).")
    seed: int = param(0, "Random seed of the token sample and k-means.")
    variance: float = param(0.95, "Share of the variance the PCA keeps before clustering.")
    fit_tokens: int = param(100_000, "Tokens PCA and k-means are fitted on (a seeded sample; all when fewer).")
    n_init: int = param(4, "k-means restarts (the best inertia is kept).")
    silhouette_tokens: int = param(4_000, "Tokens the silhouette is computed on (it is quadratic).")
