"""`emo-slice quickstart`: the whole workflow on the embedded corpus, as commands you can rerun by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emo_slice.cli import app, cli_errors, console, fail
from emo_slice.cli.options import Domain, Overwrite, QuickstartSize, out_option, value

EPILOG = """Examples:

  emo-slice quickstart

  emo-slice quickstart --out ./qs --domain docs --keep 12.5%,25%

  emo-slice quickstart --dry-run > quickstart.sh
"""


@app.command(epilog=EPILOG)
@cli_errors
def quickstart(
    out: Annotated[Path, out_option("Folder for the corpus, the model, the slice and results.")] = Path("quickstart"),
    size: Annotated[
        QuickstartSize, typer.Option("--size", help="small (a few minutes on 2 cores) or tiny (seconds, for tests).")
    ] = QuickstartSize.small,
    domain: Annotated[Domain, typer.Option("--domain", help="Domain to slice for.")] = Domain.code,
    keep: Annotated[
        str, typer.Option("--keep", help="Experts kept per layer at each step of the sweep: counts or shares.")
    ] = "12.5%,25%,50%",
    overwrite: Overwrite = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the commands, one per line, without running them.")
    ] = False,
):
    """The whole workflow in minutes on the embedded corpus: pretrain EMO and a standard MoE, then sweep both.

    Pretrain a small EMO model and a standard MoE trained the same way (at the same time), profile each on
    a 5-shot example of one domain, and sweep both: slices of 12.5%, 25% and 50% of the experts (and random
    experts as a control) against the full model, in bits per byte on the domain's held-out documents.
    Every step is an emo-slice command, echoed before it runs, that you can rerun by hand."""
    from rich.text import Text

    from emo_slice.artifacts import output_lock
    from emo_slice.workflows import quickstart as qs

    commands = qs.steps(out, value(size), value(domain), keep)
    qs.check_keep(value(size), keep)
    if dry_run:
        for line in qs.shell_lines(commands):
            typer.echo(line)
        return
    with output_lock(out):  # a second quickstart into the same folder refuses
        qs.prepare_out(out, overwrite)
        qs.mark_out(out)
        try:
            qs.run(commands, echo=lambda line: console.print(Text("\n" + line, style="bold"), soft_wrap=True))
        except KeyboardInterrupt:  # the steps done so far are there: say so, not "nothing was written"
            fail(f"interrupted; {out} holds the steps done so far; rerun with --overwrite to start afresh", 130)
