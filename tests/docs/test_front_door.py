"""README.md is a front door: short, linking every page of docs/, and its Python example runs as shown.
Every Python block of the docs names real modules and names."""

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
MAX_LINES = 170


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines (at most {MAX_LINES}: the rest belongs in docs/)"


def test_readme_links_every_docs_page():
    text = README.read_text()
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages
    missing = [p.name for p in pages if f"](docs/{p.name})" not in text]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize(
    "page",
    [README, *sorted((ROOT / "docs").glob("*.md"))],
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_python_blocks_import_real_names(page):
    """Each block parses, and every `from emo_slice... import NAME` and `emo_slice.NAME` it uses exists."""
    for block in python_blocks(page):
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "emo_slice":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    assert hasattr(module, alias.name) or importlib.util.find_spec(name), f"{page.name}: {name}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "emo_slice":
                assert hasattr(importlib.import_module("emo_slice"), node.attr), f"{page.name}: emo_slice.{node.attr}"


@pytest.mark.slow
def test_readme_python_example_runs_as_shown(tmp_path, monkeypatch, capsys):
    (block,) = python_blocks(README)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    shown = capsys.readouterr().out
    assert (tmp_path / "small-emo-code" / "slice.json").is_file()
    assert re.search(r"'model': [\d.]+, 'against': [\d.]+, 'diff': [-\d.e]+, 'kept': [\d.]+", shown), shown
