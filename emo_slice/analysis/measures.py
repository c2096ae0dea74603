"""The figures that say whether experts are modular, from token clusters and the usage map.

- purity of a cluster: the share of its tokens that come from its most common domain; the map's purity is
  the token-weighted mean (= sum over clusters of the top domain's tokens / all tokens);
- source entropy of a cluster: entropy (bits) of its tokens' domain distribution; the map's is the mean
  over non-empty clusters (EMO's `avg_source_entropy`);
- spread of a document: how many clusters its tokens fall into, and the share of its tokens in its most
  common cluster (EMO: one cluster per document; a standard MoE: scattered);
- typical tokens of a cluster: its most frequent tokens, and the most enriched (share in the cluster over
  share in all tokens, for tokens seen at least `min_count` times in it);
- specialisation of an expert (usage map): the share of its per-domain usage that its dominant domain
  takes (1 / domains: used alike by all; 1: by one domain only).
"""

from __future__ import annotations

import numpy as np


def contingency(labels_N: np.ndarray, domain_N: np.ndarray, k: int, n_domains: int) -> np.ndarray:
    """Tokens of each (cluster, domain), int64 [k, domains]."""
    return np.bincount(labels_N.astype(np.int64) * n_domains + domain_N, minlength=k * n_domains).reshape(k, n_domains)


def entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0


def cluster_figures(table_KD: np.ndarray) -> dict:
    """Per-cluster size, purity, top domain and source entropy, and the map's purity and mean entropy."""
    sizes = table_KD.sum(1)
    used = sizes > 0
    per = [
        {
            "size": int(sizes[c]),
            "purity": float(table_KD[c].max() / sizes[c]) if used[c] else None,
            "top_domain": int(table_KD[c].argmax()) if used[c] else None,
            "entropy_bits": entropy_bits(table_KD[c]) if used[c] else None,
            "domain_tokens": table_KD[c].tolist(),
        }
        for c in range(len(sizes))
    ]
    return {
        "purity": float(table_KD.max(1).sum() / max(sizes.sum(), 1)),
        "source_entropy_bits": float(np.mean([p["entropy_bits"] for p in per if p["size"]])),
        "clusters_used": int(used.sum()),
        "clusters": per,
    }


def document_spread(labels_N: np.ndarray, offsets: np.ndarray, k: int) -> dict:
    """Per document: clusters its tokens fall into, and its top cluster's share of its tokens."""
    n_clusters, top_share, top = [], [], []
    for a, b in zip(offsets[:-1], offsets[1:]):
        counts = np.bincount(labels_N[a:b], minlength=k)
        n_clusters.append(int((counts > 0).sum()))
        top.append(int(counts.argmax()))
        top_share.append(float(counts.max() / max(b - a, 1)))
    n = np.array(n_clusters)
    return {
        "mean_clusters_per_doc": float(n.mean()),
        "median_clusters_per_doc": float(np.median(n)),
        "mean_top_cluster_share": float(np.mean(top_share)),
        "histogram": np.bincount(n, minlength=k + 1)[1:].tolist(),  # documents spread over 1, 2, ... k clusters
        "clusters_per_doc": n_clusters,
        "top_cluster": top,
        "top_cluster_share": top_share,
    }


def typical_tokens(labels_N: np.ndarray, tokens_N: np.ndarray, k: int, top: int = 12, min_count: int = 3) -> list:
    """Per cluster: [(token id, count)] most frequent, and [(token id, enrichment)] most enriched."""
    ids, inv = np.unique(tokens_N, return_inverse=True)
    all_counts = np.bincount(inv, minlength=len(ids))
    n = len(tokens_N)
    out = []
    for c in range(k):
        m = labels_N == c
        size = int(m.sum())
        if not size:
            out.append({"frequent": [], "enriched": []})
            continue
        cnt = np.bincount(inv[m], minlength=len(ids))
        freq = np.argsort(-cnt, kind="stable")[:top]
        lift = np.where(cnt >= min_count, (cnt / size) / (all_counts / n), 0.0)
        enr = [i for i in np.argsort(-lift, kind="stable")[:top] if lift[i] > 0]
        out.append(
            {
                "frequent": [(int(ids[i]), int(cnt[i])) for i in freq if cnt[i] > 0],
                "enriched": [(int(ids[i]), round(float(lift[i]), 3)) for i in enr],
            }
        )
    return out


def specialisation(usage_DC: np.ndarray) -> dict:
    """Each expert column's dominant domain and the share of its per-domain usage that domain takes; the mean."""
    total = usage_DC.sum(0)
    share = np.where(total > 0, usage_DC.max(0) / np.maximum(total, 1e-12), 0.0)
    used = total > 0
    return {
        "mean_expert_specialisation": float(share[used].mean()) if used.any() else 0.0,
        "uniform": 1.0 / usage_DC.shape[0],
        "dominant_domain": usage_DC.argmax(0).tolist(),
        "expert_specialisation": [round(float(s), 4) for s in share],
    }
