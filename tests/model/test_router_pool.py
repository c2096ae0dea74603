"""EMO document-pool routing and the pretraining losses, checked against plain per-document loops."""

import math

import pytest
import torch

from emo_slice.errors import UsageError
from emo_slice.model.routing import attention_documents, route, routing_segments
from emo_slice.train.config import train_preset
from emo_slice.train.losses import load_balancing_loss, moe_losses, router_z_loss
from emo_slice.train.trainer import lr_at, pool_draw

EOS = 0


def _ids(seed=0, B=3, T=40, eos_rate=0.12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 50, (B, T), generator=g)
    ids[torch.rand(B, T, generator=g) < eos_rate] = EOS
    ids[0, 0] = EOS  # an EOS at t = 0 opens nothing
    return ids


def _loop_route(logits_NE, seg_N, sizes_G, shared, k):
    """The per-document reference: for each segment, pool = the top pool-size experts of the summed
    softmax, mask the others, top-k'."""
    N, E = logits_NE.shape
    R = E - shared
    z = logits_NE[:, :R].float()
    masked = z.clone()
    for g in range(int(seg_N.max()) + 1):
        rows = (seg_N == g).nonzero().flatten()
        if len(rows) == 0:
            continue
        q = torch.softmax(z[rows], dim=-1).sum(0)
        pool = set(torch.argsort(q, descending=True, stable=True)[: int(sizes_G[g])].tolist())
        for e in range(R):
            if e not in pool:
                masked[rows, e] = float("-inf")
    probs = torch.softmax(masked, dim=-1)
    w, idx = torch.topk(probs, k - shared, dim=-1)
    return masked, probs, idx, w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_pool_equals_per_document_loop(seed):
    ids = _ids(seed)
    seg_N = routing_segments(ids, EOS).reshape(-1)
    G = int(seg_N.max()) + 1
    E, shared, k = 17, 1, 5
    logits = torch.randn(ids.numel(), E, generator=torch.Generator().manual_seed(seed + 10))
    sizes = torch.randint(k - shared, E - shared + 2, (G,), generator=torch.Generator().manual_seed(seed + 20))
    r = route(logits, shared, k, segment_ids_N=seg_N, pool_size=sizes)
    masked, probs, idx, w = _loop_route(logits, seg_N, sizes, shared, k)
    assert torch.equal(r.masked_logits_NR, masked)
    torch.testing.assert_close(r.probs_NR, probs, rtol=0, atol=1e-7)
    assert torch.equal(r.experts_NK[:, : k - shared], idx)
    # shared experts last, weight 1
    assert torch.equal(r.experts_NK[:, k - shared :], torch.full((len(idx), shared), E - shared))
    assert torch.equal(r.weights_NK[:, k - shared :], torch.ones(len(idx), shared))


def test_eos_convention():
    ids = torch.tensor([[0, 5, 0, 7, 8, 0, 9], [3, 0, 0, 4, 4, 4, 0]])
    seg = routing_segments(ids, EOS)
    # the EOS at t > 0 opens the NEXT segment; t = 0 opens nothing; ids unique across rows
    assert seg.tolist() == [[0, 0, 1, 1, 1, 2, 2], [3, 4, 5, 5, 5, 5, 6]]
    # for attention, the EOS stays with its own document
    assert attention_documents(ids, EOS).tolist() == [[0, 1, 1, 2, 2, 2, 3], [0, 0, 1, 2, 2, 2, 2]]


def test_masked_experts_get_exactly_zero_probability():
    ids = _ids(3)
    seg_N = routing_segments(ids, EOS).reshape(-1)
    G = int(seg_N.max()) + 1
    logits = torch.randn(ids.numel(), 9) * 3
    sizes = torch.full((G,), 3)
    r = route(logits, 1, 3, segment_ids_N=seg_N, pool_size=sizes)
    outside = torch.isinf(r.masked_logits_NR)
    assert outside.sum(dim=1).eq(8 - 3).all()
    assert (r.probs_NR[outside] == 0).all()  # exactly zero
    assert torch.allclose(r.probs_NR.sum(1), torch.ones(len(r.probs_NR)))
    chosen = r.experts_NK[:, :2]
    assert not outside.gather(1, chosen).any()  # P >= k': never a masked expert
    # every token of a segment shares the same pool
    for g in range(G):
        rows = outside[seg_N == g]
        assert (rows == rows[0]).all()


def test_pool_at_least_routed_count_means_no_mask():
    ids = _ids(4)
    seg_N = routing_segments(ids, EOS).reshape(-1)
    G = int(seg_N.max()) + 1
    logits = torch.randn(ids.numel(), 9)
    free = route(logits, 1, 3)
    for pool in (8, 9, torch.full((G,), 8), torch.randint(8, 12, (G,))):
        r = route(logits, 1, 3, segment_ids_N=seg_N, pool_size=pool)
        assert torch.equal(r.masked_logits_NR, free.masked_logits_NR)
        assert torch.equal(r.probs_NR, free.probs_NR) and torch.equal(r.experts_NK, free.experts_NK)


def test_load_balancing_is_one_under_uniform_routing():
    R, k, N = 8, 2, 64
    probs = torch.full((N, R), 1.0 / R)
    counts = torch.full((R,), N * k / R)
    assert load_balancing_loss(probs, counts, k).item() == pytest.approx(1.0, abs=1e-6)
    # counts summed over four ranks give the same value; collapse onto one expert gives R/k
    assert load_balancing_loss(probs, counts * 4, k).item() == pytest.approx(1.0, abs=1e-6)
    one_hot = torch.zeros(N, R)
    one_hot[:, 0] = 1
    c = torch.zeros(R)
    c[0], c[1] = N, N
    assert load_balancing_loss(one_hot, c, k).item() == pytest.approx(R / k)


def test_router_z_loss_ignores_masked_logits_and_layer_mean():
    z = torch.tensor([[1.0, 2.0, float("-inf")], [0.0, float("-inf"), 3.0]])
    want = (math.log(math.e + math.e**2) ** 2 + math.log(1 + math.e**3) ** 2) / 2
    assert router_z_loss(z).item() == pytest.approx(want, rel=1e-6)
    ids = _ids(5)
    seg_N = routing_segments(ids, EOS).reshape(-1)
    rs = [route(torch.randn(ids.numel(), 9), 1, 3, segment_ids_N=seg_N, pool_size=4) for _ in range(3)]
    counts = torch.stack([torch.bincount(r.experts_NK[:, :2].reshape(-1), minlength=8).float() for r in rs])
    lb, zl = moe_losses(rs, counts)
    assert lb.item() == pytest.approx(
        sum(load_balancing_loss(r.probs_NR, counts[i], 2).item() for i, r in enumerate(rs)) / 3, rel=1e-6
    )
    assert zl.item() == pytest.approx(sum(router_z_loss(r.masked_logits_NR).item() for r in rs) / 3, rel=1e-6)


def test_pool_draws_range_and_batch_split_independence():
    ids = _ids(6, B=4)
    fn = pool_draw(ids, EOS, 2, 9, seed=1, step=5, first_row=100)
    G = int(routing_segments(ids, EOS).max()) + 1
    layers = [fn(layer, G) for layer in range(3)]
    assert torch.equal(fn(1, G), layers[1])  # keyed by the layer: a recompute draws the same pools
    allp = torch.cat(layers)
    assert allp.min() >= 2 and allp.max() <= 9 and len(set(allp.tolist())) > 4
    assert not torch.equal(layers[0], layers[1])  # drawn anew per layer
    # the same rows split over two "ranks" draw the same sizes
    a, b = pool_draw(ids[:2], EOS, 2, 9, 1, 5, 100), pool_draw(ids[2:], EOS, 2, 9, 1, 5, 102)
    Ga = int(routing_segments(ids[:2], EOS).max()) + 1
    Gb = int(routing_segments(ids[2:], EOS).max()) + 1
    assert torch.equal(torch.cat([a(0, Ga), b(0, Gb)]), layers[0])
    other_step = pool_draw(ids, EOS, 2, 9, seed=1, step=6, first_row=100)(0, G)
    assert not torch.equal(other_step, layers[0])


def test_pool_defaults_and_validation():
    cfg = train_preset("tiny")
    arch = cfg.model_config()
    assert cfg.pool_range(arch) == (2, 9)  # 8 routed experts, k' = 2
    assert train_preset("emo-1b14b").pool_range(train_preset("emo-1b14b").model_config()) == (8, 128)
    with pytest.raises(UsageError, match="pool_min"):
        train_preset("tiny", pool_min=1).pool_range(arch)
    c = train_preset("small", warmup_steps=10, steps=110, lr=1.0)
    assert lr_at(c, 0) == pytest.approx(0.1) and lr_at(c, 9) == pytest.approx(1.0)
    assert lr_at(c, 110) == pytest.approx(0.1) and lr_at(c, 60) == pytest.approx(0.55)
