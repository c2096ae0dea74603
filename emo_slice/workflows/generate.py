"""`emo-slice generate`: continue prompts with one model or several, side by side.

`GenerateSpec` names the models, the prompts (`--prompt` or a `--prompts` file: `read_prompts`) and the
decoding settings; `run(spec)` continues every prompt with each model (`complete`). Decoding itself is
`emo_slice.model.generation.generate` (KV cache, left padding).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

from emo_slice.artifacts import provenance
from emo_slice.data.sources import read_records
from emo_slice.errors import DataError, UsageError
from emo_slice.safejson import read_limited
from emo_slice.specs import BATCH_SIZE, DEVICE, DTYPE, INPUT, MAX_MEMORY, MODEL, POOL, Spec, param

FLOAT32_TINY = 2.0**-126  # float32's smallest normal number: a smaller temperature overflows the logits


@dataclass(frozen=True)
class GenerateSettings:
    """How to continue the prompts: length, decoding (greedy or sampled), seed, device, dtype, pool."""

    max_new_tokens: int = param(64, "New tokens generated at most per prompt.")
    sample: bool = param(False, "Sample with --temperature and --top-p instead of greedy decoding (the default).")
    temperature: float = param(1.0, "Sampling temperature.")
    top_p: float = param(1.0, "Nucleus sampling: keep the smallest set of tokens with this probability.")
    seed: int = param(0, "Random seed of the sampling.")
    dtype: str | None = param(None, DTYPE)
    device: str = param("auto", DEVICE)
    max_memory: int | None = param(
        None, MAX_MEMORY + " A model that does not fit is streamed for every new token: slow, but it runs."
    )
    pool: int | None = param(
        None,
        POOL + " Here the pool is chosen from the PROMPT (per layer, its top P experts) and the generated tokens "
        "route inside it, so the KV cache stays exact.",
    )
    batch_size: int = param(16, BATCH_SIZE)


@dataclass(frozen=True)
class GenerateSpec(Spec):
    """The models `emo-slice generate` runs, the prompts they continue, and how."""

    model: str = param(doc=MODEL, flag="MODEL", role=INPUT)
    against: str | None = param(
        None, "A second model (e.g. the full one) continuing the same prompts, shown beside it.", role=INPUT
    )
    prompt: str | None = param(None, "A prompt to continue.")
    prompts: str | None = param(
        None, "A file of prompts: one per line (.txt) or JSONL with a 'prompt' field.", role=INPUT
    )
    settings: GenerateSettings = param(GenerateSettings())


def run(spec: GenerateSpec, progress=None) -> dict:
    """Continue the prompts of spec with spec.model (and spec.against): see `complete`."""
    paths = {"model": spec.model, **({"against": spec.against} if spec.against else {})}
    return complete(paths, read_prompts(spec.prompt, spec.prompts), settings=spec.settings, progress=progress)


def check_settings(s: GenerateSettings) -> None:
    """Settings out of range: UsageError naming the parameter."""
    if s.max_new_tokens < 1:
        raise UsageError(f"`max_new_tokens={s.max_new_tokens}` must be at least 1")
    if not (math.isfinite(s.temperature) and s.temperature >= 0):
        raise UsageError(f"`temperature={s.temperature}` must be a finite number, 0 or more (0: greedy)")
    if 0 < s.temperature < FLOAT32_TINY:
        raise UsageError(
            f"`temperature={s.temperature}` is below float32's smallest normal number, so the logits divided by it "
            "overflow; give 0 for greedy decoding, or a temperature such as 0.1"
        )
    if not 0 < s.top_p <= 1:
        raise UsageError(f"`top_p={s.top_p}` must be in (0, 1]")
    if s.batch_size < 1:
        raise UsageError(f"`batch_size={s.batch_size}` must be at least 1")


def complete(
    paths: dict[str, str], prompts: list[str], *, settings: GenerateSettings | None = None, progress=None, **options
) -> dict:
    """Continue every prompt with each model ({label: checkpoint}): {"models", "prompts", "completions", "settings"}.

    settings: GenerateSettings (its field docs say what each does); `options` are its fields as keywords
    (`max_new_tokens=32`; earlier versions' `greedy=False` means `sample=True`), applied over it. Each model is
    loaded, run and released in turn; the same prompts, seed and settings for all. Compute dtype: `dtype`,
    else bfloat16 on a GPU and float32 on the CPU; weights held at the stored dtype where narrower. Each model is
    resident when it fits (in max_memory bytes when given, else in the device's free memory), else streamed
    layer by layer. progress(label, done, total, tokens=None, unit=None): each prompt batch's layers ("LABEL
    prompt"), then each model's end (progress(label, 1, 1)). Settings out of range: UsageError, before any
    loading."""
    import torch

    from emo_slice.eval.runner import check_pool  # torch-free --help: torch loads when the command runs
    from emo_slice.io.checkpoint import Checkpoint
    from emo_slice.model.devices import resolve_device

    if "greedy" in options:
        options["sample"] = not options.pop("greedy")
    s = replace(settings or GenerateSettings(), **options)
    check_settings(s)
    dev = resolve_device(s.device)
    for path in paths.values():  # a pool too small, or prompts that do not fit, refused before any loading
        cfg = Checkpoint(path).config
        check_pool(s.pool, cfg)
        check_fits(path, cfg.max_position_embeddings, prompts, s.max_new_tokens)
    dt = s.dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    recorded = {f.name: getattr(s, f.name) for f in fields(s)} | {
        "dtype": dt,
        "device": str(dev),
        "pool": s.pool or None,
    }
    out: dict = {
        "prompts": prompts,
        "completions": {},
        "models": {},
        "settings": recorded | {"greedy": not s.sample},
        "provenance": provenance(command="emo-slice generate"),
    }
    for label, path in paths.items():
        on_layer = None if progress is None else functools.partial(_prompt_progress, progress, f"{label} prompt")
        out["completions"][label], out["models"][label] = _continue(
            path, prompts, dev, out["settings"], torch, on_layer
        )
        if progress is not None:
            progress(label, 1, 1)
    return out


def _prompt_progress(progress, label: str, done: int, total: int, tokens: float) -> None:
    progress(label, done, total, tokens, "layers")


def check_fits(path: str, context: int, prompts: list[str], max_new_tokens: int) -> None:
    """Refuse (UsageError) prompts that with max_new_tokens new tokens need more positions than the model's
    context (as eval refuses a max_new_tokens that leaves no room): decoding would never reach the end."""
    from emo_slice.io.tokenizer import load_tokenizer  # torch-free --help

    if max_new_tokens >= context:
        raise UsageError(
            f"`max_new_tokens={max_new_tokens}` leaves no room for the prompt in {path}'s {context}-token context; "
            f"choose fewer than {context}"
        )
    tok = load_tokenizer(path)
    longest = max(len(tok.encode(p)) or 1 for p in prompts)
    if longest + max_new_tokens > context:
        raise UsageError(
            f"`max_new_tokens={max_new_tokens}` after a prompt of {longest} tokens needs {longest + max_new_tokens} "
            f"positions, more than {path}'s {context}-token context; choose {max(1, context - longest)} or fewer "
            "new tokens, or a shorter prompt"
        )


def _continue(path: str, prompts: list[str], dev, settings: dict, torch, progress) -> tuple[list[str], dict]:
    """One model's continuations of the prompts, batch_size prompts per batch (loaded, run, released), and its
    description. Every batch draws from one generator seeded once."""
    from emo_slice.io.loading import STREAMED, open_model  # torch-free --help
    from emo_slice.io.tokenizer import load_tokenizer
    from emo_slice.model.generation import generate

    tok = load_tokenizer(path)
    model = open_model(path, settings["dtype"], dev, max_memory=settings["max_memory"])
    if settings["pool"] and model.placement == STREAMED:
        raise UsageError(
            f"`pool` in generate needs {path} whole in memory, but it is streamed layer by layer (it does not fit in "
            "`max_memory` or the free memory); raise `max_memory` or leave `pool` out"
        )
    rows = [tok.encode(p) or [tok.eos_token_id or 0] for p in prompts]
    generator = torch.Generator(device=dev).manual_seed(settings["seed"])
    texts = []
    for start in range(0, len(rows), settings["batch_size"]):
        batch = rows[start : start + settings["batch_size"]]
        ids = generate(
            model,
            batch,
            settings["max_new_tokens"],
            do_sample=settings["sample"],
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            generator=generator,
            pool=settings["pool"],
            progress=progress,
        )
        T = max(len(r) for r in batch)
        for b in range(len(batch)):
            new = ids[b, T:].tolist()
            if tok.eos_token_id is not None and tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id)]
            texts.append(tok.decode(new))
    cfg = model.config
    return texts, {
        "path": str(path),
        "experts_per_layer": [cfg.experts_in_layer(l) for l in range(cfg.num_hidden_layers)],
        "placement": model.placement,
        "weight_dtype": str(model.weight_dtype).replace("torch.", ""),
    }


def read_prompts(prompt: str | None, path=None, field: str = "prompt") -> list[str]:
    """The prompts of `--prompt TEXT` or `--prompts FILE` (one per line, or JSONL records with `field`)."""
    if (prompt is None) == (path is None):
        raise UsageError("give exactly one of `prompt` TEXT or `prompts` FILE")
    if prompt is not None:
        if not prompt:
            raise UsageError("`prompt` is empty; give some text to continue")
        return [prompt]
    p = Path(path)
    if p.suffix in (".jsonl", ".json"):
        texts = [r.get(field) for r in read_records(p, flag="`prompts`")]
        if not all(isinstance(t, str) and t for t in texts):
            raise DataError(f"`prompts={p}`: every record needs a non-empty string field {field!r}")
        return texts
    raw = read_limited(p, 1 << 30, hint="give a text file of prompts, one per line")  # a regular file, bounded
    try:
        lines = [ln for ln in raw.decode("utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise DataError(f"`prompts={p}` is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if not lines:
        raise DataError(f"`prompts={p}` holds no prompt; write one per line")
    return lines
