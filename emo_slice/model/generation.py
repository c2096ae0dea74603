"""Text generation with the KV cache: greedy or sampled (temperature, top-p), batched with left padding.

`generate(model, input_ids, max_new_tokens)` runs the prompt once, then one token per step through the
same `EmoForCausalLM.hidden_states` with a `KVCache`: each step attends to the cached keys and values
instead of recomputing the prefix. Only the last position goes through the output head (`last_logits`):
the prompt pass makes [B, 1, V] logits, never [B, T, V]. Rows are left-padded to a common length; the padding mask and per-row
positions keep every row's computation equal to running it alone. Greedy decoding with the cache picks
the same tokens as greedy decoding by a full forward at every step (tests check it).

With `pool=P` (EMO's document pool at inference) the pool is chosen from the PROMPT: per layer, the top-P
routed experts of the prompt's summed router probability, computed on the prompt alone exactly as a
pooled forward (`pool_size=P`) does. Every later token (and the prompt itself) then routes inside that
fixed pool, so the KV cache stays valid (no earlier token's routing changes) and the cached decode equals
a full forward at every step that routes inside the same prompt pool (tests check both). A pool that grew
with the generated text would change the routing of tokens already cached: that is not offered.

Shape letters: the legend in `emo_slice/__init__.py`.
"""

from __future__ import annotations

import contextlib
import math

import torch

from emo_slice._aliases import module_getattr
from emo_slice.model.context import KVCache
from emo_slice.model.modeling import EmoForCausalLM


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
    logits_BV = logits_BV.float()
    # the largest logit subtracted before dividing: a small temperature gives -inf for the others, never inf - inf
    probs_BV = torch.softmax((logits_BV - logits_BV.amax(-1, keepdim=True)) / temperature, dim=-1)
    if top_p < 1.0:
        sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
        outside_BV = sorted_BV.cumsum(-1) - sorted_BV >= top_p  # the first token is always kept
        sorted_BV = sorted_BV.masked_fill(outside_BV, 0.0)
        probs_BV = torch.zeros_like(probs_BV).scatter_(-1, order_BV, sorted_BV)
    return torch.multinomial(probs_BV, 1, generator=generator)[:, 0]


@torch.no_grad()
def prompt_pools(model, rows: list[list[int]], pool: int) -> list[torch.Tensor]:
    """Per layer, bool [B, R_l]: the routed experts in each prompt's pool, each prompt run alone (no padding)
    with `pool_size=pool`, the routing pretraining and pooled evaluation use (a prompt holding EOS is several
    documents: the pool of its last one, which the continuation extends)."""
    device = next(model.parameters()).device
    per_row = []
    for r in rows:
        routings: list = []  # the routing is all that is needed: no output head, no logits
        model.hidden_states(torch.tensor([r], device=device), routings, pool_size=pool)
        per_row.append([None if rt is None else torch.isfinite(rt.masked_logits_NR[-1]) for rt in routings])
    return [
        None if per_row[0][layer] is None else torch.stack([row[layer] for row in per_row])
        for layer in range(len(per_row[0]))
    ]  # None for a dense layer (no experts)


@contextlib.contextmanager
def restricted_routing(model, pools_L_BR: list[torch.Tensor | None]):
    """Within the block, row b of every forward routes only among the experts pools_L_BR[layer][b] (router
    logits of the others set to -inf before the softmax, as the document pool does); None: layer unrestricted."""

    def hook_for(layer: int):
        def hook(_module, _inputs, logits_NE):
            keep_BR = pools_L_BR[layer]
            B, R = keep_BR.shape
            z_BTE = logits_NE.view(B, -1, logits_NE.shape[-1])
            routed = z_BTE[..., :R].masked_fill(~keep_BR[:, None, :], float("-inf"))
            return torch.cat([routed, z_BTE[..., R:]], dim=-1).view_as(logits_NE)

        return hook

    handles = [
        m.mlp.gate.register_forward_hook(hook_for(l))
        for l, m in enumerate(model.model.layers)
        if pools_L_BR[l] is not None and hasattr(m.mlp, "gate")
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def last_logits(model, input_ids_BT: torch.Tensor, progress=None, **inputs) -> torch.Tensor:
    """Logits [B, 1, V] at the last position only: the output head runs on one position per row, so a prompt
    pass never makes [B, T, V] logits (at vocab 100k, gigabytes for a batch of long prompts). model: an
    `EmoForCausalLM`, or a layer loop (`emo_slice.io.loading.LayerwiseModel`: resident or streamed, which
    reports progress(layers done, layers, tokens) per layer); any other model-like (a wrapper) is called whole
    and its last position kept."""
    if isinstance(model, EmoForCausalLM):
        return model.head(model.hidden_states(input_ids_BT, **inputs)[:, -1:])
    if _is_layer_loop(model):
        (x_BTD,) = model.hidden_states([{"input_ids_BT": input_ids_BT, **inputs}], progress=progress)
        return model.head(x_BTD[:, -1:])
    return model(input_ids_BT, **inputs)[:, -1:]


def _is_layer_loop(model) -> bool:
    return not isinstance(model, torch.nn.Module) and hasattr(model, "hidden_states") and hasattr(model, "head")


def _device(model) -> torch.device:
    return model.device if _is_layer_loop(model) else next(model.parameters()).device


def _whole(model) -> EmoForCausalLM:
    """The EmoForCausalLM behind `model` (a resident layer loop's), for what hooks its layers: the pool."""
    whole = model.model if _is_layer_loop(model) else model
    if not isinstance(whole, EmoForCausalLM):
        raise ValueError("a document pool in generation needs the whole model in memory, not streamed layers")
    return whole


def _rows_of(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    return [ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask)]


def check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    """Refuse (ValueError, parameters named) settings sampling cannot use: a temperature that is not a finite
    number >= 0 or that float32 cannot divide by (0 is greedy decoding), top_p outside (0, 1], fewer than zero
    new tokens. (The generate command checks its settings before any loading, with the same rules.)"""
    if max_new_tokens < 0:
        raise ValueError(f"`max_new_tokens={max_new_tokens}` must be 0 or more")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"`temperature={temperature}` must be a finite number, 0 or more (0: greedy)")
    if 0 < temperature < torch.finfo(torch.float32).tiny:
        raise ValueError(f"`temperature={temperature}` is below float32's smallest normal number: the logits overflow")
    if not 0 < top_p <= 1:
        raise ValueError(f"`top_p={top_p}` must be in (0, 1]")


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
    pool: int | None = None,
    progress=None,
) -> torch.Tensor:
    """Prompt + continuation ids [B, T + new] (left padding kept; after EOS a row is filled with pad).

    model: an `EmoForCausalLM` or a `LayerwiseModel` (resident, or streamed: every step reads the layers).
    input_ids: a [B, T] tensor (left-padded, with attention_mask) or a list of token lists (padded here).
    eos_token_id: a row stops after producing it (one id or several). Sampling draws from `generator`.
    pool: route inside each prompt's own top-P document pool, chosen from the prompt (see the module doc).
    progress(layers done, layers, tokens): the prompt pass's layers, where the model is a layer loop."""
    cfg = model.config
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    device = _device(model)
    if isinstance(input_ids, list):
        input_ids, attention_mask = left_pad(input_ids, pad, device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    check_sampling(max_new_tokens, temperature, top_p)
    sampling = (do_sample, temperature, top_p, generator, progress)
    if not pool:
        return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad, sampling)
    whole = _whole(model)
    pools_L_BR = prompt_pools(whole, _rows_of(input_ids, attention_mask), pool)
    with restricted_routing(whole, pools_L_BR):
        return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad, sampling)


def _decode(model, input_ids, attention_mask, max_new_tokens: int, eos_token_id, pad: int, sampling) -> torch.Tensor:
    """The cached decode loop of `generate` (inputs already checked); sampling: (do_sample, temperature,
    top_p, generator, progress of the prompt pass)."""
    do_sample, temperature, top_p, generator, progress = sampling
    device = _device(model)
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []), device=device)
    mask_BS = attention_mask.to(device).long()
    pos_BT = (mask_BS.cumsum(-1) - 1).clamp_min(0)
    cache = KVCache()
    ids_BT = input_ids.to(device)
    logits_B1V = last_logits(model, ids_BT, progress, attention_mask=mask_BS, position_ids_BT=pos_BT, cache=cache)
    out = [input_ids.to(device)]
    done_B = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
    next_pos_B = pos_BT[:, -1] + 1
    for step in range(max_new_tokens):
        tok_B = _pick(logits_B1V[:, -1], do_sample, temperature, top_p, generator)
        tok_B = torch.where(done_B, torch.full_like(tok_B, pad), tok_B)
        out.append(tok_B[:, None])
        done_B |= torch.isin(tok_B, eos)
        if step + 1 == max_new_tokens or bool(done_B.all()):  # host sync: stop when every row is done
            break
        mask_BS = torch.cat([mask_BS, torch.ones_like(mask_BS[:, :1])], dim=1)
        logits_B1V = last_logits(
            model, tok_B[:, None], attention_mask=mask_BS, position_ids_BT=next_pos_B[:, None], cache=cache
        )
        next_pos_B = next_pos_B + 1
    return torch.cat(out, dim=1)


__getattr__ = module_getattr(__name__)  # complete, read_prompts, resolve_device: moved (emo_slice/_aliases.py)
