"""docs/finetune.md: its workflow block runs as shown (on a tiny model and tiny tasks), every command it shows
names real flags, and its example command names the script's real options."""

import json
import re
import shlex
from pathlib import Path

import typer.main
from conftest import invoke

from emo_slice.cli import app

DOC = Path(__file__).parents[2] / "docs" / "finetune.md"


def _blocks() -> list[list[list[str]]]:
    """The bash blocks of the page, each a list of commands (words after `emo-slice` / `python`)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S):
        cmds = [shlex.split(ln.strip()) for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]
        out.append(cmds)
    return out


def _task(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            item = {"id": str(i), "context": f"line {i}\nnext:", "choices": [" a", " b", " c", " d"], "label": i % 4}
            f.write(json.dumps(item) + "\n")


def test_the_workflow_block_runs_as_shown(tmp_path, monkeypatch):
    from emo_slice.io.build import random_checkpoint

    random_checkpoint(tmp_path / "model", "tiny", seed=0)
    for name, n in (("train/code", 24), ("code", 8), ("docs", 8)):
        _task(tmp_path / "tasks" / f"{name}.jsonl", n)
    monkeypatch.chdir(tmp_path)
    workflow = _blocks()[0]
    assert [c[1] for c in workflow] == ["extract", "finetune", "eval", "merge", "merge", "eval"]
    for words in workflow:
        assert words[0] == "emo-slice"
        r = invoke(*words[1:])
        assert r.returncode == 0, (words, r.stderr)
    assert json.loads(Path("model-code-avg/merge.json").read_text())["weight"] == 0.5


def test_every_command_shown_names_real_flags():
    group = typer.main.get_command(app)
    script = (Path(__file__).parents[2] / "examples" / "finetune_merge.py").read_text()
    for block in _blocks():
        for words in block:
            if words[0] == "emo-slice":
                cmd = group.commands[words[1]]
                flags = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
                assert all(w in flags for w in words[2:] if w.startswith("--")), words
            else:
                assert words[:2] == ["python", "examples/finetune_merge.py"], words
                assert all(f'"{w}"' in script for w in words[2:] if w.startswith("--")), words
