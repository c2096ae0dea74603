"""`emo-slice demo-data` (the embedded four-domain corpus) and `emo-slice quickstart`."""

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


@app.command(epilog="Examples:\n\n  emo-slice quickstart\n\n  emo-slice quickstart --out ./qs --domain docs --keep 12.5%")
@cli_errors
def quickstart(
    out: Path = typer.Option(Path("quickstart"), help="Folder for the corpus, the model, the slice and results."),
    size: str = typer.Option("small", help="small (a few minutes on 2 cores) or tiny (seconds, for tests)."),
    domain: str = typer.Option("code", help="Domain to slice for: code, docs, unicode or arithmetic."),
    keep: str = typer.Option("25%", help="Experts to keep per layer: a count or a share."),
    overwrite: bool = typer.Option(False, help="Start afresh if OUT already holds files."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands without running them."),
):
    """Pretrain a small EMO model on the embedded corpus, profile it on a 5-shot example of one domain,
    extract a quarter of its experts, and show the slice against the full model. Every step is an
    emo-slice command, echoed before it runs, that you can rerun by hand."""
    import shutil

    from emo_slice import quickstart as qs

    commands = qs.steps(out, size, domain, keep)
    if dry_run:
        for args in commands:
            console.print("emo-slice " + " ".join(args), markup=False, highlight=False)
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            from emo_slice.errors import UsageError

            raise UsageError(f"--out {out} already holds files; pass --overwrite to start afresh or choose another folder")
        shutil.rmtree(out)
    qs.run(commands, echo=lambda line: console.print(f"\n[bold]{line}[/]", highlight=False))
