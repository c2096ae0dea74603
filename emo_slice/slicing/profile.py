"""Profiling: how much each routed expert is used on calibration input, scored every way users ask for.

The model runs through `LayerwiseModel` (one decoder layer's weights in memory at a time), on chunks of
the calibration rows of at most `max_tokens_in_memory` tokens (every batch of a chunk goes through layer l
before layer l+1 is read; then the next chunk), so a long input is never held in memory whole. The
statistics come from the forward itself, through its per-layer trace hook: the routing, the residual
stream, the layer output and each chosen expert's output norm are what the layer computed, so no
expert runs twice. Per layer and routed expert e
(shared experts are always kept and never scored):

  mean-prob  mean over tokens of softmax(router logits over routed experts)[e]       (EMO's default)
  frequency  share of tokens whose top-k' includes e
  reap       mean over tokens routed to e of w_te * ||expert_e(x_t)||_2              (REAP)
  easy-ep    sum over tokens routed to e of w_te * ||expert_e(x_t)|| * (1 - cos(h_t, h_t + MoE(x_t)))
  count      tokens routed to e
where x_t = RMSNorm(h_t) is the MoE input, h_t the residual stream entering the MoE block and w_te the
routing weight. Pad and special tokens are not counted. `--greedy` (the EMO paper's method) scores layer
l on the model whose layers < l are already sliced to K experts by the same method.

A profile is a JSON file (format "emo-slice-profile", see profile_file.py): scores per layer, the model's
fingerprint, the inputs, the settings and provenance; extract reads it to slice at any K without
running the model again. Shape letters: the legend in `emo_slice/__init__.py`.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Callable

import torch
import torch.nn.functional as F

from emo_slice.artifacts import provenance
from emo_slice.data.sources import check_tokenizer_fits
from emo_slice.errors import UsageError
from emo_slice.eval.runner import check_pool
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import default_dtype, open_model
from emo_slice.io.tokenizer import load_tokenizer
from emo_slice.model.context import LayerTrace
from emo_slice.model.devices import resolve_device
from emo_slice.slicing.calibration import (
    batch_groups,
    calibration_texts,
    chunk_groups,
    group_tokens,
    make_rows,
    pad_batch,
)
from emo_slice.slicing.profile_file import PROFILE_FORMAT, PROFILE_VERSION, router_digest
from emo_slice.slicing.profile_settings import DEFAULT_MAX_TOKENS_IN_MEMORY, ProfileSettings  # noqa: F401
from emo_slice.slicing.select import METHODS, choose_experts, parse_keep, slice_layer


class LayerStats:
    """Running float64 sums for one layer's R routed experts, fed by the layer's trace."""

    def __init__(self, n_routed: int):
        R = n_routed
        self.n_routed, self.tokens = R, 0
        self.prob_sum_R = torch.zeros(R, dtype=torch.float64)
        self.count_R = torch.zeros(R, dtype=torch.float64)
        self.reap_sum_R = torch.zeros(R, dtype=torch.float64)
        self.easy_sum_R = torch.zeros(R, dtype=torch.float64)

    def add(self, t: LayerTrace, valid_N: torch.Tensor) -> None:
        """Accumulate one batch: only the valid (non-pad, non-special) tokens count. The batch's sums are
        taken on the layer's device (float64; float32 where it has none, as on MPS) and added here."""
        r, k, R = t.routing, t.routing.n_routed_k, self.n_routed
        D, dev = t.h_BTD.shape[-1], t.h_BTD.device
        acc = torch.float32 if dev.type == "mps" else torch.float64
        valid_N = valid_N.to(dev)
        self.tokens += int(valid_N.sum())
        experts_M = r.experts_NK[valid_N, :k].reshape(-1)
        weight_M = r.weights_NK[valid_N, :k].to(acc).reshape(-1)
        norm_M = t.expert_norm_NK[valid_N, :k].to(acc).reshape(-1)
        change_N = _change(t.h_BTD.reshape(-1, D), t.y_BTD.reshape(-1, D), valid_N, acc)
        contrib_M = weight_M * norm_M
        prob_R, count_R = r.probs_NR[valid_N].to(acc).sum(0), torch.bincount(experts_M, minlength=R).to(acc)
        on_cpu = dev.type == "cpu"  # on the CPU the batch is added straight into the running sums
        reap_R, easy_R = (
            (self.reap_sum_R, self.easy_sum_R) if on_cpu else (torch.zeros(R, dtype=acc, device=dev) for _ in "ab")
        )
        reap_R.index_add_(0, experts_M, contrib_M)
        easy_R.index_add_(0, experts_M, contrib_M * change_N.repeat_interleave(k))
        if on_cpu:
            self.prob_sum_R += prob_R
            self.count_R += count_R
            return
        sums_4R = torch.stack([prob_R, count_R, reap_R, easy_R]).to("cpu", torch.float64)  # one transfer
        for total_R, batch_R in zip((self.prob_sum_R, self.count_R, self.reap_sum_R, self.easy_sum_R), sums_4R):
            total_R += batch_R

    def scores(self) -> dict[str, list[float]]:
        n = max(self.tokens, 1)
        reap_R = torch.where(self.count_R > 0, self.reap_sum_R / self.count_R.clamp(min=1), 0.0)
        return {
            "mean-prob": (self.prob_sum_R / n).tolist(),
            "frequency": (self.count_R / n).tolist(),
            "reap": reap_R.tolist(),
            "easy-ep": self.easy_sum_R.tolist(),
            "count": self.count_R.long().tolist(),
        }


CHANGE_BLOCK_ROWS = 1024  # tokens whose residual change is taken at a time


def _change(h_ND: torch.Tensor, y_ND: torch.Tensor, valid_N: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """1 - cos(h_t, y_t) of the valid tokens, at `acc`, CHANGE_BLOCK_ROWS tokens at a time: the copies at
    `acc` (float64: twice the activations) are one block, not the whole batch (each token's value is the same)."""
    idx_V = valid_N.nonzero().squeeze(1)
    out_V = torch.empty(idx_V.numel(), dtype=acc, device=h_ND.device)
    for i in range(0, idx_V.numel(), CHANGE_BLOCK_ROWS):
        rows = idx_V[i : i + CHANGE_BLOCK_ROWS]
        out_V[i : i + CHANGE_BLOCK_ROWS] = 1.0 - F.cosine_similarity(h_ND[rows].to(acc), y_ND[rows].to(acc), dim=-1)
    return out_V


def _greedy_keep(settings: ProfileSettings, cfg) -> int | None:
    if settings.method not in METHODS:
        raise UsageError(f"--method {settings.method!r} is unknown; choose one of {', '.join(METHODS)}")
    if settings.max_length is not None and settings.max_length < 1:
        raise UsageError(f"--max-length {settings.max_length} must be at least 1")
    context = cfg.max_position_embeddings
    if settings.max_length is not None and settings.max_length > context:
        raise UsageError(
            f"--max-length {settings.max_length} is more than the model's context (max_position_embeddings "
            f"{context}); choose at least 1 and at most {context}, or leave --max-length out to use it"
        )

    check_pool(settings.pool, cfg)
    if settings.max_tokens_in_memory < 1:
        raise UsageError(f"--max-tokens-in-memory {settings.max_tokens_in_memory} must be at least 1")
    if not settings.greedy:
        return None
    if settings.keep is None:
        raise UsageError(
            "--greedy slices each layer before scoring the next, so it needs --keep K (e.g. --keep 16 or 25%)"
        )
    return parse_keep(settings.keep, cfg.fewest_experts(), cfg.num_shared_experts)


def _calibration(ckpt: Checkpoint, settings: ProfileSettings):
    """(rows, batch groups, pad id, special ids, inputs description): everything read and checked before
    the model runs."""
    cfg = ckpt.config
    tok = load_tokenizer(ckpt.path)
    check_tokenizer_fits(tok, cfg.vocab_size, str(ckpt.path))
    texts, inputs = calibration_texts(settings.examples, settings.field, settings.split, settings.shots, settings.seed)
    max_len = settings.max_length or cfg.max_position_embeddings
    rows = make_rows(tok, texts, max_len)
    del texts
    special = {
        i
        for i in (cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        if i is not None
    }
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    if settings.pool and cfg.eos_token_id is not None:
        pad = cfg.eos_token_id  # each padding token opens a pool segment of its own: rows pool apart
    groups = batch_groups(rows, settings.max_batch_tokens)
    inputs.update(tokenizer=tok.describe(), rows=len(rows), tokens_total=sum(len(r) for r in rows), max_length=max_len)
    return rows, groups, pad, special, inputs


def _check_greedy_fits(settings: ProfileSettings, chunks: list, padded: int, hidden: int) -> None:
    """Greedy slices layer l from the statistics of every token before layer l+1 runs, so all activations are
    held at once: refuse (one line) rather than exceed the memory bound."""
    if settings.greedy and len(chunks) > 1:
        need = 2 * padded * hidden * 4
        raise UsageError(
            f"--greedy holds every calibration token's activations at once ({padded:,} tokens, about "
            f"{need / 2**30:.1f} GiB), more than --max-tokens-in-memory {settings.max_tokens_in_memory:,}; "
            "give fewer or shorter --examples, or raise --max-tokens-in-memory"
        )


def profile_model(
    model: str | os.PathLike | Checkpoint, settings: ProfileSettings, progress: Callable[[int, int], None] | None = None
) -> dict:
    """Run the calibration input through the model layer by layer; return the profile (a dict).

    Memory: the rows run in chunks of at most settings.max_tokens_in_memory padded tokens; each chunk goes
    through every layer before the next chunk starts, so activations of one chunk are held at a time, and
    the layers are read from the checkpoint once per chunk (the price of the bound: more reading, for a
    large model and many chunks). The statistics are sums over batches, added in the same order for every
    layer, so they equal one pass exactly. --greedy needs every token at once (see _check_greedy_fits).
    progress(done, total, tokens) counts layer passes (chunks x layers) and the tokens pushed through them,
    before the first layer and after each.
    """
    dev = resolve_device(settings.device)  # a bad device is refused before anything is read
    dtype = default_dtype(settings.dtype, dev)
    ckpt = model if isinstance(model, Checkpoint) else Checkpoint(model)
    cfg = ckpt.config
    n_shared, L = cfg.num_shared_experts, cfg.num_hidden_layers
    n_keep = _greedy_keep(settings, cfg)
    rows, groups, pad, special, inputs = _calibration(ckpt, settings)
    chunks = chunk_groups(rows, groups, settings.max_tokens_in_memory)
    _check_greedy_fits(settings, chunks, sum(group_tokens(rows, g) for g in groups), cfg.hidden_size)
    inputs.update(chunks=len(chunks))
    stats = [LayerStats(cfg.experts_in_layer(l) - n_shared) for l in range(L)]
    greedy_kept: list[list[int]] = []
    lw = open_model(ckpt, dtype, dev, layerwise=settings.layerwise, max_memory=settings.max_memory)
    tokens_before = 0.0
    for c, chunk in enumerate(chunks):
        batches = [tuple(t.to(dev) for t in pad_batch(rows, g, pad, special)) for g in chunk]

        def trace(b: int, t: LayerTrace, batches=batches) -> None:
            stats[t.layer].add(t, batches[b][1].reshape(-1))

        def after_layer(l: int, layer):
            if n_keep is None or not cfg.is_moe_layer(l):
                if n_keep is not None:
                    greedy_kept.append([])  # a dense layer: nothing to slice
                return None
            kept = choose_experts(
                stats[l].scores().get(settings.method),
                stats[l].n_routed,
                n_shared,
                n_keep,
                settings.method,
                settings.seed,
                l,
            )
            greedy_kept.append(kept)
            return slice_layer(layer, kept) if l + 1 < L else None  # later layers see the sliced layer's output

        inputs_b = [
            {"input_ids_BT": ids} | ({"pool_size": settings.pool} if settings.pool else {}) for ids, _ in batches
        ]
        n_valid = sum(int(valid.sum()) for _, valid in batches)  # for the tokens/s of the progress bar

        def on_layer(l: int, _L: int, tokens: float, c=c, before=tokens_before) -> None:
            if progress is not None and (l or not c):  # a chunk's start is the previous chunk's end
                progress(c * L + l, len(chunks) * L, before + tokens)

        lw.hidden_states(
            inputs_b, trace=trace, expert_norms=True, after_layer=after_layer, progress=on_layer, n_tokens=n_valid
        )
        tokens_before += n_valid
        del batches
    run = {"dtype": str(lw.dtype).replace("torch.", ""), "device": str(dev), "placement": lw.placement}
    return _profile_dict(ckpt, settings, stats, inputs, run, n_keep, greedy_kept)


def _profile_dict(ckpt: Checkpoint, settings: ProfileSettings, stats, inputs, run: dict, n_keep, greedy_kept) -> dict:
    cfg = ckpt.config
    n_shared, L = cfg.num_shared_experts, cfg.num_hidden_layers
    layers_out = [
        {
            "layer": l,
            "experts": cfg.experts_in_layer(l),
            "shared": n_shared,
            "routed": st.n_routed,
            "tokens": st.tokens,
            "scores": st.scores(),
        }
        for l, st in enumerate(stats)
    ]
    return {
        "format": PROFILE_FORMAT,
        "format_version": PROFILE_VERSION,
        "model": {
            "path": str(ckpt.path.resolve()),
            "source": ckpt.source,
            "fingerprint": ckpt.fingerprint(),
            "router_digest": router_digest(ckpt),
            "num_hidden_layers": L,
            "experts_per_layer": [cfg.experts_in_layer(l) for l in range(L)],
            "num_shared_experts": n_shared,
            "num_experts_per_tok": cfg.num_experts_per_tok,
        },
        "inputs": inputs,
        "settings": {**asdict(settings), **run},  # the dtype, device and placement the run used
        "greedy": {"keep": n_keep, "method": settings.method, "seed": settings.seed, "kept": greedy_kept}
        if settings.greedy
        else None,
        "tokens": layers_out[cfg.moe_layers()[0]]["tokens"] if layers_out else 0,  # a dense layer counts none
        "layers": layers_out,
        "provenance": provenance(),
    }
