"""OLMoE, Qwen3-MoE, Qwen2-MoE and Mixtral against transformers' own model classes.

Each checkpoint is built by transformers itself (random weights, `save_pretrained`: the per-expert layout of
users' checkpoints) and read by emo-slice; the reference logits are transformers' forward of the same
checkpoint (SDPA attention, the modelling file's own expert loop)."""

import json

import pytest
import torch
from conftest import HF_IMPL, assert_one_line_error, hf_checkpoint, invoke

from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import LayerwiseModel, load_model
from emo_slice.model.generation import generate, restricted_routing
from emo_slice.slicing.extract import extract
from emo_slice.slicing.select import plan_slice

transformers = pytest.importorskip("transformers")

# (family, overrides): GQA on and off, tied and untied embeddings, several widths, each family's options
VARIANTS = [
    ("olmoe", {}),
    (
        "olmoe",
        dict(hidden_size=48, num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True, clip_qkv=0.6),
    ),
    ("olmoe", dict(norm_topk_prob=True, num_hidden_layers=3)),
    ("qwen3_moe", {}),
    (
        "qwen3_moe",
        dict(
            num_key_value_heads=4,
            tie_word_embeddings=True,
            norm_topk_prob=True,
            head_dim=8,
            attention_bias=True,
            num_hidden_layers=3,
            mlp_only_layers=[1],
        ),
    ),
    ("qwen3_moe", dict(use_sliding_window=True, sliding_window=5, hidden_size=64)),
    ("qwen2_moe", {}),
    (
        "qwen2_moe",
        dict(hidden_size=48, num_key_value_heads=4, tie_word_embeddings=True, norm_topk_prob=True, qkv_bias=False),
    ),
    ("qwen2_moe", dict(num_hidden_layers=4, decoder_sparse_step=2, use_sliding_window=True, sliding_window=5)),
    ("mixtral", {}),
    ("mixtral", dict(hidden_size=48, num_key_value_heads=4, tie_word_embeddings=True, head_dim=16)),
    ("mixtral", dict(sliding_window=6)),
]
IDS = [f"{f}-{i}" for i, (f, _) in enumerate(VARIANTS)]
FAMILIES = ["olmoe", "qwen3_moe", "qwen2_moe", "mixtral"]


def _ids(B=2, T=20, seed=1, vocab=300):
    return torch.randint(2, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def _hf(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **HF_IMPL).eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Checkpoints made on first use, shared by the tests of this module: (family, variant, dtype) -> path."""
    made = {}

    def get(i: int, dtype: str = "float32"):
        if (i, dtype) not in made:
            family, over = VARIANTS[i]
            made[i, dtype] = hf_checkpoint(tmp_path_factory.mktemp(f"{family}-{i}"), family, dtype=dtype, **over)
        return made[i, dtype]

    return get


@pytest.mark.parametrize("i", range(len(VARIANTS)), ids=IDS)
def test_float32_logits_match_transformers(ckpts, i):
    path = ckpts(i)
    ids = _ids()
    with torch.no_grad():
        want = _hf(path)(ids).logits
        got = load_model(path)(ids)
        (streamed,) = LayerwiseModel(path).forward([ids])
    assert (got - want).abs().max() < 1e-4
    assert torch.equal(streamed, got)  # layer streaming runs the same layer code on the same weights


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_logits_match_transformers(ckpts, family):
    path = ckpts(IDS.index(f"{family}-{[f for f, _ in VARIANTS].index(family)}"), "bfloat16")
    ids = _ids(B=3, T=24)
    with torch.no_grad():
        want = _hf(path, torch.bfloat16)(ids).logits.float()
        model = load_model(path)
        got = model(ids).float()
    assert next(model.parameters()).dtype == torch.bfloat16  # the stored dtype
    assert (got - want).abs().max() <= 0.02 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.98


@pytest.mark.parametrize(
    "i, change",
    [
        (0, dict(norm_topk_prob=True)),  # OLMoE does not renormalise its top-k
        (2, dict(norm_topk_prob=False)),  # ... unless norm_topk_prob
        (3, dict(routing="topk-softmax")),  # Qwen3-MoE does not renormalise (Mixtral's rule does)
        (9, dict(routing="softmax-topk")),  # Mixtral always renormalises
        (6, dict(routing="topk-softmax")),  # Qwen2-MoE neither
    ],
)
def test_another_familys_routing_rule_breaks_the_match(ckpts, i, change):
    path = ckpts(i)
    ckpt = Checkpoint(path)
    for key, value in change.items():
        setattr(ckpt.config, key, value)
    ids = _ids()
    with torch.no_grad():
        want = _hf(path)(ids).logits
        got = load_model(ckpt)(ids)
    assert (got - want).abs().max() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_equals_transformers(ckpts, family):
    path = ckpts([f for f, _ in VARIANTS].index(family))
    prompts = [[5, 9, 17, 33, 2, 8, 100], [7, 250, 3]]
    hf = _hf(path)
    ids = torch.tensor([prompts[0], [1] * 4 + prompts[1]])  # left padding, as generate pads
    mask = torch.tensor([[1] * 7, [0] * 4 + [1] * 3])
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=0, pad_token_id=1)
        got = generate(load_model(path), prompts, 8, eos_token_id=0, pad_token_id=1)
    assert torch.equal(got, want[:, : got.shape[1]])


@pytest.mark.parametrize("i", [0, 4, 7, 8, 11], ids=[IDS[i] for i in (0, 4, 7, 8, 11)])
def test_slice_is_the_full_model_with_dropped_router_logits_at_minus_inf(ckpts, tmp_path, i):
    """extract writes a stock checkpoint: transformers loads it (no remote code) and its logits equal the full
    model's with the dropped experts' router logits set to -inf; emo-slice reads it back to the same."""
    path = ckpts(i)
    ckpt = Checkpoint(path)
    cfg = ckpt.config
    keep = [0, 2, 3, 5] if cfg.num_experts > 4 else [0, 2]
    plan = plan_slice(ckpt, experts=",".join(map(str, keep)))
    extract(ckpt, plan, tmp_path / "s")
    src, out = json.loads((path / "config.json").read_text()), json.loads((tmp_path / "s" / "config.json").read_text())
    count_keys = [k for k in ("num_experts", "num_local_experts") if k in src]
    assert all(out[k] == len(keep) for k in count_keys)
    assert out["num_experts_per_tok"] == min(src["num_experts_per_tok"], len(keep))
    changed = count_keys + ["num_experts_per_tok"]
    assert {k: v for k, v in out.items() if k not in changed} == {k: v for k, v in src.items() if k not in changed}
    ids = _ids(B=2, T=16, seed=3)
    full = load_model(path)
    pools = [
        torch.zeros(2, cfg.num_experts, dtype=torch.bool).index_fill_(1, torch.tensor(keep), True)
        if cfg.is_moe_layer(l)
        else None
        for l in range(cfg.num_hidden_layers)
    ]
    with torch.no_grad(), restricted_routing(full, pools):
        want = full(ids)
    with torch.no_grad():
        stock = _hf(tmp_path / "s")(ids).logits
        ours = load_model(tmp_path / "s")(ids)
    assert type(_hf(tmp_path / "s")).__name__ == src["architectures"][0]
    assert (stock - want).abs().max() < 1e-4
    assert (ours - want).abs().max() < 1e-4


def test_top_k_lowered_when_fewer_experts_than_k_are_kept(ckpts, tmp_path):
    path = ckpts(3)  # qwen3_moe, top 3
    extract(Checkpoint(path), plan_slice(Checkpoint(path), experts="1,6"), tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["num_experts_per_tok"] == 2 and cfg["num_local_experts"] == 2
    ids = _ids(T=8)
    with torch.no_grad():
        assert (_hf(tmp_path / "s")(ids).logits - load_model(tmp_path / "s")(ids)).abs().max() < 1e-4


@pytest.mark.parametrize("family", ["olmoe", "mixtral"])
def test_fused_expert_layout_reads_and_slices_to_the_stock_layout(ckpts, tmp_path, family):
    """A checkpoint saved with transformers 5's in-memory names (fused experts, Mixtral's `mlp.`) reads as the
    per-expert one, each expert a byte range of the fused tensor; its slice is written per expert."""
    from safetensors.torch import save_file

    path = ckpts([f for f, _ in VARIANTS].index(family))
    fused = tmp_path / "fused"
    fused.mkdir()
    hf = _hf(path)
    if not any("gate_up_proj" in k for k in hf.state_dict()):
        pytest.skip("transformers before 5 keeps experts apart in memory")
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, fused / "model.safetensors")
    (fused / "config.json").write_text((path / "config.json").read_text())
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(load_model(fused)(ids), load_model(path)(ids))
    ckpt = Checkpoint(fused)
    extract(ckpt, plan_slice(ckpt, experts="0,1,3"), tmp_path / "s")
    names = set(Checkpoint(tmp_path / "s").index.infos)
    assert not any("gate_up_proj" in n for n in names)
    with torch.no_grad():
        assert (_hf(tmp_path / "s")(ids).logits - load_model(tmp_path / "s")(ids)).abs().max() < 1e-4


def test_per_layer_k_refused_for_stock_families(ckpts):
    from emo_slice.errors import UsageError

    with pytest.raises(UsageError, match="one expert count for every layer"):
        plan_slice(Checkpoint(ckpts(0)), experts="0,1;2,3,4", per_layer=True)


def test_unknown_family_and_unsupported_options_are_one_line(tmp_path, ckpts):
    src = json.loads((ckpts(0) / "config.json").read_text())
    cases = [
        (dict(src, model_type="deepseek_v2"), ["'deepseek_v2'", "olmoe", "qwen3_moe", "mixtral"]),
        (dict(src, sliding_window=128), ["sliding_window=128", "olmoe has no sliding-window", "mixtral"]),
        (dict(src, rope_parameters={"rope_type": "yarn", "factor": 4.0}), ["rope_parameters", "default RoPE"]),
        (dict(src, n_group=8, topk_group=4), ["n_group=8", "grouped"]),
    ]
    for n, (cfg, needles) in enumerate(cases):
        folder = tmp_path / f"c{n}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(cfg))
        (folder / "model.safetensors").write_bytes((ckpts(0) / "model.safetensors").read_bytes())
        assert_one_line_error(invoke("info", folder), *needles)


def test_layer_streaming_holds_at_most_two_layers(ckpts, monkeypatch):
    """A 4-layer Qwen2-MoE (dense and MoE layers, sliding window) streamed: at most two decoder layers alive."""
    import weakref

    from emo_slice.io import loading

    real, alive, peak = loading.load_layer, weakref.WeakSet(), []

    def counted(*args, **kw):
        mod = real(*args, **kw)
        alive.add(mod)
        return mod

    monkeypatch.setattr(loading, "load_layer", counted)
    path = ckpts(8)
    with torch.no_grad():
        (got,) = LayerwiseModel(path).forward([_ids()], trace=lambda b, t: peak.append(len(alive)))
        want = _hf(path)(_ids()).logits
    assert peak and max(peak) <= 2 and (got - want).abs().max() < 1e-4
