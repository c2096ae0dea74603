"""Modules moved in 0.2.0 keep their old import path for one release: the same objects, with a DeprecationWarning
naming the new path (one table: emo_slice/_aliases.py)."""

import importlib
import subprocess
import sys

import pytest

from emo_slice import _aliases


@pytest.mark.parametrize("old", sorted(_aliases.MOVED_MODULES))
def test_a_moved_module_imports_from_its_old_path_with_a_warning(old):
    code = (
        "import importlib, warnings\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        f"try:\n    importlib.import_module({old!r})\nexcept DeprecationWarning as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert old in out and "deprecated" in out and _aliases.MOVED_MODULES[old][0] in out, out


@pytest.mark.parametrize("old, targets", sorted(_aliases.MOVED_MODULES.items()))
def test_an_old_path_gives_the_new_objects(old, targets):
    with pytest.warns(DeprecationWarning):
        module = importlib.import_module(old)
    new = [importlib.import_module(t) for t in targets]
    if len(targets) == 1:
        assert module is new[0]  # the same module: patching one patches the other
    public = [(t, n) for t in new for n in vars(t) if not n.startswith("_") and callable(getattr(t, n))]
    assert public
    for t, name in public:
        assert getattr(module, name) is getattr(next(m for m in new if hasattr(m, name)), name)


@pytest.mark.parametrize("module, names", sorted(_aliases.MOVED_NAMES.items()))
def test_a_moved_name_is_found_where_it_was(module, names):
    m = importlib.import_module(module)
    for name, target in names.items():
        with pytest.warns(DeprecationWarning, match=f"{module}.{name} moved to {target}.{name}"):
            assert getattr(m, name) is getattr(importlib.import_module(target), name)
    with pytest.raises(AttributeError):
        m.no_such_name  # noqa: B018
