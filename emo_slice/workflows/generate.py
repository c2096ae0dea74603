"""`emo-slice generate`: continue prompts with one model or several, side by side (`complete`), and the
prompts of `--prompt` / `--prompts` (`read_prompts`). Decoding itself is `emo_slice.model.generation.generate`.
"""

from __future__ import annotations

import torch

from emo_slice.model.devices import resolve_device
from emo_slice.model.generation import generate


def complete(
    paths: dict[str, str],
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    dtype: str | None = None,
    device: str = "auto",
    pool: int | None = None,
    progress=None,
) -> dict:
    """Continue every prompt with each model ({label: checkpoint}): {"models", "prompts", "completions"}.

    Each model is loaded, run and released in turn; the same prompts, seed and settings for all. Compute
    dtype: `dtype`, else bfloat16 on a GPU and float32 on the CPU. pool: EMO's document pool, chosen from
    each prompt (0 or None: none). Settings out of range: UsageError, before any loading."""
    from emo_slice.artifacts import provenance
    from emo_slice.errors import UsageError
    from emo_slice.eval.runner import check_pool
    from emo_slice.io.checkpoint import Checkpoint

    if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise UsageError("--max-new-tokens must be >= 1, --temperature >= 0 and --top-p in (0, 1]")
    dev = resolve_device(device)
    for path in paths.values():  # a pool too small for either model is refused before any loading
        check_pool(pool, Checkpoint(path).config)
    pool = pool or None
    dt = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    out: dict = {
        "prompts": prompts,
        "completions": {},
        "models": {},
        "settings": {
            "max_new_tokens": max_new_tokens,
            "greedy": greedy,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "dtype": dt,
            "device": str(dev),
            "pool": pool,
        },
        "provenance": provenance(command="emo-slice generate"),
    }
    for label, path in paths.items():
        out["completions"][label], out["models"][label] = _continue(path, prompts, dev, out["settings"])
        if progress is not None:
            progress(label)
    return out


def _continue(path: str, prompts: list[str], dev, settings: dict) -> tuple[list[str], dict]:
    """One model's continuations of the prompts (loaded, run, released) and its description."""
    from emo_slice.io.loading import load_model
    from emo_slice.io.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    model = load_model(path, dtype=settings["dtype"]).to(dev)
    rows = [tok.encode(p) or [tok.eos_token_id or 0] for p in prompts]
    ids = generate(
        model,
        rows,
        settings["max_new_tokens"],
        do_sample=not settings["greedy"],
        temperature=settings["temperature"],
        top_p=settings["top_p"],
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        generator=torch.Generator(device=dev).manual_seed(settings["seed"]),
        pool=settings["pool"],
    )
    T = max(len(r) for r in rows)
    texts = []
    for b in range(len(rows)):
        new = ids[b, T:].tolist()
        if tok.eos_token_id is not None and tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        texts.append(tok.decode(new))
    cfg = model.config
    return texts, {
        "path": str(path),
        "experts_per_layer": [cfg.experts_in_layer(l) for l in range(cfg.num_hidden_layers)],
    }


def read_prompts(prompt: str | None, path=None, field: str = "prompt") -> list[str]:
    """The prompts of `--prompt TEXT` or `--prompts FILE` (one per line, or JSONL records with `field`)."""
    from pathlib import Path

    from emo_slice.errors import DataError, UsageError

    if (prompt is None) == (path is None):
        raise UsageError("give exactly one of --prompt TEXT or --prompts FILE")
    if prompt is not None:
        if not prompt:
            raise UsageError("--prompt is empty; give some text to continue")
        return [prompt]
    p = Path(path)
    if p.suffix in (".jsonl", ".json"):
        from emo_slice.data.sources import read_records

        texts = [r.get(field) for r in read_records(p, flag="--prompts")]
        if not all(isinstance(t, str) and t for t in texts):
            raise DataError(f"--prompts {p}: every record needs a non-empty string field {field!r}")
        return texts
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise DataError(f"--prompts {p}: no such file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"--prompts {p} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if not lines:
        raise DataError(f"--prompts {p} holds no prompt; write one per line")
    return lines
