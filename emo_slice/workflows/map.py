"""`emo-slice map`: what the experts specialise in, for one model or two side by side on the same documents.

Per model (same documents, same settings): router logits of every token (analysis.capture, streamed to
disk), document means and the domain x expert usage map (analysis.represent), token clusters
(analysis.cluster), and the figures (analysis.measures). Then, for all models together: the usage-map and
document-spread PNGs on one shared scale, `summary.json` with every figure, and the explorer
`index.html`. The output folder is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

    from emo_slice.analysis.capture import Documents  # torch-free --help: the heavy modules load when the command runs

from emo_slice.analysis.settings import CaptureSettings, ClusterSettings
from emo_slice.errors import UsageError
from emo_slice.specs import INPUT, OUTPUT, OVERWRITE, Spec, param
from emo_slice.workflows.paths import check_spec_paths

DOCS = (
    "Documents: a .txt file (one document, domain = file name), JSONL (--field, domain from --domain-field or the "
    "file name) or a dataset. Repeat for several sources."
)

MAX_MODELS = 4


@dataclass(frozen=True)
class MapSpec(Spec):
    """What `emo-slice map` does: the models, the documents, the settings, where it writes."""

    models: tuple[str, ...] = param(doc="One checkpoint, or two (e.g. EMO and its standard twin).", flag="MODELS",
                                    role=INPUT)  # fmt: skip
    docs: tuple[str, ...] = param(doc=DOCS, role=INPUT)
    out: str = param(doc="Folder to write: index.html, summary.json, the PNGs and the arrays.", role=OUTPUT)
    labels: tuple[str, ...] | None = param(None, "Names of the models, comma-separated (default: their folder names).")
    field: str = param("text", "Field holding the text in JSONL records / datasets.")
    domain_field: str = param("domain", "JSONL/dataset field naming each document's domain (or source).")
    split: str | None = param(None, "Dataset split (default: test, validation or train).")
    docs_limit: int | None = param(None, "At most this many documents of each domain (the first).")
    capture: CaptureSettings = param(CaptureSettings(), "How the documents run through each model.")
    cluster: ClusterSettings = param(ClusterSettings(), "How the tokens are clustered.")
    html_docs: int = param(200, "Documents the explorer shows token by token (summary.json has them all).")
    overwrite: bool = param(False, OVERWRITE)


def model_labels(models: tuple[str, ...], labels: tuple[str, ...] | None) -> list[str]:
    """Labels for the models: as given, else the last path part that tells them apart (emo/final and
    standard/final -> emo, standard)."""
    if labels is not None:
        if len(labels) != len(models) or len(set(labels)) != len(labels) or not all(labels):
            raise UsageError(f"--labels needs {len(models)} distinct non-empty names, one per model")
        return [str(x) for x in labels]
    parts = [Path(m).expanduser().absolute().parts for m in models]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = [p[-depth] if depth <= len(p) else "" for p in parts]
        if len(set(names)) == len(names) and all(names):
            return names
    return [f"model{i + 1}" for i in range(len(models))]


def _check(spec: MapSpec) -> list[str]:
    from emo_slice.analysis.cluster import require_sklearn  # torch-free --help
    from emo_slice.artifacts import check_output

    if not 1 <= len(spec.models) <= MAX_MODELS:
        raise UsageError(f"give one model, or two (e.g. EMO and its standard twin), at most {MAX_MODELS}")
    if len(set(spec.models)) != len(spec.models):
        raise UsageError("the same model is given twice; give different models")
    if spec.html_docs < 1:
        raise UsageError(f"--html-docs {spec.html_docs} must be at least 1")
    require_sklearn()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("emo-slice map needs matplotlib for its PNGs: pip install 'emo-slice[map]'") from None
    labels = model_labels(spec.models, spec.labels)
    check_spec_paths(spec)  # no output on, in or around an input
    check_output(spec.out, inputs=[*spec.models, *spec.docs], overwrite=spec.overwrite, folder=True)
    return labels


def map_model(model: str, label: str, docs: Documents, folder: Path, spec: MapSpec, progress=None) -> dict:
    """One model: capture its router logits into `folder`, then `analyse` them; returns the model's figures."""
    import numpy as np  # here: --help loads no numpy

    from emo_slice.analysis.capture import capture, token_strings  # torch-free --help

    folder.mkdir()
    bar = None if progress is None else (lambda done, total: progress(f"{label}: router logits", done, total))
    info = capture(model, docs, folder, spec.capture, bar)
    strings = token_strings(model, np.load(folder / "tokens.npy"))
    return analyse(folder, info | {"label": label}, docs, spec.cluster, strings)


def analyse(folder: Path, info: dict, docs: Documents, settings: ClusterSettings, strings: dict[int, str]) -> dict:
    """From a capture folder (router_logits.npy, tokens.npy, doc_offsets.npy; info: columns, routed_top_k):
    representations, clusters and figures. Arrays go to `folder`; returns `info` with the figures."""
    import numpy as np  # here: --help loads no numpy

    from emo_slice.analysis import measures, represent  # torch-free --help
    from emo_slice.analysis.cluster import TokenClusters

    logits = np.load(folder / "router_logits.npy", mmap_mode="r")
    offsets, tokens = np.load(folder / "doc_offsets.npy"), np.load(folder / "tokens.npy")
    cols, k, K, names = info["columns"], info["routed_top_k"], settings.clusters, docs.domain_names
    doc_domain = np.array([names.index(d) for d in docs.domains])
    token_domain = np.repeat(doc_domain, np.diff(offsets))
    doc_probs, doc_topk = represent.document_means(logits, offsets, cols, k)
    np.save(folder / "doc_probs.npy", doc_probs)
    np.save(folder / "doc_topk.npy", doc_topk)
    usage = represent.domain_usage(doc_topk, offsets, doc_domain, len(names))
    tc = TokenClusters(logits, cols, settings)
    labels = tc.assign(logits)
    np.save(folder / "assignments.npy", labels)
    figs = measures.cluster_figures(measures.contingency(labels, token_domain, K, len(names)))
    doc_figs = _document_clusters(doc_probs, cols, doc_domain, len(names), settings)
    spread = measures.document_spread(labels, offsets, K)
    for c, t in zip(figs["clusters"], measures.typical_tokens(labels, tokens, K)):
        c["frequent"] = [[strings[i], n] for i, n in t["frequent"]]
        c["enriched"] = [[strings[i], x] for i, x in t["enriched"]]
    info = info | {"clustering": tc.describe() | {"silhouette_cosine": tc.silhouette()}}
    info["figures"] = {
        **{k: figs[k] for k in ("purity", "source_entropy_bits", "clusters_used")},
        **{k: spread[k] for k in ("mean_clusters_per_doc", "median_clusters_per_doc", "mean_top_cluster_share")},
        "spread_histogram": spread["histogram"],
        **doc_figs,
        **{k: v for k, v in measures.specialisation(usage).items() if k != "dominant_domain"},
    }
    info["clusters"] = figs["clusters"]
    info["documents"] = {k: spread[k] for k in ("clusters_per_doc", "top_cluster", "top_cluster_share")}
    info["usage"] = {"values": np.round(usage, 5).tolist(), "order": represent.order_by_domain(usage, cols)}
    info["projection"] = _projection(tc, token_domain, doc_probs, settings.seed)
    info["_view"] = {"labels": labels, "tokens": tokens, "offsets": offsets, "strings": strings}
    return info


def _document_clusters(doc_probs: np.ndarray, cols, doc_domain: np.ndarray, n_domains: int, settings) -> dict:
    """Documents clustered the same way (mean probabilities; as many clusters as domains): their purity."""

    from emo_slice.analysis import measures  # torch-free --help: the heavy modules load when the command runs
    from emo_slice.analysis.cluster import TokenClusters

    k = n_domains
    if k < 2 or len(doc_probs) <= k:
        return {"document_clusters": None, "document_purity": None}
    s = dataclasses.replace(settings, clusters=k)
    labels = TokenClusters(doc_probs, cols, s, softmax=False).assign(doc_probs)
    table = measures.contingency(labels, doc_domain, k, n_domains)
    return {"document_clusters": k, "document_purity": measures.cluster_figures(table)["purity"]}


def _projection(tc, token_domain: np.ndarray, doc_probs: np.ndarray, seed: int, points: int = 2000) -> dict:
    """The first two PCA components of a sample of tokens (with cluster and domain) and of every document."""
    import numpy as np  # here: --help loads no numpy

    from emo_slice.analysis.cluster import sample  # torch-free --help: the heavy modules load when the command runs

    idx = sample(len(tc.fit_rows), points, seed + 2)
    doc_xy = tc.pca.transform(doc_probs)[:, :2]
    return {
        "tokens": {
            "x": np.round(tc.fit_xy[idx, 0], 4).tolist(),
            "y": np.round(tc.fit_xy[idx, 1], 4).tolist(),
            "cluster": tc.fit_labels[idx].tolist(),
            "domain": token_domain[tc.fit_rows[idx]].tolist(),
        },
        "documents": {"x": np.round(doc_xy[:, 0], 4).tolist(), "y": np.round(doc_xy[:, 1], 4).tolist()},
    }


def run_map(spec: MapSpec, progress: Callable[[str, int, int | None], None] | None = None) -> dict:
    """Map every model on the same documents; write the output folder; return the summary."""
    import numpy as np  # here: --help loads no numpy

    from emo_slice.analysis import explorer, plots  # torch-free --help: the heavy modules load when the command runs
    from emo_slice.analysis.capture import read_documents
    from emo_slice.artifacts import atomic_output_dir, provenance

    labels = _check(spec)
    docs = read_documents(spec.docs, spec.field, spec.domain_field, spec.split, spec.docs_limit)
    with atomic_output_dir(spec.out, overwrite=spec.overwrite) as tmp:
        results = [map_model(m, lab, docs, tmp / lab, spec, progress) for m, lab in zip(spec.models, labels)]
        views = [r.pop("_view") for r in results]
        names = docs.domain_names
        shared = {"domains": names, "doc_domains": [names.index(d) for d in docs.domains]}
        summary = {
            "format": "emo-slice-map",
            "format_version": 1,
            "models": results,
            "documents": docs.inputs | shared,
            "settings": {"capture": asdict(spec.capture), "cluster": asdict(spec.cluster), "html_docs": spec.html_docs},
            "files": {"explorer": "index.html", "usage_map": "usage_map.png", "doc_spread": "doc_spread.png"},
            "provenance": provenance(),
        }
        usage = [dict(label=r["label"], usage=np.array(r["usage"]["values"]), **_layout(r)) for r in results]
        plots.usage_map(tmp / "usage_map.png", usage, names)
        hists = [{"label": r["label"], "histogram": r["figures"]["spread_histogram"]} for r in results]
        plots.spread_histogram(tmp / "doc_spread.png", hists, spec.cluster.clusters)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        explorer.write(tmp / "index.html", summary, views, docs, spec.html_docs)
    return summary


def _layout(r: dict) -> dict:
    return {"columns": r["columns"], "order": r["usage"]["order"]}


def headline(summary: dict) -> list[dict]:
    """One row per model: the figures that say at a glance whether its experts are modular."""
    rows = []
    for m in summary["models"]:
        f = m["figures"]
        rows.append(
            {
                "model": m["label"],
                "tokens": m["tokens"],
                "purity": f["purity"],
                "source_entropy_bits": f["source_entropy_bits"],
                "clusters_per_doc": f["mean_clusters_per_doc"],
                "top_cluster_share": f["mean_top_cluster_share"],
                "expert_specialisation": f["mean_expert_specialisation"],
                "silhouette": m["clustering"]["silhouette_cosine"],
                "document_purity": f["document_purity"],
            }
        )
    return rows
