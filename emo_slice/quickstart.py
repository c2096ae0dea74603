"""The quickstart: the whole emo-slice workflow on the embedded corpus, as commands a user can rerun.

demo-data -> pretrain (EMO, a few minutes on a CPU) -> profile (a 5-shot example of one domain) ->
extract (a quarter of the experts) -> eval (slice against full model on that domain's task and held-out
documents). `steps` returns the commands; `shell_lines` writes them as lines to paste into a shell;
`prepare_out` checks (and with overwrite empties) the output folder; `run` runs each command as a
separate `emo-slice` process, echoing it first, and stops at the first failure.
"""

from __future__ import annotations

import fnmatch
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


# what a quickstart folder holds: only such a folder is emptied by --overwrite
QUICKSTART_NAMES = ("data", "emo", "*.profile.json", "emo-*", "eval-*.json", ".*")


def prepare_out(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an output folder that holds files unless overwrite; with overwrite, empty it, but only if
    everything in it is what a quickstart writes (never delete a folder of other files)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder path")
    entries = sorted(out.iterdir()) if out.exists() else []
    if not entries:
        return out
    if not overwrite:
        raise UsageError(f"--out {out} already holds files; pass --overwrite to start afresh or choose another folder")
    foreign = [p.name for p in entries if not any(fnmatch.fnmatch(p.name, pat) for pat in QUICKSTART_NAMES)]
    if foreign:
        raise UsageError(
            f"--out {out} holds {foreign[0]!r}, which the quickstart did not write; refusing to delete "
            "it with --overwrite; choose another folder"
        )
    shutil.rmtree(out)
    return out


def run(commands: list[list[str]], echo: Callable[[str], None] = print) -> None:
    """Run each command as `python -m emo_slice ...` (the same as typing `emo-slice ...`)."""
    for args in commands:
        echo("$ emo-slice " + shlex.join(args))
        proc = subprocess.run([sys.executable, "-m", "emo_slice", *args])
        if proc.returncode != 0:
            raise EmoSliceError(f"step `emo-slice {args[0]}` failed (exit {proc.returncode}); its message is above")
