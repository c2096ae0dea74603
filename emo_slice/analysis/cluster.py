"""Clustering router representations (EMO's `probs` / `mean_pca_l2` / `spherical_kmeans`), with scikit-learn.

Each token's router probabilities (every layer's, side by side) are mean-centred and projected by PCA onto
the fewest components that explain `variance` of the variance, L2-normalised, and clustered by k-means
(scikit-learn's KMeans on unit vectors: spherical k-means). PCA and k-means are fitted on a seeded sample
of at most `fit_tokens` tokens (every token when there are fewer); every token is then assigned, a chunk at
a time, to its nearest centre. The same seed gives the same clusters.
"""

from __future__ import annotations

import numpy as np

from emo_slice.analysis.represent import chunks, probs
from emo_slice.analysis.settings import ClusterSettings
from emo_slice.errors import UsageError


def require_sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UsageError("emo-slice map needs scikit-learn and matplotlib: pip install 'emo-slice[map]'") from None


def check_settings(s: ClusterSettings, n_tokens: int) -> None:
    if s.clusters < 2:
        raise UsageError(f"--clusters {s.clusters} must be at least 2")
    if s.clusters > n_tokens:
        raise UsageError(f"--clusters {s.clusters} is more than the {n_tokens} tokens mapped; give fewer clusters")
    if not 0 < s.variance <= 1:
        raise UsageError(f"--variance {s.variance} must be a share in (0, 1]")
    if s.fit_tokens < s.clusters:
        raise UsageError(f"--fit-tokens {s.fit_tokens} must be at least --clusters {s.clusters}")


def sample(n: int, m: int, seed: int) -> np.ndarray:
    """Sorted indices of min(n, m) of range(n), drawn without replacement with `seed` (all when m >= n)."""
    if m >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, m, replace=False))


class TokenClusters:
    """The fitted PCA (cut at the variance share) and k-means; `assign` maps logits rows to clusters."""

    def __init__(self, logits, cols: list[int], settings: ClusterSettings, softmax: bool = True):
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA

        check_settings(settings, logits.shape[0])
        self.cols, self.settings, self.softmax = cols, settings, softmax
        self.fit_rows = sample(logits.shape[0], settings.fit_tokens, settings.seed)
        x = self.represent(np.asarray(logits[self.fit_rows]))
        solver = "covariance_eigh" if x.shape[0] > 4 * x.shape[1] else "full"
        full = PCA(svd_solver=solver, random_state=settings.seed).fit(x)
        cum = np.cumsum(full.explained_variance_ratio_)
        self.components = int(min(np.searchsorted(cum, settings.variance - 1e-9) + 1, len(cum)))
        self.explained = float(cum[self.components - 1])
        # refitted with that many components (as EMO does), so transforming a token costs C x components
        n = max(self.components, 2) if min(x.shape) >= 2 else self.components
        self.pca = PCA(n_components=n, svd_solver=solver, random_state=settings.seed).fit(x)
        self.fit_xy = self.pca.transform(x)[:, :2]  # the 2-D map: the first two components
        z = self.reduce(x, pca_only=False)
        self.kmeans = KMeans(settings.clusters, n_init=settings.n_init, random_state=settings.seed).fit(z)
        self.fit_z, self.fit_labels = z, self.kmeans.labels_

    def represent(self, rows: np.ndarray) -> np.ndarray:
        """Rows -> what is clustered: router probabilities (softmax of logits), or the rows as they are."""
        return probs(rows, self.cols) if self.softmax else np.asarray(rows, dtype=np.float32)

    def reduce(self, x_NC: np.ndarray, pca_only: bool = False) -> np.ndarray:
        """Probabilities -> the clustered representation (PCA cut at the variance share, then L2)."""
        from sklearn.preprocessing import normalize

        z = self.pca.transform(x_NC)[:, : self.components]
        return z if pca_only else normalize(z)

    def assign(self, logits) -> np.ndarray:
        """The cluster of every token (int32 [N]), a chunk at a time."""
        out = np.empty(logits.shape[0], dtype=np.int32)
        for a, b in chunks(logits.shape[0]):
            out[a:b] = self.kmeans.predict(self.reduce(self.represent(np.asarray(logits[a:b]))))
        return out

    def silhouette(self) -> float | None:
        """Mean silhouette (cosine) of a seeded sample of the fitted tokens; None with one cluster found."""
        from sklearn.metrics import silhouette_score

        idx = sample(len(self.fit_labels), self.settings.silhouette_tokens, self.settings.seed + 1)
        labels = self.fit_labels[idx]
        if len(np.unique(labels)) < 2:
            return None
        return float(silhouette_score(self.fit_z[idx], labels, metric="cosine"))

    def describe(self) -> dict:
        s = self.settings
        return {
            "representation": "probs",
            "preprocess": "mean-centre, PCA, L2",
            "method": "k-means on unit vectors (spherical)",
            "clusters": s.clusters,
            "seed": s.seed,
            "variance": s.variance,
            "pca_components": self.components,
            "pca_explained": round(self.explained, 4),
            "fit_tokens": int(len(self.fit_rows)),
            "n_init": s.n_init,
        }
