"""The model against AllenAI's reference outputs, and its internal invariants."""

import pytest
import torch
from conftest import random_model
from safetensors.torch import load_file

import emo_slice
from emo_slice.model.config import EmoConfig
from emo_slice.model.modeling import EmoForCausalLM, expert_mix, init_weights
from emo_slice.model.routing import route, routing_segments

FIXTURES = ["emo-tiny", "emo-tiny-keep-1-3-4-6"]


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("impl", ["grouped", "loop"])
def test_float32_matches_reference(fixtures, name, impl):
    ref = load_file(fixtures / name / "reference_outputs.safetensors")
    model = emo_slice.load_model(fixtures / name, dtype="float32")
    model.set_expert_impl(impl)
    with torch.no_grad():
        out = model(ref["input_ids"], return_routing=True)
    assert (out["logits"] - ref["logits"]).abs().max() < 1e-4
    for layer, r in enumerate(out["routing"]):
        ref_logits = ref[f"router_logits.{layer}"]
        assert (r.logits_NE - ref_logits).abs().max() < 1e-5
        # identical top-k choices: recompute them from the reference's own router logits
        ref_r = route(ref_logits, model.config.num_shared_experts, model.config.num_experts_per_tok)
        assert torch.equal(r.experts_NK.sort(-1).values, ref_r.experts_NK.sort(-1).values)


@pytest.mark.parametrize("name", FIXTURES)
def test_bfloat16_top1_agrees(fixtures, name):
    ref = load_file(fixtures / name / "reference_outputs.safetensors")
    model = emo_slice.load_model(fixtures / name, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(ref["input_ids"])
    agree = (logits.float().argmax(-1) == ref["logits"].argmax(-1)).float().mean().item()
    assert agree >= 0.99


def test_layerwise_equals_whole_model(fixtures):
    ref = load_file(fixtures / "emo-tiny" / "reference_outputs.safetensors")
    whole = emo_slice.load_model(fixtures / "emo-tiny")
    lw = emo_slice.LayerwiseModel(fixtures / "emo-tiny")
    seen, whole_traces = [], []
    with torch.no_grad():
        expected = whole(ref["input_ids"], trace=whole_traces.append)
        (got,) = lw.forward([ref["input_ids"]], trace=lambda b, t: seen.append((b, t)))
        split = lw.forward([ref["input_ids"][:1], ref["input_ids"][1:]])
    assert [(b, t.layer) for b, t in seen] == [(0, 0), (0, 1)]
    for (_, a), w in zip(seen, whole_traces):  # the hooks see what the whole model computes, bit for bit
        assert torch.equal(a.y_BTD, w.y_BTD) and torch.equal(a.routing.probs_NR, w.routing.probs_NR)
    assert torch.equal(got, expected)  # same batch: bit for bit
    assert torch.allclose(torch.cat(split), expected, atol=1e-5)  # other batching: same up to float rounding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_matmul_equals_loop(dtype):
    g = torch.Generator().manual_seed(0)
    E, D, F, N, K = 6, 32, 16, 50, 3
    x = torch.randn(N, D, generator=g).to(dtype)
    experts = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(N)])
    w = torch.rand(N, K, generator=g).to(dtype)
    wg, wu = torch.randn(E, F, D, generator=g).to(dtype), torch.randn(E, F, D, generator=g).to(dtype)
    wd = torch.randn(E, D, F, generator=g).to(dtype)
    a = expert_mix(x, experts, w, wg, wu, wd, "grouped")
    b = expert_mix(x, experts, w, wg, wu, wd, "loop")
    c, norms = expert_mix(x, experts, w, wg, wu, wd, "loop", norms=True)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    assert torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)
    assert torch.allclose(c.float(), b.float(), atol=tol, rtol=tol)
    # and both equal the textbook per-token sum
    ref = torch.zeros(N, D)
    for n in range(N):
        for j in range(K):
            e = experts[n, j]
            xe = x[n].float()
            h = torch.nn.functional.silu(wg[e].float() @ xe) * (wu[e].float() @ xe)
            ref[n] += w[n, j].float() * (wd[e].float() @ h)
    assert torch.allclose(a.float(), ref, atol=tol * 10, rtol=tol * 10)
    # the pair norms are each chosen expert's own output norm, before the routing weight
    for n in range(0, N, 7):
        for j in range(K):
            e, xe = experts[n, j], x[n].float()
            y = wd[e].float() @ (torch.nn.functional.silu(wg[e].float() @ xe) * (wu[e].float() @ xe))
            assert abs(norms[n, j].item() - y.norm().item()) <= tol * 10 * (1 + y.norm().item())


def test_gqa_zero_and_many_shared_experts():
    for shared, experts, k in [(0, 8, 2), (2, 10, 4)]:
        cfg = EmoConfig(
            hidden_size=32,
            intermediate_size=16,
            num_attention_heads=4,
            num_key_value_heads=1,
            num_experts=experts,
            num_experts_per_tok=k,
            num_shared_experts=shared,
            vocab_size=64,
        )
        model = init_weights(EmoForCausalLM(cfg), std=0.1, seed=1).eval()
        ids = torch.randint(0, 64, (2, 7))
        out = model(ids, return_routing=True)
        assert out["logits"].shape == (2, 7, 64)
        r = out["routing"][0]
        assert r.experts_NK.shape == (14, k)
        if shared:
            assert torch.equal(r.experts_NK[:, -shared:], torch.arange(experts - shared, experts).expand(14, shared))
            # with several shared experts each is weighted by the softmax over the shared logits
            sw = torch.softmax(r.logits_NE[:, -shared:].float(), -1)
            assert torch.allclose(r.weights_NK[:, -shared:].float(), sw)


def test_per_layer_expert_counts():
    cfg = EmoConfig(
        hidden_size=32,
        intermediate_size=16,
        num_attention_heads=4,
        num_experts=9,
        num_experts_per_tok=3,
        num_experts_per_layer=[9, 5],
        vocab_size=64,
    )
    model = init_weights(EmoForCausalLM(cfg), seed=0)
    assert model.model.layers[0].mlp.w_gate_EFD.shape[0] == 9
    assert model.model.layers[1].mlp.w_gate_EFD.shape[0] == 5
    assert model(torch.randint(0, 64, (1, 5))).shape == (1, 5, 64)


def test_pool_restricts_routing_and_no_pool_is_reference():
    cfg = EmoConfig(
        hidden_size=32,
        intermediate_size=16,
        num_attention_heads=4,
        num_experts=9,
        num_experts_per_tok=3,
        vocab_size=64,
        eos_token_id=0,
    )
    model = init_weights(EmoForCausalLM(cfg), std=0.3, seed=2).eval()
    ids = torch.randint(2, 64, (2, 12))
    ids[0, 5] = 0
    full = model(ids, return_routing=True)
    same = model(ids, pool_size=8, return_routing=True)  # P >= routed experts: no restriction
    assert torch.equal(full["logits"], same["logits"])
    pooled = model(ids, pool_size=3, return_routing=True)
    seg = routing_segments(ids, 0).reshape(-1)
    for r in pooled["routing"]:
        for s in seg.unique():
            used = (r.probs_NR[seg == s] > 0).any(0)
            assert int(used.sum()) == 3  # exactly the pool gets probability mass


def _random_model(seed=3, **kw):
    return random_model(seed, **kw)


@torch.no_grad()
def test_kv_cache_steps_equal_one_full_forward():
    model = _random_model()
    ids = torch.randint(2, 64, (2, 11))
    full = model(ids)
    cache = emo_slice.KVCache()
    parts = [model(ids[:, :5], cache=cache)]  # a prompt, then one token at a time
    for t in range(5, 11):
        assert cache.seq_len == t
        parts.append(model(ids[:, t : t + 1], cache=cache))
    assert (torch.cat(parts, dim=1) - full).abs().max() < 1e-5
    assert torch.equal(torch.cat(parts, 1).argmax(-1), full.argmax(-1))


@torch.no_grad()
def test_left_padding_with_mask_and_positions_equals_unpadded_rows():
    model = _random_model(seed=4)
    rows = [torch.randint(2, 64, (n,)) for n in (9, 5)]
    pad = 1
    T = 9
    ids = torch.full((2, T), pad)
    mask = torch.zeros(2, T, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r) :] = r
        mask[b, T - len(r) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = emo_slice.KVCache()
    out = model(ids, attention_mask=mask, position_ids_BT=pos, cache=cache)
    nxt = torch.randint(2, 64, (2, 1))
    step = model(
        nxt,
        attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
        position_ids_BT=pos[:, -1:] + 1,
        cache=cache,
    )
    assert torch.isfinite(out).all()
    for b, r in enumerate(rows):
        alone = model(torch.cat([r, nxt[b]])[None])
        assert (out[b, T - len(r) :] - alone[0, :-1]).abs().max() < 1e-5
        assert (step[b, 0] - alone[0, -1]).abs().max() < 1e-5


@torch.no_grad()
def test_document_ids_equal_separate_documents():
    model = _random_model(seed=5)
    a, b = torch.randint(2, 64, (1, 6)), torch.randint(2, 64, (1, 4))
    ids = torch.cat([a, b], 1)
    docs = torch.tensor([[0] * 6 + [1] * 4])
    both = model(ids, document_ids_BT=docs, position_ids_BT=torch.tensor([list(range(6)) + list(range(4))]))
    assert (both[:, :6] - model(a)).abs().max() < 1e-5
    assert (both[:, 6:] - model(b)).abs().max() < 1e-5


def test_pool_draw_per_layer_is_keyed_by_the_layer_index():
    model = _random_model(seed=6, eos_token_id=0)
    ids = torch.randint(2, 64, (2, 12))
    ids[:, 6] = 0
    asked = []

    def pool(layer, num_segments):
        asked.append((layer, num_segments))
        return torch.full((num_segments,), 2 + layer)

    with torch.no_grad():
        out = model(ids, pool_size=pool, return_routing=True)
    assert asked == [(0, 4), (1, 4)]
    seg = routing_segments(ids, 0).reshape(-1)
    for layer, r in enumerate(out["routing"]):
        for s in seg.unique():
            assert int((r.probs_NR[seg == s] > 0).any(0).sum()) == 2 + layer


def test_expert_implementations_have_the_same_gradients():
    g = torch.Generator().manual_seed(1)
    E, D, F, N, K = 5, 16, 8, 30, 2
    x0 = torch.randn(N, D, generator=g)
    experts = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(N)])
    w0 = torch.rand(N, K, generator=g)
    ws0 = [torch.randn(E, F, D, generator=g), torch.randn(E, F, D, generator=g), torch.randn(E, D, F, generator=g)]
    grads = {}
    for impl in ("loop", "grouped"):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        ws = [t.clone().requires_grad_() for t in ws0]
        expert_mix(x, experts, w, *ws, impl).pow(2).sum().backward()
        grads[impl] = [x.grad, w.grad] + [t.grad for t in ws]
    for impl in ("grouped",):
        for a, b in zip(grads[impl], grads["loop"]):  # equal up to float32 rounding of sums in another order
            assert (a - b).abs().max() <= 1e-6 * b.abs().max(), impl


def test_tied_embeddings_load_tied_whole_and_layer_by_layer(tmp_path):
    model = random_model(7, num_key_value_heads=4, tie_word_embeddings=True)
    emo_slice.save_model(model, tmp_path / "tied")
    loaded = emo_slice.load_model(tmp_path / "tied")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        want = model(ids)
        assert torch.equal(loaded(ids), want)
        (lw,) = emo_slice.LayerwiseModel(tmp_path / "tied").forward([ids])
    assert torch.equal(lw, want)
