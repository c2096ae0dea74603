"""`emo-slice generate`: continue prompts with a model (and, with --against, the full model) side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.options import Device, DeviceComputeDType, Json, ModelArg, pool_option, seed_option, value

EPILOG = """Examples:

  emo-slice generate ./slice --against ./full --prompt "def fibonacci(n):" --max-new-tokens 48

  emo-slice generate ./slice --prompts prompts.txt --json          (one prompt per line, or JSONL with "prompt")

  emo-slice generate ./full --prompt "def fibonacci(n):" --pool 8     (EMO's document pool, chosen from the prompt)
"""


def _opt(flag: str, typ, help: str, **kw):
    return Annotated[typ, typer.Option(flag, help=help, **kw)]


@app.command("generate", epilog=EPILOG)
@cli_errors
def generate_cmd(
    model: ModelArg,
    prompt: _opt("--prompt", Optional[str], "A prompt to continue.", show_default=False) = None,
    prompts: _opt(
        "--prompts",
        Optional[Path],
        "A file of prompts: one per line (.txt) or JSONL with a 'prompt' field.",
        show_default=False,
    ) = None,
    against: _opt(
        "--against",
        Optional[str],
        "A second model (e.g. the full one) continuing the same prompts, shown beside it.",
        show_default=False,
    ) = None,
    max_new_tokens: _opt("--max-new-tokens", int, "Tokens to generate per prompt.") = 64,
    greedy: _opt("--greedy/--sample", bool, "Greedy decoding, or sampling with --temperature / --top-p.") = True,
    temperature: _opt("--temperature", float, "Sampling temperature.") = 1.0,
    top_p: _opt("--top-p", float, "Nucleus sampling: keep the smallest set of tokens with this probability.") = 1.0,
    seed: Annotated[int, seed_option("the sampling")] = 0,
    dtype: DeviceComputeDType = None,
    device: Device = "auto",
    pool: Annotated[
        Optional[int],
        pool_option(
            "Here the pool is chosen from the PROMPT (per layer, its top P experts) and the generated tokens route "
            "inside it, so the KV cache stays exact."
        ),
    ] = None,
    json_out: Json = False,
):
    """Generate continuations with the KV cache; with --against, both models continue the very same
    prompts with the same settings, shown side by side."""
    from emo_slice.workflows.generate import complete, read_prompts

    paths = {"model": model, **({"against": against} if against else {})}
    result = complete(
        paths,
        read_prompts(prompt, prompts),
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        dtype=value(dtype),
        device=device,
        pool=pool,
    )
    if json_out:
        print_json(result)
        return
    from emo_slice.cli.display import generation_table

    console.print(
        generation_table(result, {"model": Path(model).name or model, "against": Path(against).name if against else ""})
    )
