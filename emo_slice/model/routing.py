"""Routing: which experts each token uses, with EMO's optional document pool.

Shape letters: the legend in `emo_slice/__init__.py` (E = R routed + n_shared shared experts, shared last;
K = k' routed + n_shared per token; G document segments).

With no pool, `route` is exactly the reference model's inference routing:
  n_shared > 0: p = softmax(logits[:, :R]) in float32, top k' of p (not renormalised), and each shared
                expert weighted by softmax(logits[:, R:]) (exactly 1.0 with one shared expert);
  n_shared = 0: p = softmax(logits) in float32, top k, renormalised only if norm_topk_prob.
rule "topk-softmax" (Mixtral): the top k of the logits, weighted by a softmax over those k alone (equal to
  renormalising the top-k probabilities), the weights kept in float32 as transformers' Mixtral keeps them.
With a pool (pretraining, pool-restricted evaluation), per document segment the top-P experts by
summed probability form the pool and the logits of all other routed experts are set to -inf before
the softmax (the EMO pretraining spec).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Routing:
    logits_NE: torch.Tensor  # raw router logits, model dtype, all experts (shared last)
    masked_logits_NR: torch.Tensor  # float32 routed logits, -inf outside the pool (== logits when no pool)
    probs_NR: torch.Tensor  # float32 softmax of masked_logits_NR
    experts_NK: torch.Tensor  # int64, chosen routed experts (best first) then the shared ones
    weights_NK: torch.Tensor  # model dtype (float32 for "topk-softmax"), matching experts_NK
    n_routed_k: int  # k': routed experts per token


def routing_segments(input_ids_BT: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Segment id of every token for the document pool, unique across the batch: [B, T] int64.

    A boundary is every EOS at position t > 0; the EOS token opens the NEXT segment.
    """
    B, T = input_ids_BT.shape
    boundary_BT = input_ids_BT == eos_token_id
    boundary_BT[:, 0] = False
    seg_BT = boundary_BT.long().cumsum(dim=1)
    # make ids unique across rows: offset each row by the number of segments before it
    per_row_B = seg_BT[:, -1] + 1
    offset_B = torch.cumsum(per_row_B, 0) - per_row_B
    return seg_BT + offset_B[:, None]


def attention_documents(input_ids_BT: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Document id of every token for intra-document attention: [B, T]. EOS stays with its own document."""
    after_eos_BT = torch.zeros_like(input_ids_BT, dtype=torch.long)
    after_eos_BT[:, 1:] = (input_ids_BT[:, :-1] == eos_token_id).long()
    return after_eos_BT.cumsum(dim=1)


def pool_mask(probs_NR: torch.Tensor, segment_ids_N: torch.Tensor, pool_size) -> torch.Tensor:
    """Boolean [N, R]: True where routed expert e is in the pool of token n's segment.

    pool_size: an int (same P for every segment) or a tensor [G] indexed by segment id.
    q_G R = sum of the segment's token probabilities; pool = its top-P experts. No gradient.
    """
    N, R = probs_NR.shape
    with torch.no_grad():
        if isinstance(pool_size, torch.Tensor):
            G = pool_size.shape[0]  # one size per segment: no host sync
        else:
            G = int(segment_ids_N.max().item()) + 1 if N else 0  # host sync (fixed pools: evaluation)
        q_GR = torch.zeros(G, R, dtype=torch.float32, device=probs_NR.device)
        q_GR.index_add_(0, segment_ids_N, probs_NR.detach().float())
        rank_GR = torch.empty_like(q_GR, dtype=torch.long)
        order_GR = q_GR.argsort(dim=1, descending=True, stable=True)
        rank_GR.scatter_(1, order_GR, torch.arange(R, device=q_GR.device).expand(G, R))
        if isinstance(pool_size, torch.Tensor):
            p_G = pool_size.to(q_GR.device).long()
            in_pool_GR = rank_GR < p_G[:, None]
        else:
            in_pool_GR = rank_GR < int(pool_size)
        return in_pool_GR[segment_ids_N]


def route(
    logits_NE: torch.Tensor,
    n_shared: int,
    top_k: int,
    norm_topk_prob: bool = False,
    segment_ids_N: torch.Tensor | None = None,
    pool_size=None,
    rule: str = "softmax-topk",
) -> Routing:
    """Choose experts for N tokens from raw router logits [N, E] (the last n_shared are the shared experts).

    rule: "softmax-topk" (EMO, OLMoE, Qwen: top-k of the softmax, renormalised with norm_topk_prob) or
    "topk-softmax" (Mixtral: always renormalised, weights in float32)."""
    N, E = logits_NE.shape
    R = E - n_shared
    k_routed = min(top_k - n_shared, R)
    z_NR = logits_NE[:, :R].float()
    masked_NR = z_NR
    if pool_size is not None and segment_ids_N is not None:
        no_limit = not isinstance(pool_size, torch.Tensor) and int(pool_size) >= R
        if not no_limit:
            p0_NR = torch.softmax(z_NR, dim=-1)
            keep_NR = pool_mask(p0_NR, segment_ids_N, pool_size)
            masked_NR = z_NR.masked_fill(~keep_NR, float("-inf"))
    probs_NR = torch.softmax(masked_NR, dim=-1)
    w_NK, idx_NK = torch.topk(probs_NR, k_routed, dim=-1)
    if rule == "topk-softmax":
        w_NK = w_NK / w_NK.sum(dim=-1, keepdim=True)
        return Routing(logits_NE, masked_NR, probs_NR, idx_NK, w_NK, k_routed)
    if n_shared == 0 and norm_topk_prob:
        w_NK = w_NK / w_NK.sum(dim=-1, keepdim=True)
    if n_shared > 0:
        shared_w = torch.softmax(logits_NE[:, R:].float(), dim=-1)  # [N, n_shared]
        shared_idx = torch.arange(R, E, device=logits_NE.device).expand(N, n_shared)
        idx_NK = torch.cat([idx_NK, shared_idx], dim=1)
        w_NK = torch.cat([w_NK, shared_w], dim=1)
    return Routing(logits_NE, masked_NR, probs_NR, idx_NK, w_NK.to(logits_NE.dtype), k_routed)
