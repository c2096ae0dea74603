"""Deprecated import paths: modules and names that moved in 0.2.0 keep their old path for one release.

One table: `MOVED_MODULES` (a module that moved whole, or was split: the old name resolves each attribute in
its new homes, in order) and `MOVED_NAMES` (names that left a module which stays). `install()` (run by
`emo_slice/__init__.py`) puts a finder after the standard path finder, so it only answers for module files
that no longer exist; a module that stays forwards its moved names with `module_getattr(__name__)`. Each use
warns once per name (DeprecationWarning) with the new path. Torch-free.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings

REMOVED_IN = "0.3.0"

MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "emo_slice.slicing.pipeline": ("emo_slice.workflows.slice", "emo_slice.workflows.profile"),
    "emo_slice.slicing.sweep": ("emo_slice.workflows.sweep",),
    "emo_slice.slicing.autok": ("emo_slice.workflows.autok",),
    "emo_slice.quickstart": ("emo_slice.workflows.quickstart",),
    "emo_slice.io.info": ("emo_slice.workflows.info",),
    "emo_slice.train.run": ("emo_slice.workflows.pretrain",),
}
MOVED_NAMES: dict[str, dict[str, str]] = {
    "emo_slice.eval.harness": {"evaluate_and_save": "emo_slice.workflows.eval"},
    "emo_slice.model.generation": {
        "complete": "emo_slice.workflows.generate",
        "read_prompts": "emo_slice.workflows.generate",
        "resolve_device": "emo_slice.model.devices",
    },
}


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old path is deprecated and goes in emo-slice {REMOVED_IN}",
        DeprecationWarning,
        stacklevel=3,
    )


class _SplitModule(types.ModuleType):
    """An old module whose names now live in several modules: each attribute from the first that has it."""

    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name, f"Deprecated: moved to {', '.join(targets)}.")
        self.__targets = targets

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __dir__(self):
        return sorted({n for t in self.__targets for n in dir(importlib.import_module(t))})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as its new module (the same object: patching one patches the other)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED_MODULES else None

    def create_module(self, spec):
        targets = MOVED_MODULES[spec.name]
        _warn(spec.name, " and ".join(targets))
        return importlib.import_module(targets[0]) if len(targets) == 1 else _SplitModule(spec.name, targets)

    def exec_module(self, module) -> None:
        pass


def module_getattr(module: str):
    """A module's `__getattr__` that forwards the names MOVED_NAMES lists for it (with the warning)."""
    moved = MOVED_NAMES.get(module, {})

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        _warn(f"{module}.{name}", f"{moved[name]}.{name}")
        return getattr(importlib.import_module(moved[name]), name)

    return __getattr__


def install() -> None:
    """Put the finder right after the standard path finder: it answers only for module files that no longer
    exist, and before any later finder (an editable install's) could find an older copy."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    after = [i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder]
    sys.meta_path.insert(after[0] + 1 if after else len(sys.meta_path), _Finder())
