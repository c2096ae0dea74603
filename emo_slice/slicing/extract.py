"""Extraction: write a checkpoint holding only the kept experts of every layer (streaming surgery).

A plan says, per layer, which original experts are kept (shared ones always, last). The surgery reads
nothing it does not need: every tensor whose dtype does not change is copied as a byte range of its
shard (copy_file_range, never materialised); only the routers are read, row-sliced and written. Expert
tensors are renamed to their new index; only where the plan carries routing-mass factors (`plan.scale`,
slicing/rescale.py) are the kept routed experts' down projections read and multiplied by their layer's factor
(in float32, stored back in their dtype). config.json gets num_experts = K,
num_experts_per_tok = min(k, K), output_router_logits = false (or num_experts_per_layer with
--per-layer). The files a checkpoint needs are copied from the source (an allow-list, `copied_files`:
generation config, tokenizer, remote code, README/LICENSE; never other weights, training state or the
source's provenance), and the tokenizer files it lacks are
written (a byte-level source gets the equivalent byte tokenizer.json, see io/tokenizer.py); `slice.json`
records the original ids per layer, the method, the scores used, K, the source's fingerprint and
emo-slice's version. The output is written to a temp folder renamed into place, so a crash leaves
nothing half-written; the source is never modified.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Callable

import torch

from emo_slice import artifacts
from emo_slice.errors import CheckpointError, UsageError
from emo_slice.io.checkpoint import INDEX_NAME, Checkpoint, parse_dtype
from emo_slice.io.safetensors import TensorInfo
from emo_slice.io.tokenizer import load_tokenizer, write_tokenizer_files
from emo_slice.io.writer import ShardWriter
from emo_slice.model.config import EmoConfig
from emo_slice.model.hf_names import expected_hf_names, expert_name, hf_order, parse_expert, parse_router
from emo_slice.slicing.profile_file import router_digest
from emo_slice.slicing.rescale import RULE
from emo_slice.slicing.select import SlicePlan

MANIFEST = "slice.json"


# ---------------------------------------------------------------------------------------------
# Surgery
# ---------------------------------------------------------------------------------------------


def sliced_config(ckpt: Checkpoint, plan: SlicePlan, dtype: torch.dtype | None) -> dict:
    """The source's config.json, verbatim except the keys a slice changes (validated as an EmoConfig): the
    family's expert count (`num_experts`, Mixtral's `num_local_experts`), top-k lowered to K where needed."""
    cfg = ckpt.config
    d = ckpt.side_json("config.json") or cfg.to_dict()
    moe = cfg.moe_layers()
    sizes = [len(plan.kept[l]) for l in moe]
    k = cfg.num_experts_per_tok
    if plan.per_layer:
        per_layer = [len(x) if cfg.is_moe_layer(l) else 0 for l, x in enumerate(plan.kept)]
        d.update(num_experts=max(sizes), num_experts_per_layer=per_layer, num_experts_per_tok=min(k, min(sizes)))
    else:
        d.update({key: sizes[0] for key in cfg.family.count_keys_in(d)}, num_experts_per_tok=min(k, sizes[0]))
        if d.get("num_experts_per_layer") is not None:
            d["num_experts_per_layer"] = None
    d["output_router_logits"] = False
    if dtype is not None:
        d["torch_dtype" if "torch_dtype" in d and "dtype" not in d else "dtype"] = str(dtype).replace("torch.", "")
    EmoConfig.from_dict(d)  # refuses anything inconsistent
    return d


def _check_layout(ckpt: Checkpoint) -> None:
    """Refuse checkpoints whose tensors we do not fully understand (no silent corruption)."""
    cfg = ckpt.config
    want = set(expected_hf_names(cfg))
    have = set(ckpt.infos) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    unknown = sorted(have - want)
    missing = sorted(want - have)
    if missing or unknown:
        layout = f"the {cfg.model_type} layout config.json describes"
        what = f"lacks {missing[0]}" if missing else f"holds {unknown[0]}, which is not part of {layout}"
        raise CheckpointError(
            f"{ckpt.path} {what} ({len(missing)} missing, {len(unknown)} unexpected tensors); "
            "emo-slice only slices tensors it knows and will not guess"
        )


def _factor(cfg: EmoConfig, plan: SlicePlan, l: int, e: int, kind: str) -> float | None:
    """The factor of one expert tensor: a kept routed expert's down projection in a rescaled layer, else None."""
    if plan.scale is None or kind != "down" or plan.scale[l] is None:
        return None
    return plan.scale[l] if e < cfg.experts_in_layer(l) - cfg.num_shared_experts else None


def _entries(ckpt: Checkpoint, plan: SlicePlan) -> list[tuple[str, TensorInfo, list[int] | None, float | None]]:
    """What the slice holds, in checkpoint order: (new name, source tensor, router rows kept or None, the
    routing-mass factor of a rescaled expert tensor or None)."""
    cfg = ckpt.config
    new_index = [{old: new for new, old in enumerate(kept)} for kept in plan.kept]
    entries = []
    for name in sorted(ckpt.infos, key=hf_order):
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: the embedding is the head (a stored copy is not part of the stock layout)
        info = ckpt.infos[name]
        m = parse_expert(cfg, name)
        if m:
            l, e, kind = m
            if e in new_index[l]:
                entries.append((expert_name(cfg, l, new_index[l][e], kind), info, None, _factor(cfg, plan, l, e, kind)))
            continue
        r = parse_router(cfg, name)
        entries.append((name, info, plan.kept[r] if r is not None else None, None))
    entries.sort(key=lambda x: hf_order(x[0]))
    return entries


def extract(
    model: str | os.PathLike | Checkpoint,
    plan: SlicePlan,
    out: str | os.PathLike,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write the sliced checkpoint described by plan to out; return the manifest."""
    ckpt = model if isinstance(model, Checkpoint) else Checkpoint(model)
    cfg = ckpt.config
    _check_layout(ckpt)
    if len(plan.kept) != cfg.num_hidden_layers:
        raise UsageError(f"the plan has {len(plan.kept)} layers but {ckpt.path} has {cfg.num_hidden_layers}")
    dt = parse_dtype(dtype)
    new_cfg = sliced_config(ckpt, plan, dt)
    artifacts.check_output(out, inputs=[ckpt.path], overwrite=overwrite, folder=True)
    max_bytes = artifacts.parse_size(max_shard_size)

    entries = _entries(ckpt, plan)
    total = sum(i.nbytes * (len(rows) / i.shape[0] if rows else 1) for _, i, rows, _ in entries)
    _check_disk(
        out, sum(i.nbytes * (len(rows) / i.shape[0] if rows else 1) * _ratio(i, dt) for _, i, rows, _ in entries)
    )

    source_manifest = ckpt.side_json(MANIFEST)
    manifest = _manifest(ckpt, plan, new_cfg, source_manifest)
    extras = copied_files(ckpt.path)
    done = 0
    with artifacts.atomic_output_dir(out, overwrite=overwrite) as tmp:
        w = ShardWriter(
            tmp, max_bytes, {"created_by": "emo-slice extract", "source_fingerprint": manifest["source"]["fingerprint"]}
        )
        for new_name, info, rows, factor in entries:
            if factor is not None:

                def make(info=info, factor=factor):
                    return (ckpt.get(info.name, torch.float32) * factor).to(dt or info.torch_dtype).contiguous()

                w.add(new_name, make, dtype=dt or info.torch_dtype, shape=tuple(info.shape))
            elif rows is not None:

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
        for p in extras:
            shutil.copy2(p.resolve(), tmp / p.name)
        write_tokenizer_files(tmp, load_tokenizer(ckpt.path), new_cfg)  # only the files the source lacks
        manifest["files"] = files
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if progress is not None:
        progress(total, total)
    return manifest


def _ratio(info, dt: torch.dtype | None) -> float:
    return 1.0 if dt is None else dt.itemsize / info.torch_dtype.itemsize


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _check_disk(out, need: float) -> None:
    """Refuse before writing when the slice's weights do not fit in the free space of out's disk."""
    where = Path(os.path.abspath(out))
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise UsageError(
            f"the slice needs {_size(need)} but {where} has {_size(free)} free; free some space, "
            "write --out to another disk, or keep fewer experts (--keep) or a smaller --save-dtype"
        )


# What a slice copies from its source besides weights and config.json: an allow-list. Never other weight
# files (a stray model.safetensors beside an index, *.bin, *.pt, training_state.pt), never the source's
# provenance.json or slice.json (the slice gets its own).
COPIED = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
COPIED_PATTERNS = (
    "*.tiktoken",
    "configuration_*.py",
    "modeling_*.py",
    "tokenization_*.py",
    "README*",
    "LICENSE*",
    "NOTICE*",
)
NEVER_COPIED = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".pkl",
    ".pickle",
    ".npz",
    ".h5",
    ".onnx",
    ".msgpack",
)


def copied_files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder a slice copies: allow-listed names that are regular files inside the
    folder (a link may point into the folder, or into its repository's blobs for a Hugging Face cache snapshot)."""
    folder = Path(folder)
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":  # HF cache: snapshots/<rev>/<file> -> ../../blobs/<hash>
        roots.append(folder.parent.parent.resolve() / "blobs")
    chosen = []
    for p in sorted(folder.iterdir()):
        name = p.name
        if name.lower().endswith(NEVER_COPIED) or not (
            name in COPIED or any(fnmatch.fnmatchcase(name, pat) for pat in COPIED_PATTERNS)
        ):
            continue
        target = p.resolve()
        if not any(target == r or r in target.parents for r in roots):
            raise CheckpointError(
                f"{p} is a link to {target}, outside the checkpoint folder; emo-slice never "
                "reads files outside it: replace the link by the file itself"
            )
        if not target.exists() or not stat.S_ISREG(target.stat().st_mode):
            raise CheckpointError(f"{p} is not a regular file; replace it by the file itself or remove it")
        chosen.append(p)
    return chosen


def _rescale_record(plan: SlicePlan, source_manifest: dict | None) -> dict | None:
    """The routing-mass factors of this slice against its source (`factors`) and against the root model of a
    slice of a slice (`total`: the source's total times these), or None when nothing is rescaled."""
    before = source_manifest.get("rescale") if isinstance(source_manifest, dict) else None
    before = before.get("total") if isinstance(before, dict) else None
    if plan.scale is None and before is None:
        return None
    mine = plan.scale or [None] * len(plan.kept)
    before = before if isinstance(before, list) and len(before) == len(mine) else [None] * len(mine)
    before = [b if type(b) in (int, float) and 0 < b <= 1e6 else None for b in before]  # the source may be tampered
    total = [None if a is None and b is None else (a or 1.0) * (b or 1.0) for a, b in zip(mine, before)]
    return {"rule": RULE, "factors": mine, "total": total}


def _manifest(ckpt: Checkpoint, plan: SlicePlan, new_cfg: dict, source_manifest: dict | None) -> dict:
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
        "format": "emo-slice-slice",
        "format_version": 1,
        "keep": plan.keep,
        "per_layer": plan.per_layer,
        "method": plan.method,
        "num_experts_per_tok": new_cfg["num_experts_per_tok"],
        "kept_experts": [x["original_experts"] for x in layers],
        "source": {
            "path": str(ckpt.path.resolve()),
            "fingerprint": ckpt.fingerprint(),
            "router_digest": router_digest(ckpt),
            "num_experts": cfg.num_experts,
            "num_experts_per_layer": cfg.num_experts_per_layer,
            "num_experts_per_tok": cfg.num_experts_per_tok,
            "num_shared_experts": cfg.num_shared_experts,
            "slice_of": source_manifest.get("source") if isinstance(source_manifest, dict) else None,
        },
        "profile": plan.profile,
        "rescale": _rescale_record(plan, source_manifest),
        "warnings": plan.warnings,
        "layers": layers,
        "provenance": artifacts.provenance(),
    }


__all__ = ["extract", "sliced_config", "copied_files", "MANIFEST", "INDEX_NAME"]
