"""The package's layers import only downward, no two modules import each other (directly or round a circle),
`import emo_slice.cli` (what `emo-slice --help` loads) loads no torch, and an import inside a function is there
only to keep it so: in a module --help loads, marked with a comment saying why.

Layers, bottom to top (a module may import its own package and earlier ones):
core < model < io < data < eval < slicing < train < export < analysis < workflows < cli.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2] / "emo_slice"
LAYERS = ("core", "model", "io", "data", "eval", "slicing", "train", "export", "analysis", "workflows", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(module: str) -> str:
    """The layer of a module: its package under emo_slice (core for the top-level modules; __main__ is the CLI's)."""
    parts = module.split(".")
    if parts[1:2] == ["__main__"]:
        return "cli"
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "core"


def owner(target: str) -> str | None:
    """The emo_slice module an import names (its longest prefix that is a module), None outside the package."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def imports(module: str):
    """(target module, line, the line of the function it is in (0: module level), the statement's text) for every
    emo_slice import in module."""
    path = MODULES[module]
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node, in_function: int):
        for child in ast.iter_child_nodes(node):
            is_def = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            inner = in_function or (child.lineno if is_def else 0)
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([child.module] if child.module else []))
                names = [f"{base}.{a.name}" for a in child.names] or [base]
            for name in names:
                target = owner(name)
                if target and target != module:
                    text = " ".join(lines[child.lineno - 1 : child.end_lineno])
                    yield target, child.lineno, in_function, text
            yield from visit(child, inner)

    yield from visit(tree, 0)


EDGES = [(m, *imp) for m in MODULES for imp in imports(m)]


def test_every_import_goes_down_the_layers():
    upward = [
        f"{m}:{line} imports {t} ({layer(m)} < {layer(t)})"
        for m, t, line, _, _ in EDGES
        if LAYERS.index(layer(t)) > LAYERS.index(layer(m))
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle_between_modules():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, t, *_ in EDGES:
        if not m.startswith(t + "."):  # a module's import of its own package's __init__ is how Python loads it
            graph[m].add(t)
    circles = strongly_connected(graph)
    assert not circles, circles


LAZY_MARK = "torch-free --help"  # the comment on an import inside a function


def light_modules() -> set[str]:
    """The emo_slice modules `import emo_slice.cli` loads (what `emo-slice --help` costs)."""
    code = "import sys, emo_slice.cli; print(' '.join(m for m in sys.modules if m.startswith('emo_slice')))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_imports_inside_functions_only_keep_help_light():
    light = light_modules()
    inside = {(m, line, fn, text) for m, t, line, fn, text in EDGES if fn}
    marked = {(m, fn) for m, line, fn, text in inside if LAZY_MARK in text}  # one mark per function body
    misplaced = [f"{m}:{line}: {text.strip()}" for m, line, fn, text in sorted(inside) if m not in light]
    unmarked = [f"{m}:{line}: {text.strip()}" for m, line, fn, text in sorted(inside) if (m, fn) not in marked]
    assert not misplaced, "import at module level (--help does not load this module):\n" + "\n".join(misplaced)
    assert not unmarked, f"say why with `# {LAZY_MARK}`:\n" + "\n".join(unmarked)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module (each an import circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("module", ["emo_slice.cli", "emo_slice.workflows"])
def test_the_cli_imports_no_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'datasets', 'tokenizers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
