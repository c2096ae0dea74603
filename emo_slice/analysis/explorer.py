"""The self-contained HTML explorer of an expert map: `index.html`, openable with no network.

The page is `explorer.html` (plain JavaScript, SVG and canvas; no library, so nothing to fetch or vendor)
with the map's data inlined as JSON in a `<script type="application/json">` element. Views, per model (a
tab per model): Clusters (size, purity, domains, typical tokens, the documents with most of their tokens
in it), Documents (a document's tokens coloured by cluster, every model side by side), Tokens (how each
frequent token spreads over clusters), Usage map (domain x expert, experts ordered by dominant domain,
one colour scale for all models), 2-D map (the first two PCA components of tokens or documents).
Document text is put on the page with textContent only (never parsed as HTML): a hostile document shows
as text.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from emo_slice.analysis.capture import Documents

PLACEHOLDER = "__EMO_SLICE_MAP_DATA__"


def pick_documents(doc_domains: list[int], n: int) -> list[int]:
    """At most n document indices, taken in turn from each domain (in document order)."""
    by_domain: dict[int, list[int]] = {}
    for i, d in enumerate(doc_domains):
        by_domain.setdefault(d, []).append(i)
    out, queues = [], [list(reversed(v)) for v in by_domain.values()]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    return sorted(out)


def token_view(labels: np.ndarray, tokens: np.ndarray, strings: dict, k: int, top: int = 150) -> list:
    """The `top` most frequent tokens: [text, count, clusters used, entropy bits, top cluster, its share]."""
    ids, inv, counts = np.unique(tokens, return_inverse=True, return_counts=True)
    rows = []
    for j in np.argsort(-counts, kind="stable")[:top]:
        c = np.bincount(labels[inv == j], minlength=k)
        p = c[c > 0] / c.sum()
        ent = float(-(p * np.log2(p)).sum()) + 0.0
        rows.append([strings[int(ids[j])], int(counts[j]), int((c > 0).sum()), round(ent, 3), int(c.argmax())])
        rows[-1].append(round(float(c.max() / c.sum()), 3))
    return rows


def cluster_documents(labels: np.ndarray, offsets: np.ndarray, k: int, top: int = 8) -> list[list[list]]:
    """Per cluster: [[document, tokens of it in the cluster, share of the document]] for its top documents."""
    n_docs = len(offsets) - 1
    doc_N = np.repeat(np.arange(n_docs), np.diff(offsets))
    table = np.bincount(labels.astype(np.int64) * n_docs + doc_N, minlength=k * n_docs).reshape(k, n_docs)
    lens = np.maximum(np.diff(offsets), 1)
    out = []
    for c in range(k):
        best = [d for d in np.argsort(-table[c], kind="stable")[:top] if table[c, d] > 0]
        out.append([[int(d), int(table[c, d]), round(float(table[c, d] / lens[d]), 3)] for d in best])
    return out


def page_data(summary: dict, views: list[dict], docs: Documents, html_docs: int) -> dict:
    """What the page shows: the summary's figures, and the picked documents' tokens under every model."""
    shown = pick_documents(summary["documents"]["doc_domains"], html_docs)
    k = summary["settings"]["cluster"]["clusters"]
    models = []
    for m, v in zip(summary["models"], views):
        keep = ("label", "figures", "clustering", "clusters", "usage", "columns", "projection", "tokens", "run")
        entry = {key: m[key] for key in keep}
        entry["model_path"] = m["model"]["path"]
        entry["documents"] = m["documents"]
        entry["cluster_docs"] = cluster_documents(v["labels"], v["offsets"], k)
        entry["token_view"] = token_view(v["labels"], v["tokens"], v["strings"], k)
        models.append(entry)
    shown_docs = []
    for d in shown:
        per_model = []
        for v in views:
            a, b = int(v["offsets"][d]), int(v["offsets"][d + 1])
            per_model.append({"t": [v["strings"][int(i)] for i in v["tokens"][a:b]], "c": v["labels"][a:b].tolist()})
        shown_docs.append({"i": d, "domain": summary["documents"]["doc_domains"][d], "models": per_model})
    vmax = max(float(np.max(m["usage"]["values"])) for m in summary["models"])
    return {
        "domains": summary["documents"]["domains"],
        "doc_domains": summary["documents"]["doc_domains"],
        "clusters": k,
        "documents_total": len(docs.texts),
        "inputs": {key: summary["documents"][key] for key in ("sources", "documents", "documents_per_domain")},
        "settings": summary["settings"],
        "provenance": summary["provenance"],
        "usage_vmax": vmax,
        "models": models,
        "docs": shown_docs,
    }


def inline_json(obj) -> str:
    """JSON safe inside a <script> element: <, > and & escaped (no `</script>` can end it early)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(data: dict) -> str:
    template = resources.files("emo_slice.analysis").joinpath("explorer.html").read_text(encoding="utf-8")
    return template.replace(PLACEHOLDER, inline_json(data))


def write(path: Path, summary: dict, views: list[dict], docs: Documents, html_docs: int) -> Path:
    path.write_text(render(page_data(summary, views, docs, html_docs)), encoding="utf-8")
    return path
