"""Typed, frozen specs: every field carries its default and the sentence `--help` shows for it.

A workflow (`emo_slice/workflows/`) takes one spec; the command line builds its options from the same
fields (`emo_slice.cli.options.spec_option`), so a default or a help text is written once:

    @dataclass(frozen=True)
    class SliceSpec:
        keep: str | None = param(None, "Experts kept per layer: a count like 16 or a share like 25%.")

`param(default, doc, flag=..., role=...)`: `flag` is the option's name on the command line (default
`--name-with-dashes`); `role` is "input" or "output" for a path the command reads or writes (the guard
`emo_slice.workflows.paths.check_paths` refuses an output on an input). `doc(Spec, name)`, `default(Spec,
name)`, `flag(Spec, name)` read them back; `flags(Spec)` maps each field to its flag (how a library error
naming a parameter becomes a flag on the command line). Torch-free.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_NO_DEFAULT = dataclasses.MISSING
INPUT, OUTPUT = "input", "output"


def param(default: Any = _NO_DEFAULT, doc: str = "", *, flag: str | None = None, role: str | None = None):
    """A spec field (dataclasses.field): its default (a list or dict default is kept as a tuple / copied per instance), the help
    sentence, its command-line flag and, for a path, whether the command reads (input) or writes it (output)."""
    meta = {"doc": doc, "flag": flag, "role": role}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _field(spec, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(spec):
        if f.name == name:
            return f
    raise KeyError(f"{getattr(spec, '__name__', spec)} has no field {name!r}")


def doc(spec, name: str) -> str:
    """The help sentence of a field."""
    return _field(spec, name).metadata.get("doc", "")


def default(spec, name: str) -> Any:
    """A field's default value (MISSING for a required field)."""
    f = _field(spec, name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def flag(spec, name: str) -> str:
    """A field's command-line flag: the one it declares, else --name-with-dashes."""
    return _field(spec, name).metadata.get("flag") or "--" + name.replace("_", "-")


def flags(spec) -> dict[str, str]:
    """Every field of a spec (and of the specs it holds) -> its flag."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(spec):
        out[f.name] = flag(spec, f.name)
        inner = default(spec, f.name)
        if dataclasses.is_dataclass(inner):
            out |= {k: v for k, v in flags(type(inner)).items() if k not in out}
    return out


def paths(spec_obj, role: str) -> list[tuple[str, str]]:
    """(flag, path) of every field of a spec instance (and of the specs it holds) declared with `role` (a list
    field gives each entry)."""
    out = []
    for f in dataclasses.fields(spec_obj):
        value = getattr(spec_obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out += paths(value, role)
        if f.metadata.get("role") != role:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and str(v) != "":
                out.append((flag(type(spec_obj), f.name), str(v)))
    return out


def attribute_docs(module: str, cls: str) -> dict[str, str]:
    """The attribute docstrings (a string right after a field) of a dataclass, read from its module's source
    without importing it (TrainConfig's module loads torch; `--help` must not): {field: first paragraph}."""
    import ast
    import importlib.util

    origin = importlib.util.find_spec(module).origin
    tree = ast.parse(open(origin, encoding="utf-8").read())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    out = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            out[node.target.id] = " ".join(str(after.value.value).split())
    return out


class Spec:
    """Base of the workflow specs: the paths a command reads (`inputs`) and writes (`outputs`), as (flag, path),
    from the fields declared with role "input" / "output" (a spec adds what it computes, e.g. a default path)."""

    def inputs(self) -> list[tuple[str, str]]:
        return paths(self, INPUT)

    def outputs(self) -> list[tuple[str, str]]:
        return paths(self, OUTPUT)


# ---- the shared vocabulary: one sentence per option that several commands take ---------------------------

DEVICE = (
    "Where the model runs: auto (a GPU when there is one), cpu, cuda, cuda:N or mps. The whole model is placed "
    "on it when it fits in its free memory, else streamed layer by layer."
)
LAYERWISE = (
    "Stream the layers even when the whole model fits: one layer's weights on the device at a time, the next one "
    "read (and copied) while the current one runs."
)
MAX_MEMORY = (
    "Memory the model may keep resident (e.g. 6GB): the whole model when its weights and a margin fit, else "
    "layers streamed one at a time (the next read ahead when two fit). Default: the device's free memory. A size "
    "that cannot hold one layer with the embedding and head is refused."
)
DTYPE = "Compute dtype: what the model runs in (default: bfloat16 on a CUDA GPU, float32 on the CPU and MPS)."
POOL = (
    "Route each document inside its own pool of P routed experts: the top P by the document's summed router "
    "probability, as EMO was pretrained (0: no pool, the default reference routing)."
)
BATCH_SIZE = "Rows per batch: items (rows) per forward pass."
MAX_LENGTH = (
    "Longest row in tokens (default: the model's context, max_position_embeddings; longer is refused); "
    "longer documents are cut into several rows."
)
OVERWRITE = (
    "Replace an existing output that emo-slice wrote (a folder with its .emo-slice marker, an empty folder, or a "
    "results/profile file); without it an existing output is refused before any work. Other files and folders "
    "are never deleted."
)
KEEP = "Experts kept per layer, counting the shared ones (as num_experts does): a count like 16 or a share like 25%."
METHOD = (
    "How experts are ranked: mean-prob (EMO's default), frequency, reap, easy-ep, or random (seeded, needs no scores)."
)
MODEL = "Checkpoint folder or Hugging Face Hub id."
RESCALE = (
    "Weight the kept routed experts as the full model does: their down projections times the router probability "
    "they held on the calibration input, in families whose top-k weights are not renormalised (EMO, OLMoE, "
    "Qwen2-MoE). auto: where a layer keeps at most top-k experts, so that every kept expert fires on every token "
    "(on the quickstart's models it kept 6.6 and 10.5 points more of the full model's bits per byte at 12.5%, docs/sweep.md); "
    "on: every sliced layer; off: the plain slice (the full model with the dropped experts' router logits at -inf). "
    "Needs a profile (--examples or --profile)."
)
