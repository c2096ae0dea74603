"""`emo-slice export`: a model or slice as a stock architecture (Qwen2-MoE folder, or llama.cpp GGUF)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.display import progress_bars
from emo_slice.cli.options import Json, spec_argument, spec_option, value
from emo_slice.workflows import export as workflow
from emo_slice.workflows.export import ExportSpec


class ExportFormat(str, Enum):
    """Target of `export` (emo_slice.export.FORMATS)."""

    qwen2_moe = "qwen2-moe"
    gguf = "gguf"


class OutType(str, Enum):
    """Stored type of exported weights (emo_slice.export.OUTTYPES)."""

    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    q8_0 = "q8_0"


EPILOG = """Examples:

  emo-slice export ./emo-code-16 --format qwen2-moe --out ./emo-code-16-qwen2moe     (transformers, vLLM, SGLang)

  emo-slice export ./emo-code-16 --format gguf --outtype q8_0 --out emo-code-16.q8_0.gguf   (llama.cpp, Ollama)
"""


@app.command(epilog=EPILOG)
@cli_errors
def export(
    model: str = spec_argument(ExportSpec, "model"),
    format: ExportFormat = spec_option(ExportSpec, "format"),
    out: Path = spec_option(ExportSpec, "out"),
    outtype: Optional[OutType] = spec_option(ExportSpec, "outtype"),
    overwrite: bool = spec_option(ExportSpec, "overwrite"),
    json_out: Json = False,
):
    """Write a model or slice as a stock architecture that runtimes load without EMO's remote code.

    Routed experts, router rows and the one shared expert map one to one; logits equal emo-slice's (float32).
    Refused before any work: different expert counts per layer (--per-layer slices), a shared-expert count
    other than one, a tokenizer llama.cpp cannot reproduce (gguf)."""
    spec = ExportSpec(model=model, format=value(format), out=str(out), outtype=value(outtype), overwrite=overwrite)
    with progress_bars({"exporting": "bytes"}, enabled=not json_out) as bar:
        summary = workflow.run(
            spec, progress=None if bar is None else (lambda done, total: bar("exporting", done, total))
        )
    if json_out:
        print_json(summary)
        return
    kind = "Qwen2MoeForCausalLM folder" if summary["format"] == "qwen2-moe" else f"GGUF ({summary['outtype']})"
    console.print(f"wrote {summary['out']}: {kind}, {summary['bytes'] / 1e6:.1f} MB, from {summary['source']['path']}")
