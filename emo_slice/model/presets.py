"""Architecture presets: typed EmoConfigs by name (tiny for tests, small for CPU demos, the release)."""

from __future__ import annotations

from emo_slice.errors import UsageError
from emo_slice.model.config import EmoConfig


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
