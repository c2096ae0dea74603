"""Architecture presets: typed EmoConfigs by name (tiny for tests, small for CPU demos, the release), and the
same shapes in the other families (`family_config`)."""

from __future__ import annotations

from emo_slice.errors import UsageError
from emo_slice.model.config import EmoConfig
from emo_slice.model.families import EMO_TYPES, family_of


def preset(name: str, **overrides) -> EmoConfig:
    """EmoConfig of a named preset, with field overrides (Hugging Face key names)."""
    base = {
        # the shape of the reference fixture tests/fixtures/emo-tiny: 8 routed + 1 shared, top 2 + shared, GQA
        "tiny": dict(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_experts=9,
            num_experts_per_tok=3,
            num_shared_experts=1,
            max_position_embeddings=512,
            rope_theta=10000.0,
            eos_token_id=0,
            pad_token_id=1,
        ),
        # a CPU demo of minutes: 32 routed + 1 shared, top 4 + shared
        "small": dict(
            vocab_size=4096,
            hidden_size=128,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            num_experts=33,
            num_experts_per_tok=5,
            num_shared_experts=1,
            max_position_embeddings=1024,
            rope_theta=10000.0,
            eos_token_id=0,
            pad_token_id=1,
        ),
        # AllenAI's release: 1B active / 14B total (the EMO checkpoint spec)
        "emo-1b14b": dict(
            vocab_size=100352,
            hidden_size=2048,
            intermediate_size=1024,
            num_hidden_layers=16,
            num_attention_heads=16,
            num_key_value_heads=16,
            num_experts=128,
            num_experts_per_tok=8,
            num_shared_experts=1,
            max_position_embeddings=4096,
            rope_theta=500000.0,
            eos_token_id=100257,
            pad_token_id=100277,
        ),
    }
    if name not in base:
        raise UsageError(f"--preset {name!r} is unknown; choose one of {', '.join(base)}")
    return EmoConfig(**{**base[name], **overrides})


PRESETS = ("tiny", "small", "emo-1b14b")


def family_config(family: str, name: str = "tiny", **overrides) -> EmoConfig:
    """A preset's shape as a config of `family` (its own config.json keys; overrides use them too): the same
    routed experts, top-k and widths; Qwen2-MoE adds a shared expert MLP of the expert width."""
    if family in EMO_TYPES:
        return preset(name, **overrides)
    fam = family_of(family)
    p = preset(name)
    d = {
        "model_type": family,
        "architectures": [fam.architecture],
        "vocab_size": p.vocab_size,
        "hidden_size": p.hidden_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads,
        "num_experts_per_tok": p.num_experts_per_tok - p.num_shared_experts,
        "max_position_embeddings": p.max_position_embeddings,
        "rope_theta": p.rope_theta,
        "rms_norm_eps": p.rms_norm_eps,
        "eos_token_id": p.eos_token_id,
        "pad_token_id": p.pad_token_id,
        "bos_token_id": p.bos_token_id,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        fam.count_key: p.num_experts - p.num_shared_experts,
        fam.keys.get("intermediate_size", "intermediate_size"): p.intermediate_size,
    }
    if "dense" in fam.options:
        d["intermediate_size"] = 2 * p.intermediate_size  # the dense MLP of mlp_only_layers, if any are asked for
    if "shared_mlp" in fam.options:
        d["shared_expert_intermediate_size"] = p.intermediate_size
    if family == "qwen3_moe":
        d["head_dim"] = p.head_dim
    d.update(overrides)
    return EmoConfig.from_dict(d)
