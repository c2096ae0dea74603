"""How specialised are a model's experts? Overlap of the expert sets chosen for different domains.

Input: one profile per domain (emo-slice profile JSON, scores per layer and routed expert). For a K,
each domain keeps its top K-S routed experts per layer (as extract would; pass K-S); `overlap` gives, per layer,
the mean Jaccard index |A & B| / |A | B| over all pairs of domains. Low overlap = domain experts.
`usage_heatmap` draws expert usage (mean router probability) by domain for every layer (matplotlib,
the optional `plot` extra).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from emo_slice.artifacts import atomic_output_file
from emo_slice.errors import UsageError
from emo_slice.slicing.select import rank_experts


def kept_sets(profile: dict, routed_kept: int, method: str = "mean-prob") -> list[set[int]]:
    """The `routed_kept` best routed experts of every layer (what extract keeps besides the shared)."""
    sets = []
    for layer in profile["layers"]:
        scores = layer["scores"][method]
        sets.append(set(rank_experts(scores, len(scores), method)[:routed_kept]))
    return sets


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def overlap(profiles: dict[str, dict], routed_kept: int, method: str = "mean-prob") -> dict:
    """Jaccard of the domains' kept routed experts: {"per_layer": [mean over domain pairs], "mean",
    "pairs": {"a|b": [per layer]}}."""
    if len(profiles) < 2:
        raise UsageError("overlap needs profiles of at least two domains")
    sets = {d: kept_sets(p, routed_kept, method) for d, p in profiles.items()}
    L = len(next(iter(sets.values())))
    pairs = {
        f"{a}|{b}": [jaccard(sets[a][l], sets[b][l]) for l in range(L)]
        for a, b in itertools.combinations(sorted(sets), 2)
    }
    per_layer = [sum(v[l] for v in pairs.values()) / len(pairs) for l in range(L)]
    return {
        "routed_kept": routed_kept,
        "method": method,
        "per_layer": per_layer,
        "mean": sum(per_layer) / L,
        "pairs": pairs,
    }


def usage_heatmap(models: dict[str, dict[str, dict]], out: str | os.PathLike, method: str = "mean-prob") -> Path | None:
    """PNG: for each model (rows) and layer (columns) a domains x experts heatmap of router usage.

    models: {model name: {domain: profile}}. Returns the path, or None when matplotlib is missing.
    Written atomically; an existing `out` is replaced."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(models)
    domains = sorted(next(iter(models.values())))
    L = len(next(iter(models[names[0]].values()))["layers"])
    fig, axes = plt.subplots(len(names), L, figsize=(3.2 * L, 1.2 + 0.45 * len(domains) * len(names)), squeeze=False)
    for i, name in enumerate(names):
        for l in range(L):
            rows = []
            for d in domains:
                s = models[name][d]["layers"][l]["scores"][method]
                total = sum(s) or 1.0
                rows.append([v / total for v in s])
            ax = axes[i][l]
            ax.imshow(rows, aspect="auto", cmap="viridis", interpolation="nearest")
            ax.set_yticks(range(len(domains)), domains if l == 0 else [""] * len(domains), fontsize=8)
            ax.set_xticks([])
            ax.set_title(f"{name} layer {l}", fontsize=9)
            if i == len(names) - 1:
                ax.set_xlabel("routed expert", fontsize=8)
    fig.suptitle(f"Expert usage by domain ({method}, each row sums to 1)", fontsize=10)
    fig.tight_layout()
    try:
        with atomic_output_file(out) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return Path(out).expanduser()
