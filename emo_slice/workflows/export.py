"""`emo-slice export`: a model or slice as a stock architecture (Qwen2-MoE folder, or llama.cpp GGUF)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from emo_slice.specs import INPUT, MODEL, OUTPUT, OVERWRITE, Spec, param
from emo_slice.workflows.paths import check_spec_paths


@dataclass(frozen=True)
class ExportSpec(Spec):
    """What `emo-slice export` writes, and how."""

    model: str = param(doc=MODEL, flag="MODEL", role=INPUT)
    format: str = param(
        doc="qwen2-moe: a Hugging Face Qwen2MoeForCausalLM folder (no remote code); gguf: one llama.cpp file of "
        "architecture deepseek."
    )
    out: str = param(doc="Folder (qwen2-moe) or FILE.gguf (gguf) to write; outside the model.", role=OUTPUT)
    outtype: str | None = param(
        None,
        "Stored weight type: f32, f16, bf16, or q8_0 (gguf only). Default: the checkpoint's stored dtype (qwen2-moe "
        "then copies renamed tensors as bytes).",
    )
    overwrite: bool = param(False, OVERWRITE)


def run(spec: ExportSpec, progress: Callable[[int, int], None] | None = None) -> dict:
    """Export spec.model; returns the summary (export.json's content). progress(done_bytes, total_bytes)."""
    from emo_slice.export import export  # torch-free --help: torch loads when the command runs

    check_spec_paths(spec)
    return export(spec.model, spec.out, spec.format, outtype=spec.outtype, overwrite=spec.overwrite, progress=progress)
