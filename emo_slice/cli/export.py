"""`emo-slice export`: a model or slice as a stock architecture (Qwen2-MoE folder, or llama.cpp GGUF)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.options import Json, ModelArg, Overwrite, out_option, value


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
    model: ModelArg,
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="qwen2-moe: a Hugging Face Qwen2MoeForCausalLM folder (no remote code); gguf: one llama.cpp "
            "file of architecture deepseek.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, out_option("Folder (qwen2-moe) or FILE.gguf (gguf) to write; outside the model.")],
    outtype: Annotated[
        Optional[OutType],
        typer.Option(
            "--outtype",
            help="Stored weight type: f32, f16, bf16, or q8_0 (gguf only). Default: the checkpoint's "
            "stored dtype (qwen2-moe then copies renamed tensors as bytes).",
            show_default=False,
        ),
    ] = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
):
    """Write a model or slice as a stock architecture that runtimes load without EMO's remote code.

    Routed experts, router rows and the one shared expert map one to one; logits equal emo-slice's (float32).
    Refused before any work: different expert counts per layer (--per-layer slices), a shared-expert count
    other than one, a tokenizer llama.cpp cannot reproduce (gguf)."""
    from emo_slice.cli.display import progress_bars
    from emo_slice.export import export as run_export

    with progress_bars({"exporting": "bytes"}, enabled=not json_out) as bar:
        summary = run_export(
            model,
            out,
            value(fmt),
            outtype=value(outtype),
            overwrite=overwrite,
            progress=None if bar is None else (lambda done, total: bar("exporting", done, total)),
        )
    if json_out:
        print_json(summary)
        return
    kind = "Qwen2MoeForCausalLM folder" if summary["format"] == "qwen2-moe" else f"GGUF ({summary['outtype']})"
    console.print(f"wrote {summary['out']}: {kind}, {summary['bytes'] / 1e6:.1f} MB, from {summary['source']['path']}")
