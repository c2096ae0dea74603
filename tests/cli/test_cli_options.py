"""The command line's shape: shared options defined once, enums shown in --help and equal to the library's
lists, --version, and a --help that imports no torch."""

import subprocess
import sys

import pytest
import typer.main
from conftest import invoke, run_cli

from emo_slice import __version__
from emo_slice.cli import COMMANDS, app
from emo_slice.cli.export import ExportFormat, OutType
from emo_slice.cli.options import (
    Domain,
    DType,
    LMMode,
    MergeMode,
    Method,
    Preset,
    QuickstartSize,
    Router,
    TaskFormat,
    TrainPart,
)

GROUP = typer.main.get_command(app)


def _values(enum) -> list[str]:
    return [m.value for m in enum]


def _param(command: str, flag: str):
    matches = [p for p in GROUP.commands[command].params if flag in p.opts]
    return matches[0] if matches else None


def test_enums_are_the_library_lists():
    from emo_slice.data.democorpus import DOMAINS
    from emo_slice.data.tasks import FORMATS
    from emo_slice.io.checkpoint import DTYPES
    from emo_slice.model.presets import PRESETS
    from emo_slice.slicing.select import METHODS
    from emo_slice.train.config import TRAIN_PRESETS
    from emo_slice.workflows.quickstart import SIZES

    assert _values(Method) == list(METHODS)
    assert _values(TaskFormat) == list(FORMATS)
    assert _values(DType) == list(DTYPES)
    assert _values(Preset) == list(PRESETS) == list(TRAIN_PRESETS)
    assert _values(QuickstartSize) == sorted(SIZES, key=_values(QuickstartSize).index) and len(SIZES) == 2
    assert _values(Domain) == list(DOMAINS)
    assert _values(Router) == ["emo", "standard"] and _values(LMMode) == ["rows", "packed"]
    from emo_slice.slicing.merge import MODES

    assert _values(MergeMode) == list(MODES)
    from emo_slice.train.freezing import PARTS

    assert _values(TrainPart) == list(PARTS)
    from emo_slice.export import FORMATS as EXPORT_FORMATS
    from emo_slice.export import OUTTYPES

    assert _values(ExportFormat) == list(EXPORT_FORMATS) and _values(OutType) == list(OUTTYPES)


@pytest.mark.parametrize(
    "command,flag,enum",
    [
        ("profile", "--method", Method),
        ("extract", "--method", Method),
        ("eval", "--task-format", TaskFormat),
        ("eval", "--lm-mode", LMMode),
        ("eval", "--dtype", DType),
        ("profile", "--dtype", DType),
        ("extract", "--save-dtype", DType),
        ("init", "--save-dtype", DType),
        ("init", "--preset", Preset),
        ("pretrain", "--preset", Preset),
        ("pretrain", "--router", Router),
        ("pretrain", "--dtype", DType),
        ("quickstart", "--size", QuickstartSize),
        ("quickstart", "--domain", Domain),
        ("export", "--format", ExportFormat),
        ("export", "--outtype", OutType),
        ("merge", "--mode", MergeMode),
        ("finetune", "--train", TrainPart),
    ],
)
def test_enum_choices_shown_in_help(command, flag, enum):
    proc = invoke(command, "--help", env_extra={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip("│ *").startswith(flag + " "))
    assert "<" + "|".join(_values(enum)) + ">" in line, line


def test_shared_options_mean_the_same_everywhere():
    """--json, --overwrite, --dtype (compute), --save-dtype (stored) and --out: one definition each."""
    helps: dict[str, set] = {}
    for name, cmd in GROUP.commands.items():
        for p in cmd.params:
            for flag in ("--json", "--overwrite", "--dtype", "--save-dtype", "--seed", "--max-shard-size"):
                if flag in p.opts:
                    helps.setdefault(flag, set()).add((name, p.help.split("(")[0].split(":")[0]))
    assert {n for n, _ in helps["--overwrite"]} == {
        "init",
        "profile",
        "extract",
        "export",
        "eval",
        "demo-data",
        "pretrain",
        "quickstart",
        "sweep",
        "map",
        "stability",
        "merge",
        "finetune",
    }
    assert len({h for _, h in helps["--overwrite"]}) == 1
    assert {n for n, _ in helps["--dtype"]} == {
        "profile",
        "extract",
        "eval",
        "generate",
        "pretrain",
        "sweep",
        "map",
        "stability",
        "finetune",
    }
    assert {h for _, h in helps["--dtype"]} == {"Compute dtype"}
    assert {n for n, _ in helps["--save-dtype"]} == {"extract", "init"}
    assert {h for _, h in helps["--save-dtype"]} == {"Stored dtype of the written weights "}
    assert {h[:15] for _, h in helps["--seed"]} == {"Random seed of "}
    assert len({h for n, h in helps["--json"] if n not in ("extract", "pretrain")}) == 1
    assert _param("info", "--out") is None and _param("profile", "--out") is not None


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"emo-slice {__version__}\n" and not proc.stderr
    assert invoke("--version").stdout == f"emo-slice {__version__}\n"


def test_help_imports_no_torch():
    """`--help` of every command stays fast: no torch, datasets or tokenizers behind it."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from emo_slice.cli import COMMANDS, app\n"
        "names = ['demo-data' if c == 'demo' else c for c in COMMANDS]\n"
        "for args in [['--help'], ['--version']] + [[c, '--help'] for c in names]:\n"
        "    r = CliRunner().invoke(app, args)\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "heavy = [m for m in ('torch', 'datasets', 'tokenizers', 'numpy', 'sklearn', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(COMMANDS) == len(GROUP.commands)
