"""Text generation with the KV cache: greedy or sampled (temperature, top-p), batched with left padding.

`generate(model, input_ids, max_new_tokens)` runs the prompt once, then one token per step through the
same `EmoForCausalLM.forward` with a `KVCache`: each step attends to the cached keys and values instead
of recomputing the prefix. Rows are left-padded to a common length; the padding mask and per-row
positions keep every row's computation equal to running it alone. Greedy decoding with the cache picks
the same tokens as greedy decoding by a full forward at every step (tests check it).

Shape letters: the legend in `emo_slice/__init__.py`.
"""

from __future__ import annotations

import torch

from emo_slice.model.context import KVCache


def left_pad(rows: list[list[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], attention_mask [B, T]) with every row right-aligned."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    T = max(len(r) for r in rows)
    ids_BT = torch.full((len(rows), T), pad_token_id, dtype=torch.long, device=device)
    mask_BT = torch.zeros(len(rows), T, dtype=torch.long, device=device)
    for b, r in enumerate(rows):
        ids_BT[b, T - len(r) :] = torch.tensor(r, dtype=torch.long, device=device)
        mask_BT[b, T - len(r) :] = 1
    return ids_BT, mask_BT


def _pick(
    logits_BV: torch.Tensor, do_sample: bool, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    if not do_sample or temperature == 0:
        return logits_BV.argmax(-1)
    probs_BV = torch.softmax(logits_BV.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
        outside_BV = sorted_BV.cumsum(-1) - sorted_BV >= top_p  # the first token is always kept
        sorted_BV = sorted_BV.masked_fill(outside_BV, 0.0)
        probs_BV = torch.zeros_like(probs_BV).scatter_(-1, order_BV, sorted_BV)
    return torch.multinomial(probs_BV, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor | list[list[int]],
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Prompt + continuation ids [B, T + new] (left padding kept; after EOS a row is filled with pad).

    input_ids: a [B, T] tensor (left-padded, with attention_mask) or a list of token lists (padded here).
    eos_token_id: a row stops after producing it (one id or several). Sampling draws from `generator`."""
    cfg = model.config
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    device = next(model.parameters()).device
    if isinstance(input_ids, list):
        input_ids, attention_mask = left_pad(input_ids, pad, device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if max_new_tokens < 0 or temperature < 0 or not 0 < top_p <= 1:
        raise ValueError("max_new_tokens >= 0, temperature >= 0 and 0 < top_p <= 1 are required")
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []), device=device)
    mask_BS = attention_mask.to(device).long()
    pos_BT = (mask_BS.cumsum(-1) - 1).clamp_min(0)
    cache = KVCache()
    logits_BTV = model(input_ids.to(device), attention_mask=mask_BS, position_ids_BT=pos_BT, cache=cache)
    out = [input_ids.to(device)]
    done_B = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
    next_pos_B = pos_BT[:, -1] + 1
    for step in range(max_new_tokens):
        tok_B = _pick(logits_BTV[:, -1], do_sample, temperature, top_p, generator)
        tok_B = torch.where(done_B, torch.full_like(tok_B, pad), tok_B)
        out.append(tok_B[:, None])
        done_B |= torch.isin(tok_B, eos)
        if step + 1 == max_new_tokens or bool(done_B.all()):  # host sync: stop when every row is done
            break
        mask_BS = torch.cat([mask_BS, torch.ones_like(mask_BS[:, :1])], dim=1)
        logits_BTV = model(tok_B[:, None], attention_mask=mask_BS, position_ids_BT=next_pos_B[:, None], cache=cache)
        next_pos_B = next_pos_B + 1
    return torch.cat(out, dim=1)


def resolve_device(name: str = "auto"):
    """'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:N' or 'mps' -> torch.device, checked."""
    from emo_slice.errors import UsageError

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return (
            torch.device("mps")
            if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
            else torch.device("cpu")
        )
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {name}: no such GPU is visible; use --device cpu (or auto)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Metal is not available here; use --device cpu (or auto)")
    return device


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
    progress=None,
) -> dict:
    """Continue every prompt with each model ({label: checkpoint}): {"models", "prompts", "completions"}.

    Each model is loaded, run and released in turn; the same prompts, seed and settings for all. Compute
    dtype: `dtype`, else bfloat16 on a GPU and float32 on the CPU."""
    from emo_slice.artifacts import provenance
    from emo_slice.io.loading import load_model
    from emo_slice.io.tokenizer import load_tokenizer

    dev = resolve_device(device)
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
        },
        "provenance": provenance(command="emo-slice generate"),
    }
    for label, path in paths.items():
        tok = load_tokenizer(path)
        model = load_model(path, dtype=dt).to(dev)
        rows = [tok.encode(p) or [tok.eos_token_id or 0] for p in prompts]
        gen = torch.Generator(device=dev).manual_seed(seed)
        ids = generate(
            model,
            rows,
            max_new_tokens,
            do_sample=not greedy,
            temperature=temperature,
            top_p=top_p,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            generator=gen,
        )
        T = max(len(r) for r in rows)
        texts = []
        for b in range(len(rows)):
            new = ids[b, T:].tolist()
            if tok.eos_token_id is not None and tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id)]
            texts.append(tok.decode(new))
        out["completions"][label] = texts
        out["models"][label] = {
            "path": str(path),
            "experts_per_layer": [model.config.experts_in_layer(l) for l in range(model.config.num_hidden_layers)],
        }
        del model
        if progress is not None:
            progress(label)
    return out


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
