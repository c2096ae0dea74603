"""The one guard every command runs before any work: no output on an input, no two outputs on one path.

Each workflow spec lists the paths its command reads (`inputs()`: models, data, tasks, prompts, profiles,
init-from and resume folders) and writes (`outputs()`), as (flag, path). `check_paths(spec)` refuses an output
equal to an input, inside an input folder, or holding an input (a folder the output would be, or replace,
around it), and two outputs of one command on the same path; links are followed (a link to an input is that
input). Specs that are names, not paths (a built-in benchmark, `hf:NAME`, a Hub id with no local folder),
are compared as the relative path they would be, which no real output collides with. Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

from emo_slice.errors import UsageError


def local_path(spec: str) -> str | None:
    """The path in an input spec: NAME=FOLDER -> FOLDER, hf:NAME -> None (a dataset name), else the spec."""
    if spec.startswith("hf:"):
        return None
    name, eq, folder = spec.partition("=")
    return folder if eq and folder else spec


def _real(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def check_paths(inputs: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> None:
    """Refuse (UsageError) an output equal to, inside or holding an input, or two outputs on one path."""
    outs = [(flag, str(p), _real(p)) for flag, p in outputs]
    for i, (flag_a, a, real_a) in enumerate(outs):
        for flag_b, b, real_b in outs[i + 1 :]:
            if real_a == real_b:
                raise UsageError(f"{flag_a} {a} and {flag_b} {b} are the same path; give each output its own path")
    ins = [(flag, str(p), _real(p)) for flag, p in inputs]
    for flag_o, o, real_o in outs:
        for flag_i, i, real_i in ins:
            where = f"the input {flag_i} {i}"
            if real_o == real_i:
                raise UsageError(f"{flag_o} {o} is {where}; inputs are never modified, choose another path")
            if real_i in real_o.parents:
                raise UsageError(f"{flag_o} {o} is inside {where}; inputs are never modified, choose a path outside it")
            if real_o in real_i.parents:
                raise UsageError(f"{flag_o} {o} holds {where}; choose an output path that does not contain an input")


def check_spec_paths(spec) -> None:
    """check_paths on a spec's own inputs() and outputs()."""
    check_paths(spec.inputs(), spec.outputs())
