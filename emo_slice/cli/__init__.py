"""The `emo-slice` command line: a thin layer over the library.

Each command lives in its own module of this package and registers itself on `app`. Library code
raises EmoSliceError; `cli_errors` turns it into one line on stderr and exit code 2 (no traceback).
"""

from __future__ import annotations

import functools
import json
import sys

import typer
from rich.console import Console

from emo_slice.errors import EmoSliceError

app = typer.Typer(
    name="emo-slice",
    help="Run Mixture-of-Experts language models on a fraction of their experts: profile router usage, "
    "extract a sliced checkpoint, evaluate it against the full model, pretrain EMO models.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


def cli_errors(fn):
    """Decorator for command functions: EmoSliceError -> one line on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EmoSliceError as e:
            fail(str(e).replace("[", "\\["))
        except KeyboardInterrupt:
            fail("interrupted; nothing was written", 130)

    return wrapper


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True)):
    if version:
        from emo_slice import __version__

        typer.echo(f"emo-slice {__version__}")
        raise typer.Exit()


# command modules register themselves on import (one line each)
from emo_slice.cli import info as _info  # noqa: E402,F401
from emo_slice.cli import slicing as _slicing  # noqa: E402,F401
from emo_slice.cli import pretrain as _pretrain  # noqa: E402,F401
from emo_slice.cli import eval as _eval  # noqa: E402,F401
from emo_slice.cli import demo as _demo  # noqa: E402,F401


def main() -> None:
    app()
