"""Pretraining losses: global load balancing, router z-loss, LM-head z-loss, and routing statistics.

Shape letters: see the legend in `emo_slice/__init__.py` (R = routed experts, shared ones excluded).
Below, k' is the number of routed experts each token takes (K minus the shared experts).

Following AllenAI's EMO training code (the EMO pretraining spec):
- LB (global):  (R/k') * sum_e count_e * mean_t(s_te) / N_counted, where count_e is how many top-k'
  slots expert e got, summed over every data-parallel rank (and optionally over the micro-batches of
  the step), N_counted the number of tokens those counts cover, and s the pool-masked probabilities of
  the LOCAL micro-batch (which carry the gradient). Equals 1 when routing is uniform.
- router z-loss: sum_t logsumexp(masked z_t)^2 / N_local (pool-masked logits, shared excluded).
- LM z-loss: mean_t logsumexp(output logits_t)^2.
Layer losses are averaged over layers (weight / num_layers, as the paper does).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from emo_slice.model.routing import Routing


def expert_counts(r: Routing) -> torch.Tensor:
    """[R] float32: top-k' slots each routed expert got in this micro-batch (no gradient). A scatter-add, not
    bincount: CUDA's bincount reads the largest id back to the host."""
    R = r.probs_NR.shape[1]
    routed_M = r.experts_NK[:, : r.n_routed_k].reshape(-1)
    ones_M = torch.ones(routed_M.shape, dtype=torch.float32, device=routed_M.device)
    return torch.zeros(R, dtype=torch.float32, device=routed_M.device).index_add_(0, routed_M, ones_M)


def all_reduce_counts(counts_LR: torch.Tensor) -> torch.Tensor:
    """Sum expert counts over all data-parallel ranks (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        counts_LR = counts_LR.clone()
        dist.all_reduce(counts_LR, op=dist.ReduceOp.SUM)
    return counts_LR


def load_balancing_loss(probs_NR: torch.Tensor, counts_R: torch.Tensor, k_routed: int) -> torch.Tensor:
    """(R/k') * sum_e f_e * p_e with f_e = counts_e / N_counted (global) and p_e = mean_t s_te (local)."""
    R = probs_NR.shape[1]
    n_counted = counts_R.sum() / k_routed
    f_R = counts_R.detach() / n_counted.clamp_min(1.0)
    p_R = probs_NR.float().mean(dim=0)
    return (R / k_routed) * (f_R * p_R).sum()


def router_z_loss(masked_logits_NR: torch.Tensor) -> torch.Tensor:
    """mean_t logsumexp(masked z_t)^2 on the pool-masked routed logits (-inf entries are ignored)."""
    lse_N = torch.logsumexp(masked_logits_NR.float(), dim=-1)
    return lse_N.pow(2).mean()


def lm_losses(logits_NV: torch.Tensor, targets_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, LM z-loss), both means over the N tokens, sharing one float32 logsumexp over the
    vocabulary (one pass over the [N, V] logits instead of two)."""
    logits_NV = logits_NV.float()
    lse_N = torch.logsumexp(logits_NV, dim=-1)
    ce = (lse_N - logits_NV.gather(1, targets_N[:, None])[:, 0]).mean()
    return ce, lse_N.pow(2).mean()


def moe_losses(routings: list[Routing], counts_LR: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over layers of LB, mean over layers of router z-loss). counts_LR: global counts per layer."""
    lb = torch.stack([load_balancing_loss(r.probs_NR, counts_LR[l], r.n_routed_k) for l, r in enumerate(routings)])
    z = torch.stack([router_z_loss(r.masked_logits_NR) for r in routings])
    return lb.mean(), z.mean()


def load_imbalance(counts_LR: torch.Tensor) -> torch.Tensor:
    """Per layer [L]: max expert count / mean expert count (1.0 = perfectly balanced), on the device."""
    mean_L = counts_LR.mean(dim=1).clamp_min(1e-9)
    return counts_LR.max(dim=1).values / mean_L


@torch.no_grad()
def document_entropy(r: Routing, segment_ids_N: torch.Tensor, num_segments: int | None = None) -> torch.Tensor:
    """Mean over document segments of the entropy (nats) of the segment's average routed distribution, a
    0-d tensor on the device (num_segments: G when known, else read from the ids: a host sync).

    Low when a document's tokens share a few experts (EMO); near log(R) when they spread out.
    """
    N, R = r.probs_NR.shape
    G = num_segments if num_segments is not None else int(segment_ids_N.max()) + 1
    q_GR = torch.zeros(G, R, dtype=torch.float32, device=r.probs_NR.device)
    q_GR.index_add_(0, segment_ids_N, r.probs_NR.float())
    q_GR = q_GR / q_GR.sum(dim=1, keepdim=True).clamp_min(1e-12)
    ent_G = -(q_GR * q_GR.clamp_min(1e-12).log()).sum(dim=1)
    return ent_G.mean()
