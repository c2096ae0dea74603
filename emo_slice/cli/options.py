"""Options of the emo-slice commands: built from the workflow specs' fields, and the fixed choices as enums.

As in the Hugging Face `hf` CLI and litgpt: an option's flag, help and default come from ONE place, the
field of the typed spec the command fills (`emo_slice/specs.py`, `emo_slice/workflows/`):
`spec_option(SliceSpec, "keep")` is `typer.Option(default, "--keep", help=<the field's doc>)`. Options
several commands share (--device, --dtype, --layerwise, --pool, --batch-size, --overwrite, ...) have one
sentence each in `emo_slice.specs`, so a flag means one thing everywhere (tests/cli/test_vocabulary.py
walks every command). Fixed choices are `str` enums: `--help` lists them and a wrong value is refused
before any work. Commands pass `.value` (plain strings) to the library.

A command's parameters are named as the spec's fields, so a library error naming a parameter
("max_new_tokens=0 must be at least 1") is shown with the command's flag (`emo_slice.cli.flag_names`).

No torch import here (the lists below are checked against the library's in tests/cli/test_cli_options.py).
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from emo_slice import artifacts, specs
from emo_slice.cli import warning_line
from emo_slice.errors import UsageError


class Rescale(str, Enum):
    """When a slice's routed experts are rescaled (emo_slice.slicing.rescale.MODES)."""

    auto = "auto"
    on = "on"
    off = "off"


class Method(str, Enum):
    """How experts are ranked (emo_slice.slicing.select.METHODS)."""

    mean_prob = "mean-prob"
    frequency = "frequency"
    reap = "reap"
    easy_ep = "easy-ep"
    random = "random"


class Router(str, Enum):
    """Pretraining router (TrainConfig.router)."""

    emo = "emo"
    standard = "standard"


class TaskFormat(str, Enum):
    """Shape of a multiple-choice task (emo_slice.data.tasks.FORMATS)."""

    auto = "auto"
    plain = "plain"
    arc = "arc"
    hellaswag = "hellaswag"


class DType(str, Enum):
    """A floating-point dtype (emo_slice.io.checkpoint.DTYPES)."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class LMMode(str, Enum):
    """How --lm documents are laid out in rows."""

    rows = "rows"
    packed = "packed"


class Encoding(str, Enum):
    """How multiple-choice context and choice become tokens (emo_slice.eval.encoding)."""

    lm_eval = "lm-eval"
    separate = "separate"


class Preset(str, Enum):
    """Architecture (and training) presets (emo_slice.model.presets.PRESETS)."""

    tiny = "tiny"
    small = "small"
    emo_1b14b = "emo-1b14b"


class Family(str, Enum):
    """Model families (emo_slice.model.families.FAMILIES) a random checkpoint can have."""

    emo = "emo"
    olmoe = "olmoe"
    qwen2_moe = "qwen2_moe"
    qwen3_moe = "qwen3_moe"
    mixtral = "mixtral"


class MergeMode(str, Enum):
    """How `merge` makes the merged tensors (emo_slice.slicing.merge.MODES)."""

    replace = "replace"
    average = "average"


class TrainPart(str, Enum):
    """What fine-tuning trains (emo_slice.train.freezing.PARTS)."""

    routed = "routed"
    routed_shared = "routed+shared"
    routed_shared_router = "routed+shared+router"
    all = "all"


class QuickstartSize(str, Enum):
    """Quickstart sizes (emo_slice.workflows.quickstart.SIZES)."""

    tiny = "tiny"
    small = "small"


class Domain(str, Enum):
    """Domains of the embedded demo corpus (emo_slice.data.democorpus.DOMAINS)."""

    code = "code"
    docs = "docs"
    unicode = "unicode"
    arithmetic = "arithmetic"


# One meaning per flag: every command's help of a flag several commands take starts with these words
# (tests/cli/test_vocabulary.py walks every command; docs/cli.md lists them).
VOCABULARY = {
    "--rescale": "Weight the kept routed experts as the full model does",
    "--against": "A second model",
    "--batch-size": "Rows per batch",
    "--device": "Where the model runs",
    "--dtype": "Compute dtype",
    "--examples": "Calibration input",
    "--field": "Field holding the text",
    "--greedy": "The EMO paper's layer-by-layer selection",
    "--json": "Print machine-readable JSON on stdout",
    "--keep": "Experts kept per layer",
    "--layerwise": "Stream the layers",
    "--limit": "Score only the first N items",
    "--lm": "Text scored by",
    "--max-length": "Longest row in tokens",
    "--max-memory": "Memory the model may keep resident",
    "--max-new-tokens": "New tokens generated at most",
    "--max-shard-size": "Largest weight file",
    "--method": "How experts are ranked",
    "--metric": "Metric(s)",
    "--overwrite": "Replace an existing output that emo-slice wrote",
    "--pool": "Route each document inside its own pool",
    "--preset": "Architecture",
    "--profile": "Profile file from `emo-slice profile`",
    "--save-dtype": "Stored dtype of the written weights",
    "--seed": "Random seed of",
    "--shots": "Demonstrations",
    "--split": "Dataset split",
    "--task": "Task",
    # shared by pretrain and finetune
    "--steps": "Optimizer steps",
    "--lr": "Peak learning rate",
    "--eval-every": "Evaluate every N steps",
    "--save-every": "Checkpoint every N steps",
    "--stop-after": "Stop (with a checkpoint) after this step",
    "--fsdp": "Under torchrun: shard with FSDP2",
    "--resume": "Continue the run in --out from its latest checkpoint",
    "--set": "key=value for any",
}
# commands that run a model: each takes the device options (generate streams no layers: its KV cache needs the
# whole model, as eval's generative tasks do)
MODEL_OPTIONS = {
    "profile": ("--device", "--dtype", "--layerwise", "--pool", "--max-batch-tokens", "--max-memory"),
    "extract": ("--device", "--dtype", "--layerwise", "--pool", "--batch-size", "--max-memory"),
    "eval": ("--device", "--dtype", "--layerwise", "--pool", "--batch-size", "--max-memory"),
    "sweep": ("--device", "--dtype", "--layerwise", "--pool", "--batch-size", "--max-memory"),
    "generate": ("--device", "--dtype", "--pool", "--batch-size", "--max-memory"),
}


def value(choice):
    """An enum member's value (None and plain values pass through; a list of members: their values)."""
    if isinstance(choice, (list, tuple)):
        return tuple(value(c) for c in choice)
    return choice.value if isinstance(choice, Enum) else choice


def spec_option(spec, name: str, *, enum: type[Enum] | None = None, flag: str | None = None, **kw):
    """typer.Option for a spec field: its default (as the enum member with `enum`), its flag (or `flag`) and its
    doc as the help. Shown defaults: only where the command asks (show_default=True). `default=None` makes a
    required field optional on the command line (the command then says what is missing)."""
    default = kw.pop("default", specs.default(spec, name))
    if default is dataclasses.MISSING:
        default = ...
    elif isinstance(default, (tuple, list)):
        default = [enum(d) for d in default] if enum else list(default)
    elif enum is not None and default is not None:
        default = enum(default)
    kw.setdefault("show_default", False)
    return typer.Option(default, flag or specs.flag(spec, name), help=specs.doc(spec, name), **kw)


def spec_argument(spec, name: str, **kw):
    """typer.Argument for a (required) spec field, its doc as the help."""
    return typer.Argument(..., help=specs.doc(spec, name), show_default=False, **kw)


def opt(flag: str, typ, help: str, **kw):
    """`Annotated[typ, typer.Option(flag, help=help)]` for an option only the command line has (how results are
    shown: --json, --per-subtask, --dry-run); no default shown unless show_default=True."""
    return Annotated[typ, typer.Option(flag, help=help, show_default=kw.pop("show_default", False), **kw)]


def deprecated(flag: str, typ=bool):
    """A hidden option that keeps an old spelling working for one release (the command warns when it is used)."""
    return Annotated[typ, typer.Option(flag, hidden=True, show_default=False)]


def positional_out():
    """The output folder as a positional argument, as init and demo-data took it before --out (deprecated)."""
    return typer.Argument(None, hidden=True, show_default=False, metavar="[OUT]")


def out_or_positional(out: Path | None, old_out: Path | None) -> Path:
    """--out, or the output given the older way (a positional argument: deprecated, with a warning line)."""
    if old_out is not None and out is not None:
        raise UsageError(f"the output is given twice ({old_out} and --out {out}); give only --out")
    if old_out is not None:
        warning_line(f"the output as a positional argument is deprecated; write --out {old_out}")
        return old_out
    if out is None:
        raise UsageError("--out is required: the folder to write")
    return out


Json = opt("--json", bool, "Print machine-readable JSON on stdout instead of tables.")


def parse_size(text: str) -> int:
    """'6GB', '6.5GB', '512MiB' or a byte count -> bytes (GB = 10^9, GiB = 2^30): emo_slice.artifacts.parse_size."""
    try:
        return artifacts.parse_size(text, "--max-memory")
    except UsageError as e:
        raise typer.BadParameter(str(e).removeprefix("--max-memory ")) from None


def max_memory_option(spec):
    """`--max-memory SIZE` of a spec's max_memory field (every command that runs a model)."""
    return spec_option(spec, "max_memory", parser=parse_size, metavar="SIZE")
