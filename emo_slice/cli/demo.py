"""`emo-slice demo-data`: the embedded four-domain corpus, with a multiple-choice task per domain."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.table import Table

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.options import Json, out_or_positional, positional_out, spec_option
from emo_slice.workflows import demo_data as workflow
from emo_slice.workflows.demo_data import DemoDataSpec

EPILOG = """Example:

  emo-slice demo-data --out ./demo-data
"""


@app.command("demo-data", epilog=EPILOG)
@cli_errors
def demo_data(
    old_out: Optional[Path] = positional_out(),
    out: Optional[Path] = spec_option(DemoDataSpec, "out", default=None),
    chars_per_domain: int = spec_option(DemoDataSpec, "chars_per_domain", show_default=True),
    seed: int = spec_option(DemoDataSpec, "seed", show_default=True),
    overwrite: bool = spec_option(DemoDataSpec, "overwrite"),
    json_out: Json = False,
):
    """Write the embedded four-domain demo corpus and its multiple-choice tasks (offline).

    Domains: code, docs, unicode, arithmetic, made from this Python installation's standard library.
    Writes train.jsonl, valid.jsonl, valid/DOMAIN.jsonl and tasks/DOMAIN.jsonl (multiple choice)."""
    out = out_or_positional(out, old_out)
    spec = DemoDataSpec(out=str(out), chars_per_domain=chars_per_domain, seed=seed, overwrite=overwrite)
    summary = workflow.run(spec)
    if json_out:
        print_json({"path": str(out), "domains": summary})
        return
    t = Table(title=f"demo corpus in {out}")
    for col in ("domain", "documents", "held out", "task items", "characters"):
        t.add_column(col, justify="right" if col != "domain" else "left")
    for d, s in summary.items():
        t.add_row(d, str(s["documents"]), str(s["valid"]), str(s["task_items"]), f"{s['chars']:,}")
    console.print(t)
