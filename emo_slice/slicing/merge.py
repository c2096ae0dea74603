"""Merging a (fine-tuned) slice back into its full model: streaming surgery, one tensor at a time.

A slice keeps some experts of each layer (`slice.json` records their ids in the model it was cut from);
fine-tuning changes them. `merge(full, tuned, out)` writes a model shaped like the full one in which the
kept experts' tensors come from the tuned slice, at their original positions:

- mode "replace": the tuned tensor (cast to the full tensor's stored dtype);
- mode "average" with weight a: (1 - a) * full + a * tuned, computed in float32 (`torch.lerp`) and stored
  in the full tensor's dtype (a = 1 is replace, a = 0 the full model);
- by default only the kept ROUTED experts are merged (as AllenAI's `merge_pruned_experts_back.py`);
  `also` adds "router" (the kept experts' router rows), "shared" (the shared experts) and "non-moe"
  (attention, norms, embeddings, output head: every other tensor whose name and shape the slice shares).

Tensors are told apart by each family's names (model/hf_names.py: EMO, OLMoE, Qwen3-MoE, Qwen2-MoE, whose
separate gated shared expert is the "shared" part, Mixtral); a dense layer has nothing to merge. Every tensor
the merge does not change is copied as a byte range of its shard (never materialised); a
replaced tensor whose dtype is the full one's is a byte copy of the slice's. So a merge of the untuned
slice reproduces the full model bit for bit. The slice must be of THIS model: the fingerprint and router
digest its `slice.json` records are checked against the full model (a slice of a slice is traced to its
root). The output holds the full model's config.json, tokenizer and side files, and `merge.json`
recording both parents (paths, fingerprints), the mode, the parts merged and what was skipped.
Written to a temporary folder renamed into place; neither input is modified.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from emo_slice import artifacts
from emo_slice.errors import CheckpointError, UsageError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.safefiles import folder_file
from emo_slice.io.safetensors import TensorInfo
from emo_slice.io.writer import ShardWriter
from emo_slice.model.hf_names import expected_hf_names, expert_name, hf_order, model_tensors, parse_expert, parse_router
from emo_slice.slicing.extract import MANIFEST, copied_files
from emo_slice.slicing.profile_file import router_digest

MERGE_FILE = "merge.json"
MODES = ("replace", "average")
PARTS = ("router", "shared", "non-moe")


@dataclass(frozen=True)
class MergeRecipe:
    """How a merge makes its tensors: the mode, the weight a of the tuned tensors (average), the parts besides the
    kept routed experts."""

    mode: str = "replace"
    weight: float | None = None
    also: tuple[str, ...] = ()

    def checked(self) -> "MergeRecipe":
        if self.mode not in MODES:
            raise UsageError(f"`mode={self.mode!r}` is unknown; choose replace or average")
        unknown = [p for p in self.also if p not in PARTS]
        if unknown:
            raise UsageError(f"`also={unknown[0]!r}` is unknown; choose from {', '.join(PARTS)}")
        if self.mode == "replace":
            if self.weight is not None:
                raise UsageError("`weight` applies to `mode='average'` only; drop it or merge with mode average")
            return MergeRecipe("replace", None, tuple(p for p in PARTS if p in self.also))
        w = 0.5 if self.weight is None else self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
            raise UsageError(f"`weight={w}` must be a number from 0 (the full model) to 1 (the tuned slice)")
        return MergeRecipe("average", float(w), tuple(p for p in PARTS if p in self.also))


# ---------------------------------------------------------------------------------------------
# Which experts: the slice's record, checked against the full model
# ---------------------------------------------------------------------------------------------


def _ids(value, n_layers: int) -> list[list[int]] | None:
    ok = (
        isinstance(value, list)
        and len(value) == n_layers
        and all(isinstance(x, list) and all(type(e) is int for e in x) for x in value)
    )
    return value if ok else None


def _lineage(manifest: dict) -> list[tuple[dict, list[list[int]] | None]]:
    """(source record, expert ids in that source) from the direct parent to the root."""
    layers = manifest.get("layers")
    n = len(layers) if isinstance(layers, list) else -1
    direct = _ids([r.get("kept_experts") if isinstance(r, dict) else None for r in layers], n) if n > 0 else None
    src = manifest.get("source")
    out = [(src, direct)] if isinstance(src, dict) else []
    root_ids = _ids(manifest.get("kept_experts"), n)
    while isinstance(src, dict) and isinstance(src.get("slice_of"), dict):
        src = src["slice_of"]
        out.append((src, None))
    if len(out) > 1:
        out[-1] = (out[-1][0], root_ids)
    return out


def kept_in(full: Checkpoint, tuned: Checkpoint) -> list[list[int]]:
    """The ids, in `full`, of the experts each layer of the slice `tuned` holds (in the slice's order), from its
    slice.json; refused when the slice was not cut from this model (fingerprint and router digest differ)."""
    return _match(full, tuned)[0]


def routing_factors(manifest: dict, level: int, n_layers: int) -> list[float | None]:
    """Per layer, the routing-mass factor (slicing/rescale.py) the slice's routed down projections carry against
    the model `level` steps up its lineage (0: the model it was cut from): to be divided out when merging back."""
    rec = manifest.get("rescale")
    if not isinstance(rec, dict):
        return [None] * n_layers
    f = rec.get("factors" if level == 0 else "total")
    ok = isinstance(f, list) and len(f) == n_layers
    ok = ok and all(x is None or (type(x) in (int, float) and 0 < x <= 1e6) for x in f)
    if not ok:
        raise CheckpointError(
            f"slice.json's rescale record is damaged (factors {str(f)[:60]}); extract the slice again"
        )
    return f


def _match(full: Checkpoint, tuned: Checkpoint) -> tuple[list[list[int]], int]:
    """kept_in's ids and the lineage level at which `full` was found (0: the slice's direct source)."""
    manifest = tuned.side_json(MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != "emo-slice-slice":
        raise UsageError(
            f"--slice {tuned.path} has no {MANIFEST} (it is not a slice emo-slice extracted, nor fine-tuned from one), "
            "so which experts it holds is unknown; give a slice written by `emo-slice extract` or `emo-slice finetune`"
        )
    fp, digest = full.fingerprint(), None
    lineage = _lineage(manifest)
    for level, (src, ids) in enumerate(lineage):
        if src.get("fingerprint") != fp:
            continue
        digest = digest or router_digest(full)
        if src.get("router_digest", digest) == digest and ids is not None:
            return _check_ids(ids, full, tuned), level
    src = lineage[0][0] if lineage else {}
    raise UsageError(
        f"--slice {tuned.path} is a slice of another model ({src.get('path')}, fingerprint {src.get('fingerprint')}, "
        f"routers {src.get('router_digest')}) than {full.path} (fingerprint {fp}); merge it into the model it was "
        "cut from"
    )


def _check_ids(ids: list[list[int]], full: Checkpoint, tuned: Checkpoint) -> list[list[int]]:
    cf, ct = full.config, tuned.config
    if ct.num_hidden_layers != cf.num_hidden_layers or len(ids) != cf.num_hidden_layers:
        raise UsageError(f"--slice {tuned.path} has {ct.num_hidden_layers} layers, {full.path} {cf.num_hidden_layers}")
    for l, kept in enumerate(ids):
        if not cf.is_moe_layer(l):  # a dense layer: no experts to merge
            if kept:
                raise CheckpointError(f"{tuned.path / MANIFEST} is damaged: it lists experts for dense layer {l}")
            continue
        E = cf.experts_in_layer(l)
        if len(kept) != ct.experts_in_layer(l) or len(set(kept)) != len(kept) or any(not 0 <= e < E for e in kept):
            raise CheckpointError(
                f"{tuned.path / MANIFEST} is damaged: layer {l} lists experts {kept[:8]} but the slice holds "
                f"{ct.experts_in_layer(l)} of {full.path}'s {E}; extract the slice again"
            )
    return ids


# ---------------------------------------------------------------------------------------------
# The surgery
# ---------------------------------------------------------------------------------------------


def _check_layout(ckpt: Checkpoint, flag: str) -> None:
    cfg = ckpt.config
    tied = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    extra = sorted(set(ckpt.infos) - set(expected_hf_names(cfg)) - tied)
    if extra:
        raise CheckpointError(
            f"{flag} {ckpt.path} holds {extra[0]}, which is not part of the {cfg.model_type} layout config.json "
            f"describes ({len(extra)} such tensors); emo-slice only merges tensors it knows and will not guess"
        )


def _separate_shared(cfg) -> set[str]:
    """Checkpoint names of a shared expert kept apart from the routed ones (Qwen2-MoE's gated shared MLP)."""
    return {hf for ours, _, hf in model_tensors(cfg) if ".mlp.shared_expert" in ours}


@dataclass
class _Entry:
    name: str
    full: TensorInfo
    tuned: TensorInfo | None = None  # the whole tensor comes from the slice
    rows: list[tuple[int, int]] | None = None  # router: (row in full, row in slice)
    part: str = ""
    factor: float | None = None  # a rescaled slice's routed down projection: divided by this before merging


def _plan(full: Checkpoint, tuned: Checkpoint, ids: list[list[int]], also: tuple[str, ...], factors=None):
    """(entries in checkpoint order, skipped non-MoE names): where each output tensor comes from."""
    cfg, entries, skipped = full.config, [], []
    factors = factors or [None] * cfg.num_hidden_layers
    apart = _separate_shared(cfg)
    for name in sorted(full.infos, key=hf_order):
        info, e = full.infos[name], _Entry(name, full.infos[name])
        m, r = parse_expert(cfg, name), parse_router(cfg, name)
        if m:
            l, x, kind = m
            shared = x >= cfg.experts_in_layer(l) - cfg.num_shared_experts
            if x in ids[l] and (not shared or "shared" in also):
                e.tuned = tuned.info(expert_name(tuned.config, l, ids[l].index(x), kind))
                e.part = "shared" if shared else "routed"
                e.factor = factors[l] if kind == "down" and not shared else None
        elif r is not None:
            if "router" in also:
                e.rows, e.part = [(x, j) for j, x in enumerate(ids[r])], "router"
        elif name in apart:
            if "shared" in also:
                e.tuned, e.part = tuned.info(name), "shared"
        elif "non-moe" in also:
            t = tuned.infos.get(name)
            if t is not None and t.shape == info.shape:
                e.tuned, e.part = t, "non-moe"
            else:
                skipped.append(name)
        if e.tuned is not None and e.tuned.shape != info.shape:
            raise CheckpointError(
                f"--slice {tuned.path}: {e.tuned.name} has shape {list(e.tuned.shape)} but {name} of {full.path} "
                f"has {list(info.shape)}; the slice does not fit this model"
            )
        entries.append(e)
    return entries, skipped


def _blend(full_t: torch.Tensor, tuned_t: torch.Tensor, spec: MergeRecipe) -> torch.Tensor:
    """The merged values in full_t's dtype: tuned (replace) or (1 - a) full + a tuned in float32 (average)."""
    if spec.mode == "replace":
        return tuned_t.to(full_t.dtype)
    return torch.lerp(full_t.float(), tuned_t.float(), spec.weight).to(full_t.dtype)


def _source(e: _Entry, full: Checkpoint, tuned: Checkpoint, spec: MergeRecipe):
    """What the writer writes for entry e: a byte range (unchanged, or the slice's same-dtype tensor) or a maker."""
    if e.rows is not None:

        def rows():
            t = full.get(e.name)
            src = tuned.get(e.name)
            full_idx, tuned_idx = torch.tensor([a for a, _ in e.rows]), torch.tensor([b for _, b in e.rows])
            t[full_idx] = _blend(t[full_idx], src[tuned_idx], spec)
            return t

        return rows
    if e.tuned is None:
        return e.full
    if e.factor is not None:  # the routing-mass factor of a rescaled slice, divided out (in float32)
        return lambda: _blend(full.get(e.name), tuned.get(e.tuned.name, torch.float32) / e.factor, spec)
    if spec.mode == "replace" and e.tuned.dtype == e.full.dtype:
        return e.tuned
    return lambda: _blend(full.get(e.name), tuned.get(e.tuned.name), spec)


def merge(
    full: str | os.PathLike | Checkpoint,
    tuned: str | os.PathLike | Checkpoint,
    out: str | os.PathLike,
    spec: MergeRecipe = MergeRecipe(),
    *,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write `full` with the experts of the slice `tuned` merged back (see the module docstring); return the
    record written as merge.json."""
    spec = spec.checked()
    full = full if isinstance(full, Checkpoint) else Checkpoint(full)
    tuned = tuned if isinstance(tuned, Checkpoint) else Checkpoint(tuned)
    _check_layout(full, "FULL")
    _check_layout(tuned, "--slice")
    ids, level = _match(full, tuned)
    factors = routing_factors(tuned.side_json(MANIFEST), level, full.config.num_hidden_layers)
    artifacts.check_output(out, inputs=[full.path, tuned.path], overwrite=overwrite, folder=True)
    max_bytes = artifacts.parse_size(max_shard_size)
    entries, skipped = _plan(full, tuned, ids, spec.also, factors)
    record = _record(full, tuned, ids, spec, entries, skipped)
    total, done = sum(e.full.nbytes for e in entries), 0
    with artifacts.atomic_output_dir(out, overwrite=overwrite) as tmp:
        meta = {"created_by": "emo-slice merge", "full_fingerprint": record["full"]["fingerprint"]}
        w = ShardWriter(tmp, max_bytes, meta)
        for e in entries:
            src = _source(e, full, tuned, spec)
            w.add(e.name, src, dtype=e.full.torch_dtype, shape=e.full.shape)
            done += e.full.nbytes
            if progress is not None:
                progress(done, total)
        record["files"] = w.finish()
        _side_files(full, tmp)
        (tmp / MERGE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def _side_files(full: Checkpoint, tmp: Path) -> None:
    """The full model's config.json (verbatim), tokenizer and side files, and its own slice.json if it is a slice."""
    for name in ("config.json", MANIFEST):
        if name == "config.json" or full.side_json(name) is not None:
            shutil.copyfile(folder_file(full.path, name).resolve(), tmp / name)
    for p in copied_files(full.path):
        shutil.copy2(p.resolve(), tmp / p.name)


def _record(full: Checkpoint, tuned: Checkpoint, ids, spec: MergeRecipe, entries: list[_Entry], skipped) -> dict:
    counts = {p: 0 for p in ("routed", "shared", "router", "non-moe")}
    for e in entries:
        if e.part:
            counts[e.part] += 1
    return {
        "format": "emo-slice-merge",
        "format_version": 1,
        "mode": spec.mode,
        "weight": spec.weight,
        "also": list(spec.also),
        "full": {
            "path": str(full.path.resolve()),
            "fingerprint": full.fingerprint(),
            "router_digest": router_digest(full),
        },
        "slice": {
            "path": str(tuned.path.resolve()),
            "fingerprint": tuned.fingerprint(),
            "slice_record": tuned.side_json(MANIFEST).get("source"),
            "finetune": tuned.side_json("finetune.json"),
        },
        "experts": ids,
        "routing_factors_divided_out": any(e.factor is not None for e in entries),
        "tensors_merged": counts,
        "skipped_non_moe": skipped,
        "provenance": artifacts.provenance(),
    }


__all__ = ["merge", "kept_in", "MergeRecipe", "MODES", "PARTS", "MERGE_FILE"]
