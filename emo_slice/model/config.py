"""EmoConfig: the Hugging Face `config.json` of an EMO checkpoint, typed and validated.

Reads `model_type` "emo" and the legacy "flex_olmo_noqknorm_prenorm". Keys we do not model are kept
verbatim in `extra` so a config round-trips; options that would change the computation and that we
do not implement are refused with a ConfigError (never silently ignored).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emo_slice.errors import ConfigError

MODEL_TYPES = ("emo", "flex_olmo_noqknorm_prenorm")
ARCHITECTURES = {"emo": "EmoForCausalLM", "flex_olmo_noqknorm_prenorm": "FlexOlmoNoQKNormPrenormForCausalLM"}


@dataclass
class EmoConfig:
    """Architecture of an EMO mixture-of-experts language model (Hugging Face key names)."""

    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    num_experts: int = 9
    num_experts_per_tok: int = 3
    num_shared_experts: int = 1
    num_experts_per_layer: list[int] | None = None
    norm_topk_prob: bool = False
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    eos_token_id: int | None = 0
    pad_token_id: int | None = 1
    bos_token_id: int | None = None
    output_router_logits: bool = False
    model_type: str = "emo"
    torch_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.validate()

    # ---- derived -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def experts_in_layer(self, layer: int) -> int:
        """Experts (routed + shared) in one layer."""
        if self.num_experts_per_layer is not None:
            return int(self.num_experts_per_layer[layer])
        return self.num_experts

    def top_k_in_layer(self, layer: int) -> int:
        """Experts per token (routed + shared) in one layer."""
        return min(self.num_experts_per_tok, self.experts_in_layer(layer))

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(
                f"model_type {self.model_type!r} is not an EMO model; emo-slice reads model_type "
                f"{' or '.join(map(repr, MODEL_TYPES))} (AllenAI's EmoForCausalLM checkpoints)"
            )
        _check_field_types(self)  # types and ranges first: the checks below compute with the values
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.num_experts_per_layer is not None and len(self.num_experts_per_layer) != self.num_hidden_layers:
            raise ConfigError(
                f"num_experts_per_layer has {len(self.num_experts_per_layer)} entries but the model has "
                f"{self.num_hidden_layers} layers; give one expert count per layer"
            )
        counts = self.num_experts_per_layer if self.num_experts_per_layer is not None else [self.num_experts]
        for layer, e in enumerate(counts):  # not range(num_hidden_layers): a hostile config may claim billions
            if e <= self.num_shared_experts:
                where = f"layer {layer}" if self.num_experts_per_layer is not None else "every layer"
                raise ConfigError(
                    f"{where} has {e} experts but {self.num_shared_experts} are shared; "
                    "a layer needs at least one routed expert"
                )
        if self.num_experts_per_tok <= self.num_shared_experts:
            raise ConfigError(
                f"num_experts_per_tok {self.num_experts_per_tok} must exceed num_shared_experts "
                f"{self.num_shared_experts} (it counts the shared experts too)"
            )

    # ---- (de)serialisation -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EmoConfig":
        d = dict(d)
        model_type = d.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ConfigError(
                f"config.json has model_type {model_type!r}, not an EMO model; emo-slice reads "
                f"{' or '.join(map(repr, MODEL_TYPES))} checkpoints (AllenAI's EmoForCausalLM)"
            )
        _refuse_unsupported(d)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "torch_dtype"}
        kwargs = {k: d.pop(k) for k in list(d) if k in names}
        dtype = d.get("torch_dtype") or d.get("dtype") or "float32"
        for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
            if isinstance(kwargs.get(key), list):  # HF allows a list of eos ids; the first is the document separator
                kwargs[key] = kwargs[key][0] if kwargs[key] else None
        return cls(**kwargs, torch_dtype=str(dtype), extra=d)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name in ("extra", "torch_dtype"):
                continue
            d[f.name] = getattr(self, f.name)
        d.setdefault("architectures", [ARCHITECTURES[self.model_type]])
        # no default auto_map: it would name configuration_emo.py / modeling_emo.py, which a folder emo-slice
        # writes holds only when they were copied in (a source's own auto_map stays in `extra`)
        d.setdefault("hidden_act", "silu")
        d.setdefault("attention_bias", False)
        if "dtype" in d or "torch_dtype" not in d:
            d["dtype"] = self.torch_dtype
        else:
            d["torch_dtype"] = self.torch_dtype
        return dict(sorted(d.items()))

    @classmethod
    def from_file(cls, path: str | Path) -> "EmoConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path} not found: a checkpoint folder needs a config.json") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); restore the file from the original download") from None
        except (UnicodeDecodeError, RecursionError):
            raise ConfigError(f"{path} is not UTF-8 JSON; restore the file from the original download") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path} does not hold a JSON object; restore it from the original download")
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _refuse_unsupported(d: dict[str, Any]) -> None:
    """Raise ConfigError for options that change the computation and that we do not implement."""

    def refuse(key: str, why: str) -> None:
        raise ConfigError(f"config.json sets {key}={d.get(key)!r}, which emo-slice does not support: {why}")

    for key in ("always_active_experts", "always_active_experts_per_layer", "dense_intermediate_size"):
        if d.get(key) not in (None, [], 0):
            refuse(key, "only the released EMO layout (every layer an MoE, last experts shared) is implemented")
    shared_per_layer = d.get("num_shared_experts_per_layer")
    if shared_per_layer not in (None, []):
        if not isinstance(shared_per_layer, list):
            refuse("num_shared_experts_per_layer", "it must be a list with one shared-expert count per layer")
        if any(s != d.get("num_shared_experts", 1) for s in shared_per_layer):
            refuse("num_shared_experts_per_layer", "a different shared-expert count per layer is not implemented")
    if d.get("rope_scaling") not in (None, {}):
        scaling = d["rope_scaling"]
        kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
        if kind != "default":
            refuse("rope_scaling", "only default RoPE (no scaling) is implemented")
    if d.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", "EMO experts are SwiGLU (silu)")
    if d.get("attention_bias", False):
        refuse("attention_bias", "EMO attention has no biases")
    if d.get("mlp_bias", False):
        refuse("mlp_bias", "EMO experts have no biases")
    if d.get("qk_norm") or d.get("use_qk_norm"):
        refuse("qk_norm" if "qk_norm" in d else "use_qk_norm", "EMO has no q/k norms")
    if d.get("sliding_window") not in (None, 0) and d.get("use_sliding_window", True):
        refuse("sliding_window", "only full causal attention is implemented")


_POSITIVE_INTS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "num_experts",
    "num_experts_per_tok",
    "max_position_embeddings",
)
_BOOLS = ("norm_topk_prob", "tie_word_embeddings", "output_router_logits")


def _check_field_types(cfg: EmoConfig) -> None:
    """ConfigError naming the key, its value and what it must be, for a value of the wrong type or range."""

    def bad(key: str, value, want: str) -> ConfigError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return ConfigError(
            f"config.json sets {key}={shown} ({type(value).__name__}); expected {want}: "
            "fix config.json or re-download the checkpoint"
        )

    def is_int(v) -> bool:
        return type(v) is int  # JSON true/false are not counts

    for key in _POSITIVE_INTS:
        v = getattr(cfg, key)
        if not is_int(v) or v < 1:
            raise bad(key, v, "a positive integer")
    if not is_int(cfg.num_shared_experts) or cfg.num_shared_experts < 0:
        raise bad("num_shared_experts", cfg.num_shared_experts, "a non-negative integer")
    per_layer = cfg.num_experts_per_layer
    if per_layer is not None and not (isinstance(per_layer, list) and all(is_int(e) and e >= 1 for e in per_layer)):
        raise bad(
            "num_experts_per_layer",
            per_layer,
            f"null or a list of {cfg.num_hidden_layers} positive integers (one expert count per layer)",
        )
    for key in _BOOLS:
        if not isinstance(getattr(cfg, key), bool):
            raise bad(key, getattr(cfg, key), "true or false")
    for key in ("rope_theta", "rms_norm_eps"):
        v = getattr(cfg, key)
        if type(v) not in (int, float) or not 0 < v < float("inf"):
            raise bad(key, v, "a positive finite number")
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        v = getattr(cfg, key)
        if v is not None and (not is_int(v) or not 0 <= v < cfg.vocab_size):
            raise bad(key, v, f"null or a token id in 0..{cfg.vocab_size - 1} (vocab_size {cfg.vocab_size})")
    if (cfg.hidden_size // cfg.num_attention_heads) % 2:
        raise ConfigError(
            f"config.json: hidden_size {cfg.hidden_size} / num_attention_heads {cfg.num_attention_heads} gives an odd "
            "head size; rotary embeddings need an even one: fix config.json or re-download the checkpoint"
        )
