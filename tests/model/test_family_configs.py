"""Each family's config.json read into typed fields: the values transformers' own config classes give, a
round trip, and hostile values (seeded mutations) answered by one ConfigError line, never another exception."""

import json
import random

import pytest

from emo_slice.errors import EmoSliceError
from emo_slice.model.config import EmoConfig
from emo_slice.model.families import FAMILIES

transformers = pytest.importorskip("transformers")

# real configs' shapes (from the Hub's config.json files), small numbers
HUB_LIKE = {
    "olmoe": {"model_type": "olmoe", "hidden_size": 64, "intermediate_size": 32, "num_attention_heads": 4,
              "num_key_value_heads": 4, "num_hidden_layers": 2, "num_experts": 8, "num_experts_per_tok": 2,
              "vocab_size": 300, "clip_qkv": None, "norm_topk_prob": False, "rope_theta": 10000,
              "rope_scaling": None, "attention_bias": False, "eos_token_id": 50, "pad_token_id": 1},
    "qwen3_moe": {"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 24,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "num_hidden_layers": 3,
                  "num_experts": 8, "num_experts_per_tok": 2, "vocab_size": 300, "norm_topk_prob": True,
                  "decoder_sparse_step": 1, "mlp_only_layers": [], "use_sliding_window": False,
                  "sliding_window": None, "max_window_layers": 3, "rope_theta": 1000000.0, "rope_scaling": None,
                  "tie_word_embeddings": False, "bos_token_id": 10, "eos_token_id": 11},
    "qwen2_moe": {"model_type": "qwen2_moe", "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 24,
                  "shared_expert_intermediate_size": 48, "num_attention_heads": 4, "num_key_value_heads": 4,
                  "num_hidden_layers": 2, "num_experts": 6, "num_experts_per_tok": 2, "vocab_size": 300,
                  "norm_topk_prob": False, "decoder_sparse_step": 1, "use_sliding_window": False,
                  "sliding_window": 32768, "max_window_layers": 21, "rope_theta": 1000000.0},
    "mixtral": {"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 32, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 2, "num_local_experts": 8, "num_experts_per_tok": 2,
                "vocab_size": 300, "rope_theta": 1e6, "sliding_window": None, "router_aux_loss_coef": 0.02,
                "bos_token_id": 1, "eos_token_id": 2},
}  # fmt: skip


@pytest.mark.parametrize("family", list(HUB_LIKE))
def test_fields_are_what_transformers_reads(family):
    d = HUB_LIKE[family]
    ours = EmoConfig.from_dict(d)
    theirs = transformers.AutoConfig.for_model(**d)
    E = getattr(theirs, "num_local_experts", None) or theirs.num_experts
    assert ours.num_experts == E and ours.num_experts_per_tok == theirs.num_experts_per_tok
    expert_width = getattr(theirs, "moe_intermediate_size", theirs.intermediate_size)
    assert ours.intermediate_size == expert_width
    head_dim = getattr(theirs, "head_dim", None) or theirs.hidden_size // theirs.num_attention_heads
    assert ours.head_dim == head_dim
    rope = getattr(theirs, "rope_parameters", None) or {"rope_theta": theirs.rope_theta}
    assert ours.rope_theta == rope["rope_theta"] and ours.rms_norm_eps == theirs.rms_norm_eps
    assert ours.tie_word_embeddings == theirs.tie_word_embeddings
    assert ours.eos_token_id == theirs.eos_token_id and ours.pad_token_id == theirs.pad_token_id
    assert ours.sliding_window == getattr(theirs, "sliding_window", None) or ours.sliding_window is None
    assert ours.norm_topk_prob == getattr(theirs, "norm_topk_prob", False)
    # written back: the same keys and values, the family's own names (a round trip changes nothing)
    again = ours.to_dict()
    assert {k: again[k] for k in d if k not in ("rope_scaling",)} == {k: v for k, v in d.items() if k != "rope_scaling"}
    assert EmoConfig.from_dict(again).to_dict() == again


VALUES = [None, -1, 0, 1, 3, 2.5, float("nan"), "x", "", [], [1, "a"], {}, {"rope_type": "yarn"}, True, 10**15]


@pytest.mark.parametrize("family", list(HUB_LIKE))
def test_hostile_values_are_one_line(family):
    rng = random.Random(f"family-config-{family}")
    keys = sorted(set(HUB_LIKE[family]) | {"head_dim", "layer_types", "rope_parameters", "n_group", "hidden_act"})
    for _ in range(400):
        d = json.loads(json.dumps(HUB_LIKE[family]))
        for key in rng.sample(keys, rng.randint(1, 3)):
            d[key] = rng.choice(VALUES)
        try:
            cfg = EmoConfig.from_dict(d)
        except EmoSliceError as e:
            assert "\n" not in str(e) and str(e), d
            continue
        assert cfg.model_type in FAMILIES and EmoConfig.from_dict(cfg.to_dict()).num_experts == cfg.num_experts
