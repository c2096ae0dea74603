"""Extraction: write a checkpoint holding only the kept experts of every layer (streaming surgery).

A plan says, per layer, which original experts are kept (shared ones always, last). The surgery reads
nothing it does not need: every tensor whose dtype does not change is copied as a byte range of its
shard (copy_file_range, never materialised); only the routers are read, row-sliced and written. Expert
tensors are renamed to their new index, nothing is rescaled. config.json gets num_experts = K,
num_experts_per_tok = min(k, K), output_router_logits = false (or num_experts_per_layer with
--per-layer). Every other file of the source folder is copied; `slice.json` records the original ids
per layer, the method, the scores used, K, the source's fingerprint and emo-slice's version. The output
is written to a temp folder renamed into place, so a crash leaves nothing half-written; the source is
never modified.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from emo_slice.io.checkpoint import INDEX_NAME, Checkpoint, ShardWriter, _tensor_order, atomic_output_dir, parse_dtype
from emo_slice.model.config import EmoConfig
from emo_slice.errors import CheckpointError, UsageError
from emo_slice.model.modeling import EXPERT_KEY, expected_hf_names
from emo_slice.slicing.profile import METHODS, choose_experts, parse_keep, router_digest

MANIFEST = "slice.json"
ROUTER_KEY = re.compile(r"^model\.layers\.(\d+)\.mlp\.gate\.weight$")


@dataclass
class SlicePlan:
    """Which original experts each layer keeps (routed ascending, then shared), and why."""

    kept: list[list[int]]  # per layer, original ids
    method: str  # mean-prob | frequency | reap | easy-ep | random | experts (given by hand)
    keep: int | list[int]  # K, or K per layer with per_layer
    per_layer: bool = False
    scores: list[list[float]] | None = None  # per layer, the method's score of every routed expert
    profile: dict | None = None  # what the scores came from (model, inputs, settings, provenance)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------

def parse_expert_list(text: str, cfg: EmoConfig, flag: str = "--experts") -> list[list[int]]:
    """'1,3,4,6' (every layer) or '1,3;0,2' (one list per layer) -> kept routed ids per layer.

    Shared expert ids may be listed (they are always kept anyway)."""
    L, S = cfg.num_hidden_layers, cfg.num_shared_experts
    parts = [p for p in text.split(";")]
    if len(parts) not in (1, L):
        raise UsageError(f"{flag} gives {len(parts)} lists separated by ';' but the model has {L} layers; "
                         "give one list for every layer or one per layer")
    out = []
    for l in range(L):
        part = parts[0] if len(parts) == 1 else parts[l]
        E = cfg.experts_in_layer(l)
        R = E - S
        try:
            ids = [int(x) for x in part.replace(" ", "").split(",") if x != ""]
        except ValueError:
            raise UsageError(f"{flag} {text!r}: write expert ids as integers, e.g. {flag} 1,3,4,6") from None
        bad = [i for i in ids if not 0 <= i < E]
        if bad:
            raise UsageError(f"{flag}: expert {bad[0]} does not exist in layer {l} (ids 0..{E - 1}, "
                             f"{R}..{E - 1} shared)")
        if len(set(ids)) != len(ids):
            raise UsageError(f"{flag} {text!r} lists an expert twice; list each once")
        routed = sorted(i for i in ids if i < R)
        if not routed:
            raise UsageError(f"{flag} keeps no routed expert in layer {l}; list at least one of 0..{R - 1}")
        out.append(routed)
    return out


def plan_slice(ckpt: Checkpoint, keep: str | int | None = None, *, experts: str | None = None,
               profile: dict | None = None, method: str = "mean-prob", per_layer: bool = False,
               seed: int = 0) -> SlicePlan:
    """Turn --keep plus (--experts | a profile | --method random) into kept experts per layer."""
    cfg = ckpt.config
    L, S = cfg.num_hidden_layers, cfg.num_shared_experts
    E_min = min(cfg.experts_in_layer(l) for l in range(L))
    k = cfg.num_experts_per_tok
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if experts is not None:
        routed = parse_expert_list(experts, cfg)
        sizes = {len(r) + S for r in routed}
        if len(sizes) > 1 and not per_layer:
            raise UsageError("--experts keeps a different number of experts per layer; pass --per-layer to allow "
                             "that (only EMO's own model code loads such a checkpoint) or list the same count")
        if keep is not None and not per_layer:
            K = parse_keep(keep, E_min, S)
            if K != len(routed[0]) + S:
                raise UsageError(f"--keep {keep} is {K} experts but --experts lists {len(routed[0])} routed + {S} "
                                 f"shared = {len(routed[0]) + S}; drop --keep or make them agree")
        kept = [r + list(range(cfg.experts_in_layer(l) - S, cfg.experts_in_layer(l))) for l, r in enumerate(routed)]
        sizes_l = [len(x) for x in kept]
        plan = SlicePlan(kept, "experts", sizes_l if per_layer else sizes_l[0], per_layer)
    else:
        if keep is None:
            raise UsageError("--keep K is required (experts per layer counting the shared ones, or a share like 25%)")
        K = parse_keep(keep, E_min, S)
        scores = None
        if method != "random":
            if profile is None:
                raise UsageError(f"--method {method} needs scores: give --profile FILE or --examples SRC")
            scores = [layer["scores"][method] for layer in profile["layers"]]
            g = profile.get("greedy")
            if g and per_layer:
                raise UsageError("--per-layer ranks experts across layers, but a --greedy profile's scores hold only "
                                 "for its own per-layer slice; use a one-pass profile for --per-layer")
            if g and (g.get("keep") != K or g.get("method") != method):
                raise UsageError(f"--profile was made with --greedy --keep {g.get('keep')} --method {g.get('method')}: "
                                 f"its scores only hold for that slice; extract with those or re-run profile "
                                 f"--greedy --keep {K} --method {method}")
        if per_layer:
            kept = _global_ranking(cfg, K, scores, method, seed)
            plan = SlicePlan(kept, method, [len(x) for x in kept], True, scores)
        else:
            kept = [choose_experts(scores[l] if scores else None, cfg.experts_in_layer(l) - S, S, K, method, seed, l)
                    for l in range(L)]
            plan = SlicePlan(kept, method, K, False, scores)
        if profile is not None:
            plan.profile = {key: profile.get(key) for key in ("model", "inputs", "settings", "greedy", "provenance")}
    smallest = min(len(x) for x in plan.kept)
    if smallest <= k:
        plan.warnings.append(
            f"K = {smallest} <= {k} experts per token: every kept expert fires on every token "
            f"(num_experts_per_tok becomes {min(k, smallest)}); the slice acts as a dense model")
    return plan


def _global_ranking(cfg: EmoConfig, K: int, scores, method: str, seed: int) -> list[list[int]]:
    """--per-layer: the L*(K-S) best (layer, expert) pairs over all layers, each layer keeping at least
    min(k, K) - S routed experts so num_experts_per_tok = min(k, K) holds everywhere."""
    L, S = cfg.num_hidden_layers, cfg.num_shared_experts
    floor = min(cfg.num_experts_per_tok, K) - S
    if method == "random":
        g = torch.Generator().manual_seed(seed)
        scores = [torch.rand(cfg.experts_in_layer(l) - S, generator=g).tolist() for l in range(L)]
    chosen = [set(choose_experts(scores[l], cfg.experts_in_layer(l) - S, 0, floor, method, seed, l))
              for l in range(L)]
    rest = sorted(((-scores[l][e], l, e) for l in range(L) for e in range(len(scores[l])) if e not in chosen[l]))
    budget = L * (K - S) - sum(len(c) for c in chosen)
    for _, l, e in rest[:max(budget, 0)]:
        chosen[l].add(e)
    return [sorted(c) + list(range(cfg.experts_in_layer(l) - S, cfg.experts_in_layer(l))) for l, c in enumerate(chosen)]


# ---------------------------------------------------------------------------------------------
# Checks on the output folder
# ---------------------------------------------------------------------------------------------

def check_output(source: Path, out: str | os.PathLike, overwrite: bool, flag: str = "--out") -> Path:
    """Refuse an output folder inside the source, holding the source, or already holding files."""
    src = Path(source).resolve()
    dst = Path(out).expanduser().resolve()
    if dst == src or src in dst.parents:
        raise UsageError(f"{flag} {out} is inside the source checkpoint {src}; the source is never modified, "
                         "choose a folder outside it")
    if dst in src.parents:
        raise UsageError(f"{flag} {out} contains the source checkpoint {src}; choose a folder outside it")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise UsageError(f"{flag} {out} already exists and is not empty; choose another folder or pass --overwrite")
    return dst


# ---------------------------------------------------------------------------------------------
# Surgery
# ---------------------------------------------------------------------------------------------

def sliced_config(ckpt: Checkpoint, plan: SlicePlan, dtype: torch.dtype | None) -> dict:
    """The source's config.json, verbatim except the keys a slice changes (validated as an EmoConfig)."""
    d = _read_json(ckpt.path / "config.json") or ckpt.config.to_dict()
    sizes = [len(x) for x in plan.kept]
    k = ckpt.config.num_experts_per_tok
    if plan.per_layer:
        d.update(num_experts=max(sizes), num_experts_per_layer=sizes, num_experts_per_tok=min(k, min(sizes)))
    else:
        d.update(num_experts=sizes[0], num_experts_per_tok=min(k, sizes[0]))
        if d.get("num_experts_per_layer") is not None:
            d["num_experts_per_layer"] = None
    d["output_router_logits"] = False
    if dtype is not None:
        d["torch_dtype" if "torch_dtype" in d and "dtype" not in d else "dtype"] = str(dtype).replace("torch.", "")
    EmoConfig.from_dict(d)  # refuses anything inconsistent
    return d


def _check_layout(ckpt: Checkpoint) -> None:
    """Refuse checkpoints whose tensors we do not fully understand (no silent corruption)."""
    want = set(expected_hf_names(ckpt.config))
    have = set(ckpt.infos)
    unknown = sorted(have - want)
    missing = sorted(want - have)
    if missing or unknown:
        what = f"lacks {missing[0]}" if missing else f"holds {unknown[0]}, which is not part of the EMO layout"
        raise CheckpointError(f"{ckpt.path} {what} ({len(missing)} missing, {len(unknown)} unexpected tensors); "
                              "emo-slice only slices the released EMO layout and will not guess")


def extract(model: str | os.PathLike | Checkpoint, plan: SlicePlan, out: str | os.PathLike, *,
            dtype: str | None = None, overwrite: bool = False, max_shard_size: str | int = "5GB",
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the sliced checkpoint described by plan to out; return the manifest."""
    from emo_slice.io.build import parse_size, provenance

    ckpt = model if isinstance(model, Checkpoint) else Checkpoint(model)
    cfg = ckpt.config
    _check_layout(ckpt)
    if len(plan.kept) != cfg.num_hidden_layers:
        raise UsageError(f"the plan has {len(plan.kept)} layers but {ckpt.path} has {cfg.num_hidden_layers}")
    dt = parse_dtype(dtype)
    new_cfg = sliced_config(ckpt, plan, dt)
    check_output(ckpt.path, out, overwrite)
    max_bytes = parse_size(max_shard_size)

    # new name -> (source TensorInfo, router rows or None)
    new_index = [{old: new for new, old in enumerate(kept)} for kept in plan.kept]
    entries = []
    for name in sorted(ckpt.infos, key=_tensor_order):
        info = ckpt.infos[name]
        m = EXPERT_KEY.match(name)
        if m:
            l, e, kind = int(m.group(1)), int(m.group(2)), m.group(3)
            if e not in new_index[l]:
                continue
            entries.append((f"model.layers.{l}.mlp.experts.{new_index[l][e]}.{kind}_proj.weight", info, None))
            continue
        r = ROUTER_KEY.match(name)
        entries.append((name, info, plan.kept[int(r.group(1))] if r else None))
    entries.sort(key=lambda x: _tensor_order(x[0]))
    total = sum(i.nbytes * (len(rows) / i.shape[0] if rows else 1) for _, i, rows in entries)

    source_manifest = _read_json(ckpt.path / MANIFEST)
    manifest = _manifest(ckpt, plan, new_cfg, source_manifest, provenance)
    done = 0
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        w = ShardWriter(tmp, max_bytes, {"created_by": "emo-slice extract", "source_fingerprint": manifest["source"]["fingerprint"]})
        for new_name, info, rows in entries:
            if rows is not None:
                def make(info=info, rows=rows):
                    return ckpt.get(info.name)[torch.tensor(rows)].to(dt or info.torch_dtype).contiguous()
                w.add(new_name, make, dtype=dt or info.torch_dtype, shape=(len(rows),) + tuple(info.shape[1:]))
            elif dt is None or dt == info.torch_dtype:
                w.add(new_name, info)  # byte range copy
            else:
                w.add(new_name, lambda info=info: ckpt.get(info.name, dt), dtype=dt, shape=info.shape)
            done += info.nbytes if rows is None else info.nbytes * len(rows) // info.shape[0]
            if progress is not None:
                progress(done, total)
        files = w.finish()
        (tmp / "config.json").write_text(json.dumps(new_cfg, indent=2) + "\n")
        for p in ckpt.extra_files():
            if p.name != MANIFEST:
                shutil.copy2(p, tmp / p.name)
        manifest["files"] = files
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    ckpt.close()
    if progress is not None:
        progress(total, total)
    return manifest


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _manifest(ckpt: Checkpoint, plan: SlicePlan, new_cfg: dict, source_manifest: dict | None, provenance) -> dict:
    """slice.json: the original expert ids per layer (traced through an earlier slice), method, scores, K."""
    cfg = ckpt.config
    layers = []
    earlier = source_manifest.get("layers") if isinstance(source_manifest, dict) else None
    for l, kept in enumerate(plan.kept):
        R = cfg.experts_in_layer(l) - cfg.num_shared_experts
        row = {"layer": l, "num_experts": len(kept), "kept_experts": kept}
        if earlier and l < len(earlier) and "original_experts" in earlier[l]:
            row["original_experts"] = [earlier[l]["original_experts"][e] for e in kept]
        else:
            row["original_experts"] = kept
        if plan.scores is not None:
            row["scores_of_kept"] = [plan.scores[l][e] for e in kept if e < R]
            row["scores"] = plan.scores[l]
        layers.append(row)
    return {
        "format": "emo-slice-slice", "format_version": 1,
        "keep": plan.keep, "per_layer": plan.per_layer, "method": plan.method,
        "num_experts_per_tok": new_cfg["num_experts_per_tok"],
        "kept_experts": [x["original_experts"] for x in layers],
        "source": {"path": str(ckpt.path.resolve()), "fingerprint": ckpt.fingerprint(),
                   "router_digest": router_digest(ckpt), "num_experts": cfg.num_experts,
                   "num_experts_per_layer": cfg.num_experts_per_layer,
                   "num_experts_per_tok": cfg.num_experts_per_tok, "num_shared_experts": cfg.num_shared_experts,
                   "slice_of": source_manifest.get("source") if isinstance(source_manifest, dict) else None},
        "profile": plan.profile,
        "warnings": plan.warnings,
        "layers": layers,
        "provenance": provenance(),
    }


__all__ = ["SlicePlan", "plan_slice", "extract", "parse_expert_list", "check_output", "sliced_config", "MANIFEST",
           "INDEX_NAME"]
