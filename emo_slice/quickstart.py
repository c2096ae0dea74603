"""The quickstart: the whole emo-slice workflow on the embedded corpus, as commands a user can rerun.

demo-data -> pretrain (EMO, a few minutes on a CPU) -> profile (a 5-shot example of one domain) ->
extract (a quarter of the experts) -> eval (slice against full model on that domain's task and held-out
documents). `steps` returns the commands; `shell_lines` writes them as lines to paste into a shell;
`check_keep` validates --keep before anything runs; `prepare_out` checks (and with overwrite empties, only
if emo-slice made it) the output folder; `run` runs each command as a
separate `emo-slice` process, echoing it first, and stops at the first failure.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from emo_slice.errors import EmoSliceError, UsageError

SIZES = {
    # seconds: for tests
    "tiny": dict(
        chars=20_000,
        pretrain=["--preset", "tiny", "--steps", "30", "--set", "eval_every=30", "--set", "save_every=30"],
        eval=["--limit", "8"],
    ),
    # a few minutes on 2 cores: 33 experts (32 routed + 1 shared), top 4 + shared, byte-level tokens
    "small": dict(
        chars=300_000,
        pretrain=[
            "--preset",
            "small",
            "--tokenizer",
            "bytes",
            "--steps",
            "300",
            "--seq-len",
            "256",
            "--set",
            "vocab_size=256",
            "--set",
            "intermediate_size=128",
            "--set",
            "eval_every=300",
            "--set",
            "save_every=300",
        ],
        eval=[],
    ),
}


def steps(out: str | os.PathLike, size: str = "small", domain: str = "code", keep: str = "25%") -> list[list[str]]:
    """The emo-slice commands of the quickstart (arguments after `emo-slice`)."""
    if size not in SIZES:
        raise UsageError(f"--size {size!r} is unknown; choose one of {', '.join(SIZES)}")
    from emo_slice.data.democorpus import DOMAINS

    if domain not in DOMAINS:
        raise UsageError(f"--domain {domain!r} is not in the demo corpus; choose one of {', '.join(DOMAINS)}")
    s, o = SIZES[size], Path(out)
    data, run, model = o / "data", o / "emo", o / "emo" / "final"
    profile, sliced = o / f"{domain}.profile.json", o / f"emo-{domain}-{keep.rstrip('%')}"
    return [
        ["demo-data", str(data), "--chars-per-domain", str(s["chars"])],
        [
            "pretrain",
            "--data",
            str(data / "train.jsonl"),
            "--valid-data",
            str(data / "valid.jsonl"),
            "--out",
            str(run),
            *s["pretrain"],
        ],
        [
            "profile",
            str(model),
            "--examples",
            str(data / "tasks" / f"{domain}.jsonl"),
            "--shots",
            "5",
            "--out",
            str(profile),
        ],
        ["extract", str(model), "--keep", keep, "--profile", str(profile), "--out", str(sliced)],
        [
            "eval",
            str(sliced),
            "--against",
            str(model),
            "--task",
            str(data / "tasks" / f"{domain}.jsonl"),
            "--lm",
            str(data / "valid" / f"{domain}.jsonl"),
            "--out",
            str(o / f"eval-{domain}.json"),
            *s["eval"],
        ],
    ]


def shell_lines(commands: list[list[str]]) -> list[str]:
    """Each command as one line a shell runs as is (`emo-slice` + shell-quoted arguments)."""
    return ["emo-slice " + shlex.join(args) for args in commands]


# what a quickstart writes in its folder (older quickstart folders, made before the marker, are recognised by it)
QUICKSTART_NAMES = ("data", "emo", "*.profile.json", "emo-*", "eval-*.json")


def check_keep(size: str, keep: str) -> int:
    """Validate --keep against the model the quickstart will pretrain, before anything runs."""
    from emo_slice.model.presets import preset
    from emo_slice.slicing.select import parse_keep

    args = SIZES[size]["pretrain"]
    cfg = preset(args[args.index("--preset") + 1])
    return parse_keep(keep, cfg.num_experts, cfg.num_shared_experts)


def _ours(out: Path) -> bool:
    """Whether emo-slice made the folder: its marker, or (an older quickstart) only quickstart names, each
    folder among them emo-slice made, empty, or a pretraining run folder."""
    from emo_slice.artifacts import MARKER, made_by_emo_slice

    if made_by_emo_slice(out):
        return True
    for p in out.iterdir():
        if p.name == MARKER:
            continue
        if not any(fnmatch.fnmatch(p.name, pat) for pat in QUICKSTART_NAMES) or p.is_symlink():
            return False
        if p.is_dir() and not (made_by_emo_slice(p) or not any(p.iterdir()) or (p / "train_config.json").is_file()):
            return False
    return True


def prepare_out(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an output folder that holds files unless overwrite; with overwrite, delete it, but only if emo-slice
    made it (the `.emo-slice` marker `mark_out` writes, or only what a quickstart writes): never a folder of
    other files. Also refuses a file, or a folder that cannot be written."""
    from emo_slice.artifacts import MARKER, check_writable

    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder path")
    check_writable(out, out)
    entries = [p for p in out.iterdir() if p.name != MARKER] if out.exists() else []
    if entries and not overwrite:
        raise UsageError(f"--out {out} already holds files; pass --overwrite to start afresh or choose another folder")
    if entries and not _ours(out):
        foreign = next(
            (p.name for p in entries if not any(fnmatch.fnmatch(p.name, pat) for pat in QUICKSTART_NAMES)), None
        )
        what = f"holds {foreign!r}, which the quickstart did not write" if foreign else "was not made by emo-slice"
        raise UsageError(f"--out {out} {what}; refusing to delete it with --overwrite; choose another folder")
    if entries:
        shutil.rmtree(out)
    return out


def mark_out(out: str | os.PathLike) -> None:
    """Create the quickstart folder with emo-slice's marker (so a later --overwrite may replace it)."""
    from emo_slice.artifacts import MARKER, provenance

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps(provenance(created_by="emo-slice quickstart"), indent=1) + "\n")


def run(commands: list[list[str]], echo: Callable[[str], None] = print) -> None:
    """Run each command as `python -m emo_slice ...` (the same as typing `emo-slice ...`)."""
    for args in commands:
        echo("$ emo-slice " + shlex.join(args))
        proc = subprocess.run([sys.executable, "-m", "emo_slice", *args])
        if proc.returncode != 0:
            raise EmoSliceError(f"step `emo-slice {args[0]}` failed (exit {proc.returncode}); its message is above")
