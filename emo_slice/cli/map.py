"""`emo-slice map`: what the experts specialise in, one model or EMO and its standard twin side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from emo_slice.cli import app, cli_errors, console, err_console, print_json
from emo_slice.cli.options import Device, DeviceComputeDType, Field, Json, Layerwise, Overwrite, Split, opt, seed_option
from emo_slice.cli.options import value as v

Models = Annotated[List[str], typer.Argument(help="One checkpoint, or two (e.g. EMO and its standard twin).")]
Docs = opt(
    "--docs",
    List[str],
    "Documents: a .txt file (one document, domain = file name), JSONL (--field, domain from --domain-field or the "
    "file name) or a dataset. Repeat for several sources.",
)
DomainField = opt("--domain-field", str, "JSONL/dataset field naming each document's domain (or source).")
MaxTokensPerDoc = opt("--max-tokens-per-doc", int, "Each document's first tokens.", show_default=True)
DocsLimit = opt("--docs-limit", Optional[int], "At most this many documents of each domain (the first).")
Clusters = opt("--clusters", int, "Token clusters (k-means K).", show_default=True)
Variance = opt("--variance", float, "Share of the variance the PCA keeps before clustering.", show_default=True)
FitTokens = opt("--fit-tokens", int, "Tokens PCA and k-means are fitted on (a seeded sample).", show_default=True)
Labels = opt("--labels", Optional[str], "Names of the models, comma-separated (default: their folder names).")
HtmlDocs = opt("--html-docs", int, "Documents the explorer shows token by token.", show_default=True)
Seed = Annotated[int, seed_option("the token sample and k-means")]

EPILOG = """Examples:

  emo-slice map ./emo/final ./standard/final --docs data/valid.jsonl --out map

  emo-slice map ./Emo_1b14b_1T --docs web.jsonl --domain-field source --clusters 64 --out emo-map
"""


@app.command("map", epilog=EPILOG)
@cli_errors
def map_(
    models: Models,
    docs: Docs,
    out: Annotated[Path, typer.Option("--out", help="Folder to write: index.html, summary.json, PNGs, arrays.")],
    labels: Labels = None,
    field: Field = "text",
    domain_field: DomainField = "domain",
    split: Split = None,
    max_tokens_per_doc: MaxTokensPerDoc = 256,
    docs_limit: DocsLimit = None,
    clusters: Clusters = 16,
    seed: Seed = 0,
    variance: Variance = 0.95,
    fit_tokens: FitTokens = 100_000,
    html_docs: HtmlDocs = 200,
    dtype: DeviceComputeDType = None,
    device: Device = "auto",
    layerwise: Layerwise = False,
    overwrite: Overwrite = False,
    json_out: Json = False,
):
    """Map what the experts specialise in: cluster every token's router probabilities (mean-centre, PCA, L2,
    k-means) and measure cluster purity, document spread, typical tokens and the domain x expert usage map;
    two models side by side on the same documents. Writes an explorer (index.html, opens offline), PNGs and
    summary.json."""
    from emo_slice.analysis.capture import CaptureSettings
    from emo_slice.analysis.cluster import ClusterSettings
    from emo_slice.cli.display import progress_bars
    from emo_slice.workflows.map import MapSpec, headline, run_map  # here, not above: --help loads no torch

    names = tuple(x.strip() for x in labels.split(",")) if labels else None
    cap = CaptureSettings(max_tokens_per_doc=max_tokens_per_doc, dtype=v(dtype), device=device, layerwise=layerwise)
    clu = ClusterSettings(clusters=clusters, seed=seed, variance=variance, fit_tokens=fit_tokens)
    spec = MapSpec(
        tuple(models), tuple(docs), out, names, field, domain_field, split, docs_limit, cap, clu, html_docs, overwrite
    )
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
