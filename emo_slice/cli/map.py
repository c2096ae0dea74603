"""`emo-slice map`: what the experts specialise in, one model or EMO and its standard twin side by side."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from emo_slice.analysis.settings import CaptureSettings as C
from emo_slice.analysis.settings import ClusterSettings as K
from emo_slice.cli import app, cli_errors, console, err_console, print_json
from emo_slice.cli.options import DType, Json, spec_option, value
from emo_slice.specs import doc
from emo_slice.workflows.map import MapSpec as M

EPILOG = """Examples:

  emo-slice map ./emo/final ./standard/final --docs data/valid.jsonl --out map

  emo-slice map ./Emo_1b14b_1T --docs web.jsonl --domain-field source --clusters 64 --out emo-map
"""


@app.command("map", epilog=EPILOG)
@cli_errors
def map_(
    models: List[str] = typer.Argument(..., help=doc(M, "models"), show_default=False),
    docs: List[str] = spec_option(M, "docs"),
    out: Path = spec_option(M, "out"),
    labels: Optional[str] = spec_option(M, "labels"),
    field: str = spec_option(M, "field", show_default=True),
    domain_field: str = spec_option(M, "domain_field", show_default=True),
    split: Optional[str] = spec_option(M, "split"),
    docs_limit: Optional[int] = spec_option(M, "docs_limit"),
    max_tokens_per_doc: int = spec_option(C, "max_tokens_per_doc", show_default=True),
    clusters: int = spec_option(K, "clusters", show_default=True),
    seed: int = spec_option(K, "seed", show_default=True),
    variance: float = spec_option(K, "variance", show_default=True),
    fit_tokens: int = spec_option(K, "fit_tokens", show_default=True),
    html_docs: int = spec_option(M, "html_docs", show_default=True),
    dtype: Optional[DType] = spec_option(C, "dtype"),
    device: str = spec_option(C, "device", show_default=True),
    layerwise: bool = spec_option(C, "layerwise"),
    overwrite: bool = spec_option(M, "overwrite"),
    json_out: Json = False,
):
    """Map what the experts specialise in: cluster every token's router probabilities (mean-centre, PCA, L2,
    k-means) and measure cluster purity, document spread, typical tokens and the domain x expert usage map;
    two models side by side on the same documents. Writes an explorer (index.html, opens offline), PNGs and
    summary.json."""
    from emo_slice.workflows.map import headline, run_map  # torch-free --help

    names = tuple(x.strip() for x in labels.split(",")) if labels else None
    cap = C(max_tokens_per_doc=max_tokens_per_doc, dtype=value(dtype), device=device, layerwise=layerwise)
    clu = K(clusters=clusters, seed=seed, variance=variance, fit_tokens=fit_tokens)
    spec = M(tuple(models), tuple(docs), str(out), names, field, domain_field, split, docs_limit, cap, clu, html_docs,
             overwrite)  # fmt: skip
    from emo_slice.cli.display import progress_bars

    with progress_bars({}, enabled=not json_out) as bar:
        summary = run_map(spec, progress=bar)
    rows = headline(summary)
    if json_out:
        print_json({"out": str(out), "models": rows})
        return
    _print(rows, out)


FIGURES = (  # (key, name, what says "modular")
    ("purity", "cluster purity", "near 1"),
    ("source_entropy_bits", "source entropy (bits)", "near 0"),
    ("clusters_per_doc", "clusters per document", "near 1"),
    ("top_cluster_share", "top cluster share", "near 1"),
    ("expert_specialisation", "expert specialisation", "near 1"),
    ("document_purity", "document purity", "near 1"),
    ("silhouette", "silhouette (cosine)", "higher"),
)


def _print(rows: list[dict], out: Path) -> None:
    """One row per figure, one column per model (fits any terminal)."""
    from rich.table import Table

    t = Table("", *[r["model"] for r in rows], "modular experts")
    t.add_row("tokens", *[f"{r['tokens']:,}" for r in rows], "")
    for key, name, want in FIGURES:
        t.add_row(name, *["–" if r[key] is None else f"{r[key]:.3f}" for r in rows], want)
    console.print(t)
    err_console.print(f"wrote {out}/index.html (open it in a browser), summary.json, usage_map.png, doc_spread.png")
