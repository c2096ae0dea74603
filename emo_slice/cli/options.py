"""Options shared by the emo-slice commands, each defined once, and the fixed choices as enums.

As in the Hugging Face `hf` CLI and litgpt: a flag that several commands take (`--out`, `--overwrite`,
`--json`, `--dtype`, `--save-dtype`, `--seed`, the calibration options) has one definition here, so its
name, type and meaning are the same everywhere. Fixed choices are `str` enums: `--help` lists them and
a wrong value is refused before any work. Commands pass `.value` (plain strings) to the library.

Vocabulary, the same in every command:
  --dtype       compute dtype (what the model runs in); default: the checkpoint's stored dtype
  --save-dtype  stored dtype (what a written checkpoint holds)

No torch import here (the lists below are checked against the library's in tests/cli/test_cli_options.py).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


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


def value(choice):
    """An enum member's value (None and plain values pass through)."""
    return choice.value if isinstance(choice, Enum) else choice


def opt(flag: str, typ, help: str, **kw):
    """`Annotated[typ, typer.Option(flag, help=help)]` for an option one command declares (no default shown unless
    show_default=True)."""
    return Annotated[typ, typer.Option(flag, help=help, show_default=kw.pop("show_default", False), **kw)]


# ---- outputs -----------------------------------------------------------------------------------------


def out_option(what: str) -> typer.models.OptionInfo:
    """`--out`: where a command writes (what: a file or folder, per command)."""
    return typer.Option("--out", help=what, show_default=False)


Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an existing output that emo-slice wrote (a folder with its .emo-slice marker, an empty "
        "folder, or a results/profile file); without it an existing output is refused before any work. "
        "Other files and folders are never deleted.",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
MaxShardSize = Annotated[str, typer.Option("--max-shard-size", help="Largest weight file, e.g. 500MB, 5GB.")]


# ---- dtypes ------------------------------------------------------------------------------------------


def dtype_option(default: str = "the checkpoint's stored dtype") -> typer.models.OptionInfo:
    """`--dtype`: the COMPUTE dtype, in every command."""
    return typer.Option(
        "--dtype", help=f"Compute dtype: what the model runs in (default: {default}).", show_default=False
    )


def save_dtype_option(default: str) -> typer.models.OptionInfo:
    """`--save-dtype`: the STORED dtype of a checkpoint a command writes."""
    return typer.Option(
        "--save-dtype", help=f"Stored dtype of the written weights (default: {default}).", show_default=False
    )


ComputeDType = Annotated[Optional[DType], dtype_option()]
DeviceComputeDType = Annotated[Optional[DType], dtype_option("bfloat16 on a CUDA GPU, float32 on the CPU and MPS")]


# ---- devices (profile, eval, generate) ---------------------------------------------------------------

Device = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where the model runs: auto (a GPU when there is one), cpu, cuda, cuda:N or mps. The whole model "
        "is placed on it when it fits in its free memory, else streamed layer by layer.",
    ),
]
Layerwise = Annotated[
    bool,
    typer.Option(
        "--layerwise",
        help="Stream the layers even when the whole model fits: one layer's weights on the device at a time, "
        "the next one read (and copied) while the current one runs.",
    ),
]


# ---- seeds -------------------------------------------------------------------------------------------


def seed_option(what: str) -> typer.models.OptionInfo:
    """`--seed`: every random draw of a command comes from it (what: which draws)."""
    return typer.Option("--seed", help=f"Random seed of {what}.")


# ---- calibration input (profile, extract --examples) -------------------------------------------------

Examples = Annotated[
    Optional[str],
    typer.Option(
        "--examples",
        help="Calibration input: a .txt file (one document), JSONL (--field), a Hugging Face dataset "
        "(saved folder or cached name), or with --shots a multiple-choice task file turned into a k-shot prompt with "
        "gold answers.",
        show_default=False,
    ),
]
Field = Annotated[str, typer.Option("--field", help="Field holding the text in JSONL records / datasets.")]
Split = Annotated[
    Optional[str],
    typer.Option("--split", help="Dataset split (default: test, validation or train).", show_default=False),
]
Shots = Annotated[
    Optional[int],
    typer.Option(
        "--shots",
        help="Treat --examples as a multiple-choice task and profile one prompt of this many demonstrations "
        "(gold answers appended).",
        show_default=False,
    ),
]
Greedy = Annotated[
    bool,
    typer.Option(
        "--greedy",
        help="The EMO paper's layer-by-layer selection: score layer l on the model whose earlier layers are "
        "already sliced to --keep by --method.",
    ),
]


def calibration(examples, field: str, split, shots, seed: int, max_length, dtype) -> dict:
    """The calibration options (--examples, --field, --split, --shots, --seed, --max-length, --dtype) as the
    keyword arguments of ProfileSettings and make_slice (the dtype as its value)."""
    return dict(
        examples=examples, field=field, split=split, shots=shots, seed=seed, max_length=max_length, dtype=value(dtype)
    )


def _lead(when: str) -> str:
    return when + " " if when else ""


def keep_option(when: str = "") -> typer.models.OptionInfo:
    """`--keep`: experts kept per layer (when: a sentence put first, such as 'Only with --greedy.')."""
    return typer.Option(
        "--keep",
        help=_lead(when) + "Experts kept per layer, counting the shared ones (as "
        "num_experts does): a count like 16 or a share like 25%.",
        show_default=False,
    )


def method_option(when: str = "") -> typer.models.OptionInfo:
    """`--method`: how experts are ranked (when: a sentence put first)."""
    return typer.Option(
        "--method",
        help=_lead(when) + "How experts are ranked: mean-prob (EMO's default), "
        "frequency, reap, easy-ep, or random (seeded, needs no scores).",
    )


MaxLength = Annotated[
    Optional[int],
    typer.Option(
        "--max-length",
        help="Longest row in tokens (default: the model's context, max_position_embeddings; longer is refused); "
        "longer documents are cut into several rows.",
        show_default=False,
    ),
]


# ---- document pool (profile, eval, generate) ---------------------------------------------------------

POOL_HELP = (
    "Route each document inside its own pool of P routed experts: the top P by the document's summed router "
    "probability, as EMO was pretrained (0: no pool, the default reference routing)."
)


def pool_option(more: str = "") -> typer.models.OptionInfo:
    """`--pool P`: EMO's document pool at inference (more: what the command adds, a sentence)."""
    return typer.Option("--pool", help=POOL_HELP + (" " + more if more else ""), show_default=False)


# ---- paths -------------------------------------------------------------------------------------------

ModelArg = Annotated[str, typer.Argument(help="Checkpoint folder or Hugging Face Hub id.", show_default=False)]
FolderArg = Annotated[
    Path, typer.Argument(help="Folder to write (must be absent or empty, or pass --overwrite).", show_default=False)
]
