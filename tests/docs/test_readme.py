"""Every `emo-slice` command the README (and docs/) shows names a real command and real flags (litgpt-style).

Running them all would take minutes (the quickstart test runs the main flow); this catches the
README drifting from the CLI: a renamed flag, a removed command, a typo.
"""

import re
import shlex
from pathlib import Path

import typer.main

from emo_slice.cli import app

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"


def readme_commands() -> list[list[str]]:
    text = "\n".join(p.read_text() for p in [README, *sorted((ROOT / "docs").glob("*.md"))])
    blocks = re.findall(r"```(?:bash|console)\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            line = line.split("  #")[0].strip()
            m = re.search(r"(?:^|&& |-m emo_slice )(emo-slice|pretrain)\b(.*)", line)
            if not m or line.startswith(("┃", "│")):
                continue
            words = shlex.split(m.group(2))
            if m.group(1) == "pretrain":  # torchrun ... -m emo_slice pretrain ...
                words = ["pretrain", *words]
            commands.append(words)
    return commands


def test_readme_shows_commands():
    names = {c[0] for c in readme_commands() if c}
    assert {"quickstart", "info", "init", "profile", "extract", "eval", "pretrain", "demo-data"} <= names


def test_readme_commands_match_the_cli():
    group = typer.main.get_command(app)
    for words in readme_commands():
        if not words:
            continue
        cmd = group.commands.get(words[0])
        assert cmd is not None, f"README shows `emo-slice {words[0]}`, which is not a command"
        flags = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
        for w in words[1:]:
            if w.startswith("--"):
                assert w.split("=")[0] in flags, f"README: `emo-slice {words[0]}` has no flag {w}"
