"""`emo-slice demo-data`: the embedded four-domain corpus."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from emo_slice.cli import app, cli_errors, console, print_json


@app.command("demo-data", epilog="Example:\n\n  emo-slice demo-data ./demo-data")
@cli_errors
def demo_data(
    out: Path = typer.Argument(..., help="Folder to write train.jsonl, valid.jsonl and tasks/*.jsonl to."),
    chars_per_domain: int = typer.Option(400_000, help="Characters of text per domain."),
    seed: int = typer.Option(0, help="Seed for the arithmetic domain and the task distractors."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it already holds files."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
):
    """Write the embedded four-domain corpus (code, docs, unicode, arithmetic), made from this Python
    installation's standard library, with a multiple-choice task per domain. Works offline."""
    from emo_slice.democorpus import write_demo_corpus

    summary = write_demo_corpus(out, chars_per_domain=chars_per_domain, seed=seed, overwrite=overwrite)
    if json_out:
        print_json({"path": str(out), "domains": summary})
        return
    t = Table(title=f"demo corpus in {out}")
    for col in ("domain", "documents", "held out", "task items", "characters"):
        t.add_column(col, justify="right" if col != "domain" else "left")
    for d, s in summary.items():
        t.add_row(d, str(s["documents"]), str(s["valid"]), str(s["task_items"]), f"{s['chars']:,}")
    console.print(t)
