"""Export an EMO checkpoint (or a slice of one) to architectures stock runtimes load without remote code.

- `qwen2-moe`: a Hugging Face folder of `Qwen2MoeForCausalLM` (transformers, vLLM, SGLang), see qwen2_moe.py.
- `gguf`: one llama.cpp file of architecture `deepseek` (llama.cpp, Ollama, llama-cpp-python), see gguf.py.

Both stream: one tensor in memory at a time, bytes copied where a tensor is only renamed. Both refuse,
before any work, a checkpoint the target cannot represent (common.py `check_exportable`).
"""

from __future__ import annotations

import os
from typing import Callable

from emo_slice.errors import UsageError
from emo_slice.export.gguf import export_gguf
from emo_slice.export.qwen2_moe import export_qwen2_moe

FORMATS = ("qwen2-moe", "gguf")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def export(
    model,
    out: str | os.PathLike,
    format: str,
    *,
    outtype: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write `model` (folder, Hub id or Checkpoint) to `out` in `format`; returns a summary (export.json's content).

    outtype: stored type of the weights, f32 | f16 | bf16 (both formats) or q8_0 (gguf only); default the
    checkpoint's stored dtype. progress(done_bytes, total_bytes) is called as tensors are written.
    """
    if format not in FORMATS:
        raise UsageError(f"--format {format!r} is unknown; choose one of {', '.join(FORMATS)}")
    if outtype is not None and outtype not in OUTTYPES:
        raise UsageError(f"--outtype {outtype!r} is unknown; choose one of {', '.join(OUTTYPES)}")
    if format == "qwen2-moe":
        return export_qwen2_moe(model, out, outtype=outtype, overwrite=overwrite, progress=progress)

    return export_gguf(model, out, outtype=outtype, overwrite=overwrite, progress=progress)


__all__ = ["export", "FORMATS", "OUTTYPES"]
