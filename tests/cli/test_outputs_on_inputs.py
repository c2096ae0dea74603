"""No command writes onto, into or around one of its own inputs, nor two of its outputs on one path.

Walks every command that writes: each output option set to each of the command's inputs (the same path), to a
path inside an input folder, and to the folder holding an input; and, for commands with several outputs, each
output onto another. Every case: exit 2, one `error:` line naming the guard's reason, no traceback, nothing
written, and every pre-existing file's bytes unchanged (the whole working folder hashed before and after).
The inputs and outputs each command declares are its workflow spec's (`inputs()` / `outputs()`); the test
checks its own table against them, so a new input or output option cannot be missed.
"""

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import assert_one_line_error, invoke

from emo_slice.workflows.eval import EvalSpec
from emo_slice.workflows.export import ExportSpec
from emo_slice.workflows.finetune import FinetuneSpec
from emo_slice.workflows.map import MapSpec
from emo_slice.workflows.merge import MergeSpec
from emo_slice.workflows.pretrain import PretrainSpec
from emo_slice.workflows.profile import ProfileSpec
from emo_slice.workflows.slice import SliceSpec
from emo_slice.workflows.stability import StabilitySpec
from emo_slice.workflows.sweep import SweepSpec

REFUSED = ("is the input", "is inside the input", "holds the input", "are the same path")


@pytest.fixture(scope="module")
def work(tiny_ckpt, tmp_path_factory) -> Path:
    """A working folder with every kind of input: a checkpoint, a second one, texts, a task, a profile, prompts."""
    w = tmp_path_factory.mktemp("work")
    shutil.copytree(tiny_ckpt, w / "model")
    shutil.copytree(tiny_ckpt, w / "full")
    (w / "data").mkdir()
    item = {"context": "1 + 1 =", "choices": [" 2", " 3"], "label": 0}
    (w / "data" / "task.jsonl").write_text("".join(json.dumps({**item, "id": f"q{i}"}) + "\n" for i in range(6)))
    (w / "data" / "docs.jsonl").write_text("".join(json.dumps({"text": f"word {i} " * 20}) + "\n" for i in range(4)))
    (w / "data" / "valid.jsonl").write_text(json.dumps({"text": "held out words " * 20}) + "\n")
    (w / "data" / "gen.jsonl").write_text(json.dumps({"prompt": "1 + 1 =", "target": "2"}) + "\n")
    (w / "data" / "calib.txt").write_text("def f(x):\n    return x + 1\n" * 10)
    (w / "profile.json").write_text(json.dumps({"format": "emo-slice-profile"}))
    return w


# command -> (the arguments of a run that would write, its inputs as (flag, relative path), its output flags)
def cases(w: Path) -> dict:
    m, d = str(w / "model"), w / "data"
    return {
        "profile": (
            ["profile", m, "--examples", d / "calib.txt", "--out", w / "o" / "p.json"],
            [("MODEL", "model"), ("--examples", "data/calib.txt")],
            ["--out"],
        ),
        "extract": (
            ["extract", m, "--keep", "auto", "--target", "0.9", "--task", d / "task.jsonl", "--lm", d / "docs.jsonl"]
            + ["--examples", d / "calib.txt", "--out", w / "o" / "s"],
            [("MODEL", "model"), ("--examples", "data/calib.txt"), ("--task", "data/task.jsonl")]
            + [("--lm", "data/docs.jsonl")],
            ["--out"],
        ),
        "extract --profile": (
            ["extract", m, "--keep", "4", "--profile", w / "profile.json", "--out", w / "o" / "s"],
            [("MODEL", "model"), ("--profile", "profile.json")],
            ["--out"],
        ),
        "export": (
            ["export", m, "--format", "qwen2-moe", "--out", w / "o" / "q"],
            [("MODEL", "model")],
            ["--out"],
        ),
        "eval": (
            ["eval", m, "--against", w / "full", "--task", d / "task.jsonl", "--lm", d / "docs.jsonl"]
            + ["--gen-task", d / "gen.jsonl", "--out", w / "o" / "r.json", "--predictions", w / "o" / "p.jsonl"],
            [("MODEL", "model"), ("--against", "full"), ("--task", "data/task.jsonl"), ("--lm", "data/docs.jsonl")]
            + [("--gen-task", "data/gen.jsonl")],
            ["--out", "--predictions"],
        ),
        "sweep": (
            ["sweep", m, "--keep", "3", "--examples", d / "calib.txt", "--task", d / "task.jsonl"]
            + ["--lm", d / "docs.jsonl", "--out", w / "o" / "r.json", "--plot", w / "o" / "r.png"]
            + ["--keep-slices", w / "o" / "slices"],
            [("MODEL", "model"), ("--examples", "data/calib.txt"), ("--task", "data/task.jsonl")]
            + [("--lm", "data/docs.jsonl")],
            ["--out", "--plot", "--keep-slices"],
        ),
        "sweep --profile": (
            ["sweep", m, "--keep", "3", "--profile", w / "profile.json", "--lm", d / "docs.jsonl"]
            + ["--out", w / "o" / "r.json"],
            [("MODEL", "model"), ("--profile", "profile.json"), ("--lm", "data/docs.jsonl")],
            ["--out"],
        ),
        "map": (
            ["map", m, "--docs", d / "docs.jsonl", "--out", w / "o" / "map"],
            [("MODELS", "model"), ("--docs", "data/docs.jsonl")],
            ["--out"],
        ),
        "stability": (
            ["stability", m, "--examples", d / "calib.txt", "--keep", "3", "--out", w / "o" / "s.json"],
            [("MODEL", "model"), ("--examples", "data/calib.txt")],
            ["--out"],
        ),
        "pretrain": (
            ["pretrain", "--data", d / "docs.jsonl", "--valid-data", d / "valid.jsonl", "--init-from", m]
            + ["--tokenizer", w / "model" / "tokenizer.json", "--steps", "1", "--out", w / "o" / "run"],
            [("--data", "data/docs.jsonl"), ("--valid-data", "data/valid.jsonl"), ("--init-from", "model")]
            + [("--tokenizer", "model/tokenizer.json")],
            ["--out"],
        ),
        "finetune": (
            ["finetune", m, "--task", d / "task.jsonl", "--steps", "1", "--out", w / "o" / "run"],
            [("MODEL", "model"), ("--task", "data/task.jsonl")],
            ["--out"],
        ),
        "merge": (
            ["merge", w / "full", "--slice", m, "--out", w / "o" / "merged"],
            [("FULL", "full"), ("--slice", "model")],
            ["--out"],
        ),
    }


def tree(folder: Path) -> dict:
    """Every file and folder under `folder` (links not followed): path -> sha256 of the bytes, or 'dir'."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), folder)] = "dir"
        for name in files:
            p = os.path.join(root, name)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def with_option(args: list, flag: str, value) -> list:
    """args with the value of `flag` replaced (every output option is given once in the table)."""
    i = args.index(flag)
    return args[: i + 1] + [value] + args[i + 2 :]


def refused(work: Path, args: list) -> None:
    before = tree(work)
    proc = invoke(*args)
    line = assert_one_line_error(proc)
    assert any(reason in line for reason in REFUSED), line
    assert tree(work) == before, args  # nothing written, nothing changed, no temporary or lock left


CASES = ["profile", "extract", "extract --profile", "export", "eval", "sweep", "sweep --profile", "pretrain"]
CASES += ["map", "stability", "finetune", "merge"]


@pytest.mark.parametrize("case", CASES)
def test_no_output_on_into_or_around_an_input(work, case):
    args, inputs, outputs = cases(work)[case]
    for out_flag in outputs:
        for _, rel in inputs:
            src = work / rel
            targets = [src, src.parent] + ([src / "sub"] if src.is_dir() else [])
            for target in targets:  # the input itself, the folder holding it, a path inside it
                refused(work, with_option(args, out_flag, target))


@pytest.mark.parametrize("case", [c for c in CASES if len(cases(Path("w"))[c][2]) > 1])
def test_two_outputs_of_one_command_are_never_one_path(work, case):
    args, _, outputs = cases(work)[case]
    for a in outputs:
        for b in outputs:
            if a != b:
                i = args.index(b)
                refused(work, with_option(args, a, args[i + 1]))


def test_the_table_covers_every_input_and_output_the_specs_declare():
    """Each spec's declared paths (role input / output, and what inputs() adds) appear in the table above, and every
    command with an output is walked."""
    w = Path("w")
    table = cases(w)
    declared = {
        "profile": ProfileSpec,
        "extract": SliceSpec,
        "export": ExportSpec,
        "eval": EvalSpec,
        "sweep": SweepSpec,
        "pretrain": PretrainSpec,
        "map": MapSpec,
        "stability": StabilitySpec,
        "finetune": FinetuneSpec,
        "merge": MergeSpec,
    }
    for command, spec in declared.items():
        roles = {}
        for f in dataclasses.fields(spec):
            roles.setdefault(f.metadata.get("role"), []).append(
                f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            )
        flags_in = {f for c, (_, ins, _) in table.items() if c.split()[0] == command for f, _ in ins}
        flags_out = {f for c, (_, _, outs) in table.items() if c.split()[0] == command for f in outs}
        assert set(roles.get("output", [])) == flags_out, command
        assert set(roles.get("input", [])) - {"--examples"} <= flags_in, command  # examples: in the calibration
    import typer.main

    from emo_slice.cli import app

    writers = {n for n, c in typer.main.get_command(app).commands.items() if any("--out" in p.opts for p in c.params)}
    assert writers - {c.split()[0] for c in table} == {"init", "demo-data", "quickstart"}  # no inputs to write onto
