"""Every `python examples/NAME.py ...` command that README.md, examples/README.md or docs/*.md shows parses with that
script's own argument parser: real flags, real choices (a renamed flag or a preset that no longer exists fails).

Each script's main() runs up to its parse_args, which parses the README's words and then stops the script."""

import argparse
import re
import shlex
from pathlib import Path

import pytest
from conftest import load_example

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shown_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())  # continued lines joined
        for m in re.finditer(r"python (examples/\w+\.py)([^`\n#|]*)", text):
            found.append((m.group(1), shlex.split(m.group(2))))
    return found


class _Parsed(Exception):
    pass


def _load(script: str):
    return load_example(Path(script).stem)  # script: examples/NAME.py


def test_docs_pages_show_example_commands():
    shown = {s for s, _ in shown_commands()}
    scripts = {f"examples/{p.name}" for p in (ROOT / "examples").glob("*.py")}
    assert shown == scripts, f"no page shows {sorted(scripts - shown)}"  # docs/benchmarks.md lists every script


def test_docs_show_the_reproduction_presets():
    presets = {
        w[w.index("--preset") + 1] for s, w in shown_commands() if s.endswith("reproduce_emo.py") and "--preset" in w
    }
    assert presets == set(_load("examples/reproduce_emo.py").PRESETS) - {"cpu"}  # cpu is the default


@pytest.mark.parametrize("script,words", shown_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_shown_example_command_parses(script, words, monkeypatch):
    assert (ROOT / script).is_file(), f"the docs show {script}, which does not exist"
    original = argparse.ArgumentParser.parse_args
    seen = []

    def parse_shown(self, args=None, namespace=None):
        seen.append(original(self, words, namespace))  # exits 2 (fails the test) on an unknown flag or choice
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_shown)
    with pytest.raises(_Parsed):
        _load(script).main()
    assert len(seen) == 1
