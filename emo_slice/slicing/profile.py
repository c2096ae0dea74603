"""Profiling: how much each routed expert is used on calibration input, scored every way users ask for.

Legend (tensor suffixes): B batch, T time, N tokens (B*T), D hidden, F expert hidden, E experts in a
layer (routed + shared, shared last), R routed experts, S shared experts, K experts per token.

The model runs layer by layer through `LayerwiseModel`: every calibration token goes through layer l
before layer l+1 is read from the memory-mapped checkpoint, so peak memory is about one layer plus the
activations. Per layer and routed expert e (shared experts are always kept and never scored):

  mean-prob  mean over tokens of softmax(router logits over routed experts)[e]       (EMO's default)
  frequency  share of tokens whose top-k' includes e
  reap       mean over tokens routed to e of w_te * ||expert_e(x_t)||_2              (REAP)
  easy-ep    sum over tokens routed to e of w_te * ||expert_e(x_t)|| * (1 - cos(h_t, h_t + MoE(x_t)))
  count      tokens routed to e
where x_t = RMSNorm(h_t) is the MoE input, h_t the residual stream entering the MoE block and w_te the
routing weight. Pad and special tokens are not counted. `--greedy` (the EMO paper's method) scores layer
l on the model whose layers < l are already sliced to K experts by the same method.

A profile is a JSON file (format "emo-slice-profile"): scores per layer, the model's fingerprint, the
inputs, the settings and provenance; extract reads it to slice at any K without running the model.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from emo_slice.io.checkpoint import Checkpoint, parse_dtype
from emo_slice.errors import DataError, UsageError
from emo_slice.model.modeling import DecoderLayer, expert_mix, rope_cos_sin
from emo_slice.model.routing import route
from emo_slice.slicing.profile_file import PROFILE_FORMAT, PROFILE_VERSION, router_digest
from emo_slice.slicing.select import METHODS, choose_experts, parse_keep, slice_layer


# ---------------------------------------------------------------------------------------------
# Choosing experts from scores (shared by profile --greedy and extract)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Calibration input
# ---------------------------------------------------------------------------------------------

@dataclass
class Calibration:
    """Token rows ready to run, and what they came from."""

    rows: list[list[int]]
    description: dict


def calibration_texts(src: str, field: str = "text", split: str | None = None, shots: int | None = None,
                      seed: int = 0) -> tuple[list[str], dict]:
    """Documents from a .txt / JSONL / dataset, or (shots given) one k-shot prompt of a multiple-choice task
    with the gold answers appended."""
    from emo_slice.data.sources import file_hash, items_hash

    p = Path(src).expanduser()
    desc: dict = {"source": str(src), "file_hash": file_hash(p) if p.is_file() else None}
    if shots is not None:
        from emo_slice.data.tasks import load_items
        from emo_slice.data.sources import fewshot_prompt, split_fewshot

        if shots < 1:
            raise UsageError(f"--shots {shots}: give at least 1 demonstration (or leave --shots out to read text)")
        items, fmt = load_items(str(src), None, "auto", split)
        demos = items if shots >= len(items) else split_fewshot(items, shots, seed)[0]
        desc.update(kind="multiple-choice", format=fmt, shots=len(demos), seed=seed, ids=[d.id for d in demos],
                    items_hash=items_hash(demos))
        return [fewshot_prompt(demos)], desc
    from emo_slice.data.sources import read_texts

    texts = read_texts(src, field, split, "--examples")
    desc.update(kind="text", field=field, split=split, documents=len(texts))
    return texts, desc


def make_rows(tok, texts: list[str], max_length: int) -> list[list[int]]:
    """Each document's tokens, cut into rows of at most max_length."""
    rows = []
    for text in texts:
        ids = tok.encode(text)
        rows.extend(ids[i:i + max_length] for i in range(0, len(ids), max_length))
    rows = [r for r in rows if r]
    if not rows:
        raise DataError("--examples gave no tokens; give a file with some text")
    return rows


def make_batches(rows: list[list[int]], pad_id: int, special: set[int], max_batch_tokens: int = 1024):
    """(ids_BT, valid_BT) batches of rows of similar length, right-padded; valid excludes pad and specials."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * len(rows[i]) > max_batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    out = []
    for b in batches:
        T = max(len(rows[i]) for i in b)
        ids_BT = torch.full((len(b), T), pad_id, dtype=torch.long)
        valid_BT = torch.zeros(len(b), T, dtype=torch.bool)
        for j, i in enumerate(b):
            ids_BT[j, :len(rows[i])] = torch.tensor(rows[i])
            valid_BT[j, :len(rows[i])] = True
        for s in special:
            valid_BT &= ids_BT != s
        out.append((ids_BT, valid_BT))
    return out


# ---------------------------------------------------------------------------------------------
# Scoring one layer
# ---------------------------------------------------------------------------------------------

@dataclass
class LayerStats:
    """Running sums for one layer's routed experts (float64)."""

    n_routed: int
    tokens: int = 0
    prob_sum: torch.Tensor = None  # [R]
    count: torch.Tensor = None  # [R]
    reap_sum: torch.Tensor = None  # [R]
    easy_sum: torch.Tensor = None  # [R]

    def __post_init__(self):
        R = self.n_routed
        self.prob_sum, self.count = torch.zeros(R, dtype=torch.float64), torch.zeros(R, dtype=torch.float64)
        self.reap_sum, self.easy_sum = torch.zeros(R, dtype=torch.float64), torch.zeros(R, dtype=torch.float64)

    def scores(self) -> dict[str, list[float]]:
        n = max(self.tokens, 1)
        reap = torch.where(self.count > 0, self.reap_sum / self.count.clamp(min=1), torch.zeros_like(self.reap_sum))
        return {"mean-prob": (self.prob_sum / n).tolist(), "frequency": (self.count / n).tolist(),
                "reap": reap.tolist(), "easy-ep": self.easy_sum.tolist(), "count": self.count.long().tolist()}


def layer_forward(layer: DecoderLayer, x_BTD: torch.Tensor, cos, sin, valid_N: torch.Tensor | None = None,
                  stats: LayerStats | None = None) -> torch.Tensor:
    """The decoder layer's output (the same operations as DecoderLayer.forward), adding scores to stats."""
    B, T, D = x_BTD.shape
    mlp = layer.mlp
    h_BTD = x_BTD + layer.self_attn(layer.pre_attention_layernorm(x_BTD), cos, sin)
    xn_ND = layer.pre_feedforward_layernorm(h_BTD).reshape(B * T, D)
    r = route(mlp.gate(xn_ND), mlp.n_shared, mlp.top_k, mlp.norm_topk_prob)
    moe_ND = expert_mix(xn_ND, r.experts_NK, r.weights_NK, mlp.w_gate_EFD, mlp.w_up_EFD, mlp.w_down_EDF, mlp.impl)
    y_BTD = h_BTD + moe_ND.view(B, T, D)
    if stats is not None:
        _accumulate(stats, mlp, xn_ND, h_BTD.reshape(B * T, D), y_BTD.reshape(B * T, D), r, valid_N)
    return y_BTD


def _accumulate(st: LayerStats, mlp, xn_ND, h_ND, y_ND, r, valid_N) -> None:
    keep_N = valid_N if valid_N is not None else torch.ones(xn_ND.shape[0], dtype=torch.bool)
    st.tokens += int(keep_N.sum())
    st.prob_sum += r.probs_NR[keep_N].double().sum(0)
    k = r.n_routed_k
    exp_NK = r.experts_NK[keep_N, :k]
    w_NK = r.weights_NK[keep_N, :k].double()
    x_ND = xn_ND[keep_N]
    change_N = 1.0 - F.cosine_similarity(h_ND[keep_N].double(), y_ND[keep_N].double(), dim=-1)
    flat_M = exp_NK.reshape(-1)
    tok_M = torch.arange(x_ND.shape[0]).repeat_interleave(k)
    st.count += torch.bincount(flat_M, minlength=st.n_routed).double()
    norm_M = torch.empty(flat_M.shape[0], dtype=torch.float64)
    for e in flat_M.unique().tolist():
        m = flat_M == e
        xe = x_ND[tok_M[m]]
        out = (F.silu(xe @ mlp.w_gate_EFD[e].t()) * (xe @ mlp.w_up_EFD[e].t())) @ mlp.w_down_EDF[e].t()
        norm_M[m] = out.double().norm(dim=-1)
    contrib_M = w_NK.reshape(-1) * norm_M
    st.reap_sum.index_add_(0, flat_M, contrib_M)
    st.easy_sum.index_add_(0, flat_M, contrib_M * change_N[tok_M])


# ---------------------------------------------------------------------------------------------
# Profiling a model
# ---------------------------------------------------------------------------------------------

@dataclass
class ProfileSettings:
    """How to profile: calibration input, batching, compute dtype, and greedy slicing."""

    examples: str
    field: str = "text"
    split: str | None = None
    shots: int | None = None
    seed: int = 0
    max_length: int = 1024
    max_batch_tokens: int = 1024
    dtype: str | None = None
    greedy: bool = False
    keep: str | None = None  # greedy only: K (count or share)
    method: str = "mean-prob"  # greedy only: how each layer is sliced before the next is scored


def profile_model(model: str | os.PathLike | Checkpoint, settings: ProfileSettings,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Run the calibration input through the model layer by layer; return the profile (a dict)."""
    from emo_slice.io.loading import LayerwiseModel, load_layer
    from emo_slice.io.tokenizer import load_tokenizer

    ckpt = model if isinstance(model, Checkpoint) else Checkpoint(model)
    cfg = ckpt.config
    S = cfg.num_shared_experts
    if settings.method not in METHODS:
        raise UsageError(f"--method {settings.method!r} is unknown; choose one of {', '.join(METHODS)}")
    K = None
    if settings.greedy:
        if settings.keep is None:
            raise UsageError("--greedy slices each layer before scoring the next, so it needs --keep K (e.g. --keep 16 or 25%)")
        K = parse_keep(settings.keep, min(cfg.experts_in_layer(l) for l in range(cfg.num_hidden_layers)), S)
    if settings.max_length < 1:
        raise UsageError(f"--max-length {settings.max_length} must be at least 1")
    tok = load_tokenizer(ckpt.path)
    texts, inputs = calibration_texts(settings.examples, settings.field, settings.split, settings.shots, settings.seed)
    max_len = min(settings.max_length, cfg.max_position_embeddings)
    rows = make_rows(tok, texts, max_len)
    special = {i for i in (cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id,
                           tok.eos_token_id, tok.pad_token_id) if i is not None}
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    batches = make_batches(rows, pad, special, settings.max_batch_tokens)
    inputs.update(tokenizer=tok.describe(), rows=len(rows), tokens_total=sum(len(r) for r in rows),
                  max_length=max_len)

    lm = LayerwiseModel(ckpt, parse_dtype(settings.dtype))
    layers_out, greedy_kept = [], []
    with torch.no_grad():
        xs = [lm.embed(ids) for ids, _ in batches]
        ckpt.close()
        for l in range(cfg.num_hidden_layers):
            layer = load_layer(ckpt, l, lm.dtype)  # only this layer's weights in memory
            E = cfg.experts_in_layer(l)
            st = LayerStats(E - S)
            outs = []
            for (ids, valid), x in zip(batches, xs):
                cos, sin = rope_cos_sin(ids.shape[1], cfg.head_dim, cfg.rope_theta, x.dtype)
                outs.append(layer_forward(layer, x, cos, sin, valid.reshape(-1), st))
            scores = st.scores()
            layers_out.append({"layer": l, "experts": E, "shared": S, "routed": E - S, "tokens": st.tokens,
                               "scores": scores})
            if settings.greedy:
                kept = choose_experts(scores.get(settings.method), E - S, S, K, settings.method, settings.seed, l)
                greedy_kept.append(kept)
                if l + 1 < cfg.num_hidden_layers:  # later layers see the sliced layer's output
                    slice_layer(layer, kept)
                    outs = []
                    for (ids, _), x in zip(batches, xs):
                        cos, sin = rope_cos_sin(ids.shape[1], cfg.head_dim, cfg.rope_theta, x.dtype)
                        outs.append(layer_forward(layer, x, cos, sin))
            xs = outs
            del layer
            if progress is not None:
                progress(l + 1, cfg.num_hidden_layers)
    ckpt.close()
    return {
        "format": PROFILE_FORMAT, "format_version": PROFILE_VERSION,
        "model": {"path": str(ckpt.path.resolve()), "source": ckpt.source, "fingerprint": ckpt.fingerprint(),
                  "router_digest": router_digest(ckpt),
                  "num_hidden_layers": cfg.num_hidden_layers,
                  "experts_per_layer": [cfg.experts_in_layer(l) for l in range(cfg.num_hidden_layers)],
                  "num_shared_experts": S, "num_experts_per_tok": cfg.num_experts_per_tok},
        "inputs": inputs,
        "settings": {**asdict(settings), "dtype": str(lm.dtype).replace("torch.", "")},
        "greedy": {"keep": K, "method": settings.method, "seed": settings.seed, "kept": greedy_kept}
        if settings.greedy else None,
        "tokens": layers_out[0]["tokens"] if layers_out else 0,
        "layers": layers_out,
        "provenance": _provenance(),
    }


def _provenance() -> dict:
    from emo_slice.artifacts import provenance

    return provenance()


# ---------------------------------------------------------------------------------------------
# Profile files
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Concentration summary
# ---------------------------------------------------------------------------------------------

