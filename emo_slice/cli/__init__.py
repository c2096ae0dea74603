"""The `emo-slice` command line: a thin layer over the library.

Each command lives in its own module of this package (about 30 lines over one library call) and
registers itself on `app`; options shared by several commands are defined once in `options.py`.
Errors are one line on stderr and exit code 2, never a traceback or a box: library errors
(EmoSliceError) through `cli_errors`, command-line mistakes (an unknown flag, a missing argument, a
bad choice) through the group's `main`.

Importing this package (and so `emo-slice --help`) loads neither torch nor datasets/tokenizers: each
command imports the library inside its body.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import sys

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from emo_slice import __version__
from emo_slice.errors import EmoSliceError
from emo_slice.locking import os_error_message

try:  # typer >= 0.2x carries its own copy of click
    from typer._click import exceptions as _click_errors
    from typer._click.globals import get_current_context as _click_context
except ImportError:  # pragma: no cover - older typer on click
    from click import exceptions as _click_errors
    from click import get_current_context as _click_context

PROG = "emo-slice"
console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def error_line(message: str) -> None:
    """Print `error: MESSAGE` as one line on stderr."""
    err_console.print(f"[bold red]error:[/] {escape(' '.join(str(message).split()))}", markup=True)


def warning_line(message: str) -> None:
    """Print `warning: MESSAGE` as one line on stderr."""
    err_console.print(f"[yellow]warning:[/] {escape(' '.join(str(message).split()))}", markup=True)


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit."""
    error_line(message)
    raise typer.Exit(code)


# a parameter named in a library message, in backquotes: `max_new_tokens` or `max_new_tokens=0`
_PARAM = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=([^`]*))?`")


def flag_names(message: str, flags: dict[str, str]) -> str:
    """A library message with each parameter it names (`name` or `name=value`, in backquotes) written as the
    command's flag: `max_new_tokens=0` -> --max-new-tokens 0 (flags: parameter name -> flag; a name the
    command has no flag for loses its backquotes). The one place where parameter names become flags."""

    def swap(m: re.Match) -> str:
        name, val = m.group(1), m.group(2)
        shown = flags.get(name, name)
        if val is None:
            return shown
        return f"{shown} {val}" if name in flags else f"{name}={val}"

    return _PARAM.sub(swap, message)


def _command_flags() -> dict[str, str]:
    """The running command's parameters (named as its spec's fields) -> their flags."""
    ctx = _click_context(silent=True)
    if ctx is None:
        return {}
    return {p.name: max(p.opts, key=len) for p in ctx.command.params if p.opts and p.opts[0].startswith("--")}


def cli_errors(fn):
    """Decorator for command functions: EmoSliceError -> one line on stderr (parameters named as the command's
    flags), exit 2; any other OSError (an unreadable source file, ...) -> `error: PATH: strerror; ...`, exit 2;
    Ctrl-C -> exit 130 (the atomic writers have removed their temporaries, so nothing was written)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EmoSliceError as e:
            fail(flag_names(str(e), _command_flags()))
        except OSError as e:
            fail(os_error_message(e))
        except KeyboardInterrupt:
            fail("interrupted; nothing was written", 130)

    return wrapper


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _usage_line(e) -> str:
    msg = e.format_message().replace("Value error, ", "")  # typer's pydantic-made messages
    ctx = getattr(e, "ctx", None)
    if isinstance(e, _click_errors.UsageError) and ctx is not None:
        msg += f" (see '{ctx.command_path} --help')"
    return msg


class OneLineErrors(TyperGroup):
    """A TyperGroup whose command-line errors are one `error: ...` line on stderr (exit 2), not a rich box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name or PROG, complete_var, standalone_mode=False, **extra)
        except _click_errors.ClickException as e:
            if not standalone_mode:
                raise
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `emo-slice`: the help
                e.show()
            else:
                error_line(_usage_line(e))
            sys.exit(e.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            error_line("interrupted")
            sys.exit(130)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name=PROG,
    cls=OneLineErrors,
    help="Run Mixture-of-Experts language models on a fraction of their experts: profile router usage, "
    "extract a sliced checkpoint, evaluate it against the full model, pretrain EMO models.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True, callback=_version
    ),
):
    pass


# each command module registers its command on `app` when imported; `--help` lists them in this order
COMMANDS = (
    "info",
    "init",
    "profile",
    "extract",
    "export",
    "eval",
    "tasks",
    "sweep",
    "generate",
    "demo",
    "pretrain",
    "finetune",
    "merge",
    "quickstart",
    "map",
    "stability",
)
for _module in COMMANDS:
    importlib.import_module(f"emo_slice.cli.{_module}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`emo-slice`, `python -m emo_slice`, `torchrun -m emo_slice`)."""
    app(args=argv, prog_name=PROG)
