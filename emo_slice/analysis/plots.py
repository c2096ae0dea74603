"""PNG figures of the expert map (matplotlib, the Agg backend): for READMEs and papers.

usage_map: domain x expert usage, one panel per model stacked, every layer's experts side by side and
ordered by their dominant domain, ONE colour scale shared by all panels and a colour bar, so two models
compare at a glance. spread_histogram: how many clusters each document's tokens fall into, per model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def usage_map(path: Path, models: list[dict], domains: list[str], title: str = "") -> Path:
    """models: [{"label", "usage" [domains, C], "columns", "order" (per layer)}]. Written to path."""
    plt = _pyplot()
    vmax = max(float(np.max(m["usage"])) for m in models) or 1.0
    C = max(m["columns"][-1] for m in models)
    fig, axes = plt.subplots(
        len(models),
        1,
        figsize=(max(7.5, min(4 + C / 12, 18)), 1.4 + (0.45 * len(domains) + 0.6) * len(models)),
        squeeze=False,
    )
    im = None
    for ax, m in zip(axes[:, 0], models):
        cols, order = m["columns"], m["order"]
        perm = [cols[l] + e for l in range(len(order)) for e in order[l]]
        im = ax.imshow(m["usage"][:, perm], aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax, interpolation="none")
        for c in cols[1:-1]:
            ax.axvline(c - 0.5, color="white", lw=1.2)
        ax.set_yticks(range(len(domains)), domains)
        mids = [(a + b - 1) / 2 for a, b in zip(cols[:-1], cols[1:]) if b > a]
        ax.set_xticks(mids, [f"layer {l}" for l, (a, b) in enumerate(zip(cols[:-1], cols[1:])) if b > a])
        ax.tick_params(axis="x", length=0)
        ax.set_title(m["label"], loc="left", fontsize=11)
    fig.suptitle(
        title
        or "Share of each domain's tokens routed to each expert\n(each layer's experts ordered by dominant domain)"
    )
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    cax = fig.add_axes((0.885, 0.12, 0.018, 0.7))
    fig.colorbar(im, cax=cax, label="share of the domain's tokens")
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def spread_histogram(path: Path, models: list[dict], clusters: int) -> Path:
    """models: [{"label", "histogram" (documents over 1..K clusters)}]. Bars: share of documents."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(models)
    x = np.arange(1, clusters + 1)
    for i, m in enumerate(models):
        h = np.asarray(m["histogram"], dtype=float)
        ax.bar(x + (i - (len(models) - 1) / 2) * width, h / max(h.sum(), 1), width, label=m["label"])
    ax.set_xlabel("clusters a document's tokens fall into")
    ax.set_ylabel("share of documents")
    ax.set_xticks(x if clusters <= 32 else x[:: max(1, clusters // 16)])
    ax.legend()
    ax.set_title("Document spread over token clusters (1 = every token of the document in one cluster)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
