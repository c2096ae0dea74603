"""`emo-slice generate`: continue prompts with a model (and, with --against, the full model) side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from emo_slice.cli import app, cli_errors, console, print_json, warning_line
from emo_slice.cli.display import generation_table, progress_bars
from emo_slice.cli.options import DType, Json, deprecated, max_memory_option, spec_argument, spec_option, value
from emo_slice.workflows import generate as workflow
from emo_slice.workflows.generate import GenerateSettings, GenerateSpec

EPILOG = """Examples:

  emo-slice generate ./slice --against ./full --prompt "def fibonacci(n):" --max-new-tokens 48

  emo-slice generate ./slice --prompts prompts.txt --json          (one prompt per line, or JSONL with "prompt")

  emo-slice generate ./full --prompt "def fibonacci(n):" --sample --temperature 0.8 --seed 1

  emo-slice generate ./full --prompt "def fibonacci(n):" --pool 8     (EMO's document pool, chosen from the prompt)
"""
S = GenerateSettings


@app.command("generate", epilog=EPILOG)
@cli_errors
def generate_cmd(
    model: str = spec_argument(GenerateSpec, "model"),
    prompt: Optional[str] = spec_option(GenerateSpec, "prompt"),
    prompts: Optional[Path] = spec_option(GenerateSpec, "prompts"),
    against: Optional[str] = spec_option(GenerateSpec, "against"),
    max_new_tokens: int = spec_option(S, "max_new_tokens", show_default=True),
    sample: bool = spec_option(S, "sample"),
    temperature: float = spec_option(S, "temperature", show_default=True),
    top_p: float = spec_option(S, "top_p", show_default=True),
    seed: int = spec_option(S, "seed", show_default=True),
    batch_size: int = spec_option(S, "batch_size", show_default=True),
    dtype: Optional[DType] = spec_option(S, "dtype"),
    device: str = spec_option(S, "device", show_default=True),
    max_memory: Optional[int] = max_memory_option(S),
    pool: Optional[int] = spec_option(S, "pool"),
    greedy: deprecated("--greedy") = False,
    json_out: Json = False,
):
    """Generate continuations with the KV cache; with --against, both models continue the very same
    prompts with the same settings, shown side by side."""
    if greedy:  # the older spelling of the default (it also named the layer-by-layer selection of profile)
        warning_line("generate --greedy is deprecated: greedy decoding is the default (--sample samples)")
    decoding = dict(max_new_tokens=max_new_tokens, sample=sample, temperature=temperature, top_p=top_p, seed=seed)
    settings = S(**decoding, dtype=value(dtype), device=device, pool=pool, batch_size=batch_size, max_memory=max_memory)
    spec = GenerateSpec(model, against, prompt, str(prompts) if prompts is not None else None, settings)
    with progress_bars(enabled=not json_out) as bar:
        result = workflow.run(spec, progress=bar)
    if json_out:
        print_json(result)
        return
    console.print(
        generation_table(result, {"model": Path(model).name or model, "against": Path(against).name if against else ""})
    )
