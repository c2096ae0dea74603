"""The expert map's analysis core on constructed router logits with planted structure.

Two planted worlds, 3 domains x 6 documents x 30 tokens, 2 layers x 12 routed experts:
- "modular" (EMO-like): every token of a domain-d document prefers experts 4d..4d+3 in every layer, so the
  tokens cluster by domain: purity 1, one cluster per document, entropy 0, every expert specialised;
- "by token" (standard-like): a token's preferred experts depend only on its position mod 3 (its "kind"),
  the same in every domain, so clusters are token kinds: purity 1/3, three clusters per document, source
  entropy log2(3).
"""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from emo_slice.analysis import measures, represent  # noqa: E402
from emo_slice.analysis.cluster import ClusterSettings, TokenClusters, sample  # noqa: E402

DOMAINS, DOCS, TOKENS, R, L = 3, 6, 30, 12, 2
COLS = [0, R, 2 * R]


def planted(kind: str, seed: int = 0):
    """(logits float16 [N, C], doc offsets, domain of each doc, domain of each token)."""
    rng = np.random.default_rng(seed)
    n_docs = DOMAINS * DOCS
    offsets = np.arange(n_docs + 1) * TOKENS
    doc_domain = np.repeat(np.arange(DOMAINS), DOCS)
    token_domain = np.repeat(doc_domain, TOKENS)
    group = token_domain if kind == "modular" else np.tile(np.arange(TOKENS) % 3, n_docs)
    # noise: each row's experts of a layer get 0, 0.02, ..., 0.22 in a random order (no ties, even in float16)
    z = np.concatenate([np.argsort(rng.random((n_docs * TOKENS, R)), 1) * 0.02 for _ in range(L)], 1)
    for l in range(L):
        for g in range(3):
            cols = [l * R + 4 * g + j for j in range(4)]
            z[np.ix_(group == g, cols)] += 4.0
    return z.astype(np.float16), offsets, doc_domain, token_domain


def run(kind: str, seed: int = 0, clusters: int = 3):
    logits, offsets, doc_domain, token_domain = planted(kind)
    tc = TokenClusters(logits, COLS, ClusterSettings(clusters=clusters, seed=seed, n_init=2))
    labels = tc.assign(logits)
    table = measures.contingency(labels, token_domain, clusters, DOMAINS)
    return tc, labels, measures.cluster_figures(table), measures.document_spread(labels, offsets, clusters)


def test_modular_world_gives_pure_clusters_and_one_cluster_per_document():
    _, labels, figs, spread = run("modular")
    assert figs["purity"] == 1.0
    assert figs["source_entropy_bits"] == 0.0
    assert spread["mean_clusters_per_doc"] == 1.0
    assert spread["histogram"] == [DOMAINS * DOCS, 0, 0]
    assert spread["mean_top_cluster_share"] == 1.0
    # each domain is exactly one cluster
    assert sorted(c["top_domain"] for c in figs["clusters"]) == [0, 1, 2]


def test_token_kind_world_gives_mixed_clusters_and_spread_documents():
    _, labels, figs, spread = run("by-token")
    assert figs["purity"] == pytest.approx(1 / 3)
    assert figs["source_entropy_bits"] == pytest.approx(np.log2(3))
    assert spread["mean_clusters_per_doc"] == 3.0
    assert spread["histogram"] == [0, 0, DOMAINS * DOCS]
    assert spread["mean_top_cluster_share"] == pytest.approx(1 / 3)


def test_clustering_is_deterministic_for_a_seed():
    a = run("by-token", seed=5, clusters=5)[1]
    b = run("by-token", seed=5, clusters=5)[1]
    np.testing.assert_array_equal(a, b)
    tc = run("modular", seed=5)[0]
    assert tc.components <= L * R and 0.95 <= tc.explained <= 1.0


def test_sample_is_seeded_and_complete_when_small():
    np.testing.assert_array_equal(sample(10, 20, 0), np.arange(10))
    a, b = sample(1000, 50, 3), sample(1000, 50, 3)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 50 and (np.diff(a) > 0).all()


def test_probabilities_and_topk_match_the_routing():
    import torch

    from emo_slice.model.routing import route

    logits, *_ = planted("by-token")
    p = represent.probs(logits, COLS)
    f = represent.topk(logits, COLS, [2, 2])
    for l in range(L):
        z = torch.from_numpy(logits[:, l * R : (l + 1) * R].astype(np.float32))
        r = route(torch.cat([z, torch.zeros(len(z), 1)], 1), n_shared=1, top_k=3)  # + one shared expert
        np.testing.assert_allclose(p[:, l * R : (l + 1) * R], r.probs_NR.numpy(), rtol=1e-5, atol=1e-7)
        want = np.zeros((len(z), R), dtype=np.uint8)
        np.put_along_axis(want, r.experts_NK[:, :2].numpy(), 1, axis=1)
        np.testing.assert_array_equal(f[:, l * R : (l + 1) * R], want)


def test_document_means_and_domain_usage_equal_direct_sums(monkeypatch):
    logits, offsets, doc_domain, _ = planted("modular")
    monkeypatch.setattr(represent.chunks, "__defaults__", (7,))  # chunks that cut documents in the middle
    p_mean, f_mean = represent.document_means(logits, offsets, COLS, [2, 2])
    p, f = represent.probs(logits, COLS), represent.topk(logits, COLS, [2, 2])
    for d in range(len(offsets) - 1):
        a, b = offsets[d], offsets[d + 1]
        np.testing.assert_allclose(p_mean[d], p[a:b].mean(0), rtol=1e-5)
        np.testing.assert_allclose(f_mean[d], f[a:b].mean(0), rtol=1e-6)
    usage = represent.domain_usage(f_mean, offsets, doc_domain, DOMAINS)
    for d in range(DOMAINS):
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in np.flatnonzero(doc_domain == d)])
        np.testing.assert_allclose(usage[d], f[rows].mean(0))
    # domain d's tokens use its four experts in every layer: those come first for d, in domain order
    order = represent.order_by_domain(usage, COLS)
    for l in range(L):
        assert [e // 4 for e in order[l]] == sorted(e // 4 for e in range(R))
    spec = measures.specialisation(usage)
    assert spec["dominant_domain"][:12] == [e // 4 for e in range(R)]
    assert spec["uniform"] == pytest.approx(1 / 3)


def test_typical_tokens_count_and_enrichment():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    tokens = np.array([5, 5, 5, 7, 7, 7, 7, 9])
    t = measures.typical_tokens(labels, tokens, 2, top=3, min_count=1)
    assert t[0]["frequent"] == [(5, 3), (7, 1)]
    assert t[1]["frequent"] == [(7, 3), (9, 1)]
    # token 5: 3/4 of cluster 0 vs 3/8 overall = 2.0; token 9: 1/4 vs 1/8 = 2.0; token 7 in cluster 1: 3/4 / 4/8
    assert dict(t[0]["enriched"])[5] == 2.0
    assert dict(t[1]["enriched"]) == {9: 2.0, 7: 1.5}


def test_documents_cluster_by_domain_in_the_modular_world():
    from emo_slice.workflows.map import _document_clusters

    logits, offsets, doc_domain, _ = planted("modular")
    doc_probs, _ = represent.document_means(logits, offsets, COLS, [2, 2])
    figs = _document_clusters(doc_probs, COLS, doc_domain, DOMAINS, ClusterSettings(seed=0, n_init=2))
    assert figs == {"document_clusters": DOMAINS, "document_purity": 1.0}
