"""`emo-slice info`: what a checkpoint holds, and what slices of it would weigh."""

from __future__ import annotations

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.display import info_tables
from emo_slice.cli.options import Json, spec_argument
from emo_slice.workflows import info as workflow
from emo_slice.workflows.info import InfoSpec

EPILOG = """Examples:

  emo-slice info ./Emo_1b14b_1T

  emo-slice info allenai/Emo_1b14b_1T --json
"""


@app.command(epilog=EPILOG)
@cli_errors
def info(model: str = spec_argument(InfoSpec, "model"), json_out: Json = False):
    """Architecture, parameters (total and active per token), experts per layer, bytes, slice sizes."""
    data = workflow.run(InfoSpec(model))
    if json_out:
        print_json(data)
        return
    for table in info_tables(data):
        console.print(table)
