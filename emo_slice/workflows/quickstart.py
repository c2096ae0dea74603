"""The quickstart: the whole emo-slice workflow on the embedded corpus, as commands a user can rerun.

demo-data -> pretrain an EMO model and a standard MoE trained the same way (the two at once, in
parallel processes, one CPU thread each) -> sweep both (profile each on a 5-shot example of one domain,
slice to 12.5%, 25% and 50% of the experts and score every slice, and a random-experts control, against
its full model on that domain's held-out documents: bits per byte, since accuracies of models this small
sit at chance) -> map both on the held-out documents of every domain (`emo-slice map`: token clusters,
document spread, the usage map, an HTML explorer). `steps` returns the commands; `groups` says which run at the same time; `shell_lines`
writes them as lines to paste into a shell; `check_keep` validates --keep before anything runs;
`prepare_out` checks (and with overwrite empties, only if emo-slice made it) the output folder; `run`
runs each command as a separate `emo-slice` process, echoing it first, and stops at the first failure.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from emo_slice.artifacts import MARKER, check_writable, made_by_emo_slice, output_lock, provenance
from emo_slice.data.democorpus import DOMAINS
from emo_slice.errors import EmoSliceError, UsageError
from emo_slice.model.presets import preset
from emo_slice.specs import OUTPUT, OVERWRITE, Spec, param

ROUTERS = ("emo", "standard")
DEFAULT_KEEP = "12.5%,25%,50%"

SIZES = {
    # seconds: for tests
    "tiny": dict(
        chars=20_000,
        controls=2,
        pretrain=["--preset", "tiny", "--steps", "30", "--set", "eval_every=30", "--set", "save_every=30"],
        eval=["--limit", "8"],
        map=["--docs-limit", "4", "--max-tokens-per-doc", "48", "--clusters", "4"],
    ),
    # a few minutes on 2 cores, each model on one: 33 experts (32 routed + 1 shared), top 4 + shared, byte-level
    # tokens, 150 steps of 16 x 256 tokens
    "small": dict(
        chars=300_000,
        controls=5,  # random draws per K: enough for a mean and a spread to compare the profile's choice with
        pretrain=[
            "--preset",
            "small",
            "--tokenizer",
            "bytes",
            "--steps",
            "150",
            "--seq-len",
            "256",
            "--set",
            "vocab_size=256",
            "--set",
            "intermediate_size=128",
            "--set",
            "eval_every=150",
            "--set",
            "save_every=150",
        ],
        eval=[],
        map=[],
    ),
}


@dataclass(frozen=True)
class QuickstartSpec(Spec):
    """Where the quickstart writes, at which size, for which domain, and the sweep's K."""

    out: str = param("quickstart", "Folder for the corpus, the model, the slice and results.", role=OUTPUT)
    size: str = param("small", "small (a few minutes on 2 cores) or tiny (seconds, for tests).")
    domain: str = param("code", "Domain to slice for.")
    keep: str = param(DEFAULT_KEEP, "Experts kept per layer at each step of the sweep: counts or shares.")
    overwrite: bool = param(False, OVERWRITE)


def commands(spec: QuickstartSpec) -> list[list[str]]:
    """The quickstart's commands, after --keep is checked against the model it will pretrain."""
    cmds = steps(spec.out, spec.size, spec.domain, spec.keep)
    check_keep(spec.size, spec.keep)
    return cmds


def run_spec(spec: QuickstartSpec, echo: Callable[[str], None] = print) -> None:
    """Run the quickstart: the output folder checked, locked, emptied (with overwrite, only if emo-slice made it)
    and marked, then each command in turn (`run`)."""
    cmds = commands(spec)
    with output_lock(spec.out):  # a second quickstart into the same folder refuses
        prepare_out(spec.out, spec.overwrite)
        mark_out(spec.out)
        run(cmds, echo)


def steps(
    out: str | os.PathLike, size: str = "small", domain: str = "code", keep: str = DEFAULT_KEEP
) -> list[list[str]]:
    """The emo-slice commands of the quickstart (arguments after `emo-slice`); the pretrain commands run at
    the same time (`groups`)."""
    if size not in SIZES:
        raise UsageError(f"`size={size!r}` is unknown; choose one of {', '.join(SIZES)}")
    if domain not in DOMAINS:
        raise UsageError(f"`domain={domain!r}` is not in the demo corpus; choose one of {', '.join(DOMAINS)}")
    s, o = SIZES[size], Path(out)
    data = o / "data"
    train = ["--data", str(data / "train.jsonl"), "--valid-data", str(data / "valid.jsonl")]
    return [
        ["demo-data", "--out", str(data), "--chars-per-domain", str(s["chars"])],
        *[["pretrain", *train, "--out", str(o / r), "--router", r, *s["pretrain"]] for r in ROUTERS],
        [
            "sweep",
            *[str(o / r / "final") for r in ROUTERS],
            "--examples",
            str(data / "tasks" / f"{domain}.jsonl"),
            "--shots",
            "5",
            "--lm",
            str(data / "valid" / f"{domain}.jsonl"),
            "--keep",
            keep,
            "--controls",
            str(s["controls"]),
            "--out",
            str(o / f"sweep-{domain}.json"),
            *s["eval"],
        ],
        # what the experts specialise in: both models mapped on the held-out documents of every domain
        [
            "map",
            *[str(o / r / "final") for r in ROUTERS],
            "--docs",
            str(data / "valid.jsonl"),
            "--out",
            str(o / "map"),
            *s["map"],
        ],
    ]


def groups(commands: list[list[str]]) -> list[list[list[str]]]:
    """Commands in the order they run; consecutive pretrain commands form one group run at the same time."""
    out: list[list[list[str]]] = []
    for args in commands:
        if out and args[0] == "pretrain" and out[-1][0][0] == "pretrain":
            out[-1].append(args)
        else:
            out.append([args])
    return out


def threads_each(n_parallel: int) -> int:
    """CPU threads per process when n run at once: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // n_parallel)


def shell_lines(commands: list[list[str]]) -> list[str]:
    """Each command as one line a shell runs as is (`emo-slice` + shell-quoted arguments); commands run at the
    same time end with ` &` (one thread each: OMP_NUM_THREADS), followed by a `wait` line."""
    lines = []
    for group in groups(commands):
        if len(group) == 1:
            lines.append("emo-slice " + shlex.join(group[0]))
            continue
        env = f"OMP_NUM_THREADS={threads_each(len(group))} "
        lines += [env + "emo-slice " + shlex.join(args) + " &" for args in group] + ["wait"]
    return lines


# what a quickstart writes in its folder (older quickstart folders, made before the marker, are recognised by it)
QUICKSTART_NAMES = (
    "data", "emo", "standard", "*.profile.json", "emo-*", "eval-*.json", "sweep-*.json", "sweep-*.png", "map",
)  # fmt: skip


def check_keep(size: str, keep: str) -> list[int]:
    """Validate --keep (one K or several, comma-separated) against the model the quickstart will pretrain."""
    from emo_slice.slicing.select import parse_keep  # torch-free --help: torch loads when the command runs

    args = SIZES[size]["pretrain"]
    cfg = preset(args[args.index("--preset") + 1])
    parts = [p for p in keep.split(",") if p.strip()] or [keep]
    return sorted({parse_keep(p, cfg.num_experts, cfg.num_shared_experts) for p in parts})


def _ours(out: Path) -> bool:
    """Whether emo-slice made the folder: its marker, or (an older quickstart) only quickstart names, each
    folder among them emo-slice made (its marker: run folders carry one too) or empty."""
    if made_by_emo_slice(out):
        return True
    for p in out.iterdir():
        if p.name == MARKER:
            continue
        if not any(fnmatch.fnmatch(p.name, pat) for pat in QUICKSTART_NAMES) or p.is_symlink():
            return False
        if p.is_dir() and not (made_by_emo_slice(p) or not any(p.iterdir())):
            return False
    return True


def prepare_out(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an output folder that holds files unless overwrite; with overwrite, delete it, but only if emo-slice
    made it (the `.emo-slice` marker `mark_out` writes, or only what a quickstart writes): never a folder of
    other files. Also refuses a file, or a folder that cannot be written."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise UsageError(f"`out={out}` is a file; give a folder path")
    check_writable(out, out)
    entries = [p for p in out.iterdir() if p.name != MARKER] if out.exists() else []
    if entries and not overwrite:
        raise UsageError(f"`out={out}` already holds files; pass `overwrite` to start afresh or choose another folder")
    if entries and not _ours(out):
        foreign = next(
            (p.name for p in entries if not any(fnmatch.fnmatch(p.name, pat) for pat in QUICKSTART_NAMES)), None
        )
        what = f"holds {foreign!r}, which the quickstart did not write" if foreign else "was not made by emo-slice"
        raise UsageError(f"`out={out}` {what}; refusing to delete it with `overwrite`; choose another folder")
    if entries:
        shutil.rmtree(out)
    return out


def mark_out(out: str | os.PathLike) -> None:
    """Create the quickstart folder with emo-slice's marker (so a later --overwrite may replace it)."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps(provenance(created_by="emo-slice quickstart"), indent=1) + "\n")


def run(commands: list[list[str]], echo: Callable[[str], None] = print) -> None:
    """Run each command as `python -m emo_slice ...` (the same as typing `emo-slice ...`); a group of commands
    runs at the same time, each with its share of the CPU threads, its output shown when all have finished."""
    for group in groups(commands):
        if group[0][0] == "map" and not map_extra():
            echo("skipped `emo-slice map`: it needs scikit-learn and matplotlib (pip install 'emo-slice[map]')")
            continue
        if len(group) == 1:
            echo("$ emo-slice " + shlex.join(group[0]))
            _check(group[0], subprocess.run([sys.executable, "-m", "emo_slice", *group[0]]).returncode)
            continue
        env = dict(os.environ, OMP_NUM_THREADS=str(threads_each(len(group))))
        for args in group:
            echo(f"$ OMP_NUM_THREADS={env['OMP_NUM_THREADS']} emo-slice " + shlex.join(args) + " &")
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "emo_slice", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for args in group
        ]
        try:
            outputs = [p.communicate()[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        for args, p, text in zip(group, procs, outputs):
            sys.stdout.write(text)
            sys.stdout.flush()
            _check(args, p.returncode)


def map_extra() -> bool:
    """Whether `emo-slice map`'s optional packages (scikit-learn, matplotlib) are installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("sklearn", "matplotlib"))


def _check(args: list[str], code: int) -> None:
    if code != 0:
        raise EmoSliceError(f"step `emo-slice {args[0]}` failed (exit {code}); its message is above")
