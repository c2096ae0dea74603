"""What both exports share: opening and checking the source, the routed / shared split, byte ranges of
router rows, tokenizer files and the provenance record.

EMO layer l holds E experts, the LAST one shared (always on, weight exactly 1.0 when there is one shared
expert: softmax over a single logit); the router `mlp.gate.weight` has one row per expert, shared last.
Both targets route a softmax over the R = E - 1 routed experts only (no renormalisation) and add one
shared expert, so the shared router row is dropped and the routed rows 0..R-1 (the first R rows, one
contiguous byte range) are kept as they are.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from emo_slice import artifacts
from emo_slice.data.sources import check_tokenizer_fits
from emo_slice.errors import CheckpointError, UsageError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.safetensors import TensorInfo
from emo_slice.io.tokenizer import load_tokenizer, write_tokenizer_files
from emo_slice.model.families import EMO_TYPES
from emo_slice.model.hf_names import expected_hf_names

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
PROVENANCE = "export.json"
FLOAT_DTYPES = ("F32", "F16", "BF16")


def open_checkpoint(model) -> Checkpoint:
    return model if isinstance(model, Checkpoint) else Checkpoint(model)


def check_exportable(ckpt: Checkpoint, target: str) -> None:
    """Refuse, in one line, a checkpoint `target` cannot represent."""
    cfg = ckpt.config
    if cfg.model_type not in EMO_TYPES:
        refuse_stock_family(ckpt, target)
    counts = [cfg.experts_in_layer(l) for l in range(cfg.num_hidden_layers)]
    if len(set(counts)) > 1:
        raise UsageError(
            f"{ckpt.path} has a different expert count per layer (num_experts_per_layer {counts}); "
            f"{target} has one count for every layer: extract the slice without --per-layer"
        )
    if cfg.num_shared_experts != 1:
        raise UsageError(
            f"{ckpt.path} has num_shared_experts {cfg.num_shared_experts}; {target} adds exactly one "
            "shared expert per layer, so only EMO checkpoints with one shared expert export"
        )
    want, have = set(expected_hf_names(cfg)), set(ckpt.infos)
    missing, unknown = sorted(want - have), sorted(have - want)
    if missing or unknown:
        what = f"lacks {missing[0]}" if missing else f"holds {unknown[0]}, which is not part of the EMO layout"
        raise CheckpointError(f"{ckpt.path} {what}; emo-slice exports only the EMO layout and will not guess")
    odd = sorted({i.dtype for i in ckpt.infos.values()} - set(FLOAT_DTYPES))
    if odd:
        raise CheckpointError(
            f"{ckpt.path} stores {odd[0]} tensors; export reads float32, float16 or bfloat16 weights only"
        )
    check_tokenizer_fits(load_tokenizer(ckpt.path), cfg.vocab_size, str(ckpt.path))  # as eval refuses it


def refuse_stock_family(ckpt: Checkpoint, target: str) -> None:
    """An OLMoE / Qwen / Mixtral checkpoint (or a slice of one) is already stock: say in one line what loads it."""
    fam = ckpt.config.family
    if "gguf" in target or "llama.cpp" in target:
        raise UsageError(
            f"{ckpt.path} is a stock {fam.architecture} checkpoint, which llama.cpp's own converter turns into "
            f"GGUF (architecture {fam.gguf_arch}): python convert_hf_to_gguf.py {ckpt.path} --outfile OUT.gguf; "
            "emo-slice's gguf export is for EMO checkpoints"
        )
    raise UsageError(
        f"{ckpt.path} is already a stock {fam.architecture} checkpoint that transformers, vLLM and SGLang load "
        "without remote code: use the folder as it is (the qwen2-moe export converts EMO checkpoints)"
    )


def routed(cfg) -> tuple[int, int]:
    """(routed experts R, routed experts per token k') of every layer (one shared expert, the last)."""
    return cfg.experts_in_layer(0) - 1, cfg.top_k_in_layer(0) - 1


def first_rows(info: TensorInfo, rows: int) -> TensorInfo:
    """The byte range of a 2-D tensor's first `rows` rows, as a TensorInfo the ShardWriter copies verbatim."""
    row_bytes = info.nbytes // info.shape[0]
    return dataclasses.replace(info, shape=(rows,) + tuple(info.shape[1:]), end=info.start + rows * row_bytes)


def write_tokenizer(ckpt: Checkpoint, folder: Path, config: dict) -> list[str]:
    """Copy the source's tokenizer files, then write the ones it lacks (a byte-level model gets its byte
    tokenizer.json); returns the tokenizer files the folder holds."""
    copied = []
    extra = {p.name: p for p in ckpt.extra_files()}  # regular files inside the folder only (links checked)
    for name in TOKENIZER_FILES:
        if name in extra:
            shutil.copy2(extra[name], folder / name)
            copied.append(name)
    return copied + write_tokenizer_files(folder, load_tokenizer(ckpt.path), config)


def source_record(ckpt: Checkpoint) -> dict:
    """Where an export came from: path, fingerprint, and the slice's original expert ids when it is one."""
    rec = {"path": str(ckpt.path.resolve()), "fingerprint": ckpt.fingerprint(), "model_type": ckpt.config.model_type}
    manifest = ckpt.side_json("slice.json")
    if isinstance(manifest, dict):
        rec["slice_kept_experts"] = manifest.get("kept_experts")
        rec["slice_source"] = manifest.get("source")
    return rec


def check_out(ckpt: Checkpoint, out, *, overwrite: bool, folder: bool) -> Path:
    """The output path, refused (before any work) inside the model, or existing without overwrite (with it, a
    file is replaced only when it is a GGUF emo-slice exported)."""
    kind = None if folder else "gguf"
    return artifacts.check_output(out, inputs=[ckpt.path], overwrite=overwrite, folder=folder, kind=kind)
