"""`emo-slice quickstart`: the whole workflow on the embedded corpus, as commands you can rerun by hand."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from emo_slice.cli import app, cli_errors, console, fail
from emo_slice.cli.options import Domain, QuickstartSize, opt, spec_option, value
from emo_slice.workflows import quickstart as workflow
from emo_slice.workflows.quickstart import QuickstartSpec

EPILOG = """Examples:

  emo-slice quickstart

  emo-slice quickstart --out ./qs --domain docs --keep 12.5%,25%

  emo-slice quickstart --dry-run > quickstart.sh
"""
Q = QuickstartSpec
DryRun = opt("--dry-run", bool, "Print the commands, one per line, without running them.")


@app.command(epilog=EPILOG)
@cli_errors
def quickstart(
    out: Path = spec_option(Q, "out", show_default=True),
    size: QuickstartSize = spec_option(Q, "size", enum=QuickstartSize, show_default=True),
    domain: Domain = spec_option(Q, "domain", enum=Domain, show_default=True),
    keep: str = spec_option(Q, "keep", show_default=True),
    overwrite: bool = spec_option(Q, "overwrite"),
    dry_run: DryRun = False,
):
    """The whole workflow in minutes on the embedded corpus: pretrain EMO and a standard MoE, then sweep both.

    Pretrain a small EMO model and a standard MoE trained the same way (at the same time), profile each on
    a 5-shot example of one domain, and sweep both: slices of 12.5%, 25% and 50% of the experts (and random
    experts as a control) against the full model, in bits per byte on the domain's held-out documents.
    Every step is an emo-slice command, echoed before it runs, that you can rerun by hand."""
    spec = Q(out=str(out), size=value(size), domain=value(domain), keep=keep, overwrite=overwrite)
    if dry_run:
        for line in workflow.shell_lines(workflow.commands(spec)):
            typer.echo(line)
        return
    try:
        workflow.run_spec(spec, echo=lambda line: console.print(Text("\n" + line, style="bold"), soft_wrap=True))
    except KeyboardInterrupt:  # the steps done so far are there: say so, not "nothing was written"
        fail(f"interrupted; {out} holds the steps done so far; rerun with --overwrite to start afresh", 130)
