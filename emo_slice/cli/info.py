"""`emo-slice info`: what a checkpoint holds, and what slices of it would weigh."""

from __future__ import annotations

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.options import Json, ModelArg

EPILOG = """Examples:

  emo-slice info ./Emo_1b14b_1T

  emo-slice info allenai/Emo_1b14b_1T --json
"""


@app.command(epilog=EPILOG)
@cli_errors
def info(model: ModelArg, json_out: Json = False):
    """Architecture, parameters (total and active per token), experts per layer, bytes, slice sizes."""
    from emo_slice.io.checkpoint import Checkpoint
    from emo_slice.workflows.info import checkpoint_info

    data = checkpoint_info(Checkpoint(model))
    if json_out:
        print_json(data)
        return
    from emo_slice.cli.display import info_tables

    for table in info_tables(data):
        console.print(table)
