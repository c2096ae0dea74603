"""`emo-slice demo-data`: the embedded four-domain corpus, with a multiple-choice task per domain."""

from __future__ import annotations

from typing import Annotated

import typer

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.options import FolderArg, Json, Overwrite, seed_option

EPILOG = """Example:

  emo-slice demo-data ./demo-data
"""


@app.command("demo-data", epilog=EPILOG)
@cli_errors
def demo_data(
    out: FolderArg,
    chars_per_domain: Annotated[
        int, typer.Option("--chars-per-domain", help="Characters of text per domain.")
    ] = 400_000,
    seed: Annotated[int, seed_option("the arithmetic domain and the task distractors")] = 0,
    overwrite: Overwrite = False,
    json_out: Json = False,
):
    """Write the embedded four-domain demo corpus and its multiple-choice tasks (offline).

    Domains: code, docs, unicode, arithmetic, made from this Python installation's standard library.
    Writes train.jsonl, valid.jsonl, valid/DOMAIN.jsonl and tasks/DOMAIN.jsonl (multiple choice)."""
    from rich.table import Table

    from emo_slice.data.democorpus import write_demo_corpus

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
