"""EmoConfig: the Hugging Face `config.json` of a mixture-of-experts checkpoint, typed and validated.

Reads EMO (`model_type` "emo" and the legacy "flex_olmo_noqknorm_prenorm") and the families of
model/families.py (olmoe, qwen2_moe, qwen3_moe, mixtral): one dataclass whose variation fields (q/k norm,
biases, routing rule, shared expert, dense layers, sliding window) say how the one forward pass runs.
Keys we do not model are kept verbatim in `extra` so a config round-trips; options that would change
the computation and that we do not implement are refused with a ConfigError (never silently ignored).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emo_slice.errors import ConfigError
from emo_slice.model.families import EMO_TYPES, FAMILIES, Family, family_of, hf_dict, hf_fields
from emo_slice.safejson import read_json

MAX_CONFIG_BYTES = 10_000_000  # a config.json is a few KB
MODEL_TYPES = tuple(FAMILIES)
ARCHITECTURES = {t: f.architecture for t, f in FAMILIES.items()}
EMO_FIELDS = (  # the keys an EMO config.json carries (the variation fields below are fixed for EMO)
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "num_experts",
    "num_experts_per_tok",
    "num_shared_experts",
    "num_experts_per_layer",
    "norm_topk_prob",
    "rope_theta",
    "rms_norm_eps",
    "max_position_embeddings",
    "tie_word_embeddings",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "output_router_logits",
    "model_type",
)
QK_NORMS = ("none", "full", "head")  # q/k RMSNorm: none, over all heads at once (OLMoE), per head (Qwen3)
ROUTINGS = ("softmax-topk", "topk-softmax")  # softmax over experts then top-k; top-k then softmax over the k
NORM_CASTS = ("weight-first", "cast-first")  # RMSNorm: weight times float32 then cast (EMO), or cast first
# how a token's weighted expert outputs are summed: one index_add_ over all pairs (EMO, as before), or one add per
# expert in ascending expert order, rounded after each (transformers' per-expert loop: bf16 equal bit for bit)
EXPERT_SUMS = ("index-add", "expert-order")


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
    # ---- variations between families (model/families.py); the defaults are EMO's ----
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    qk_norm: str = "none"  # QK_NORMS
    qkv_bias: bool = False  # biases on q_proj, k_proj, v_proj
    o_bias: bool = False  # a bias on o_proj
    clip_qkv: float | None = None  # q, k, v clamped to [-clip, clip] (OLMoE)
    routing: str = "softmax-topk"  # ROUTINGS
    norm_cast: str = "weight-first"  # NORM_CASTS
    expert_sum: str = "index-add"  # EXPERT_SUMS
    shared_expert_intermediate_size: int = 0  # a shared SwiGLU MLP behind a sigmoid gate (Qwen2-MoE); 0: none
    dense_intermediate_size: int | None = None  # width of the dense MLP of layers without experts
    decoder_sparse_step: int = 1  # layer l has experts when (l + 1) % step == 0 and l is not in mlp_only_layers
    mlp_only_layers: list[int] = field(default_factory=list)
    sliding_window: int | None = None  # None: full causal attention
    layer_types: list[str] | None = None  # per layer "sliding_attention" | "full_attention"; None: all sliding
    model_type: str = "emo"
    torch_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and type(self.hidden_size) is int and type(self.num_attention_heads) is int:
            self.head_dim = self.hidden_size // max(self.num_attention_heads, 1)
        self.validate()

    # ---- derived -------------------------------------------------------------------------
    @property
    def family(self) -> Family:
        return FAMILIES[self.model_type]

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer `layer` has experts (else a dense MLP: Qwen's mlp_only_layers / decoder_sparse_step)."""
        return layer not in self.mlp_only_layers and (layer + 1) % self.decoder_sparse_step == 0

    def moe_layers(self) -> list[int]:
        return [l for l in range(self.num_hidden_layers) if self.is_moe_layer(l)]

    def window_in_layer(self, layer: int) -> int | None:
        """The sliding attention window of a layer (None: full causal attention)."""
        if self.sliding_window is None:
            return None
        if self.layer_types is not None and self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window

    def experts_in_layer(self, layer: int) -> int:
        """Experts (routed + shared) in one layer; 0 in a dense layer."""
        if not self.is_moe_layer(layer):
            return 0
        if self.num_experts_per_layer is not None:
            return int(self.num_experts_per_layer[layer])
        return self.num_experts

    def fewest_experts(self) -> int:
        """Experts in the MoE layer that has fewest: what a --keep is checked against."""
        return min((self.experts_in_layer(l) for l in self.moe_layers()), default=0)

    def top_k_in_layer(self, layer: int) -> int:
        """Experts per token (routed + shared) in one layer."""
        return min(self.num_experts_per_tok, self.experts_in_layer(layer))

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        family_of(self.model_type)  # one line naming the supported model types
        _check_field_types(self)  # types and ranges first: the checks below compute with the values
        _check_variations(self)
        if self.model_type in EMO_TYPES and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.num_experts_per_layer is not None and not self.family.per_layer_k:
            raise ConfigError(
                f"config.json sets num_experts_per_layer, which {self.model_type} checkpoints do not have (its "
                "loader takes one expert count for every layer); only EMO slices keep a count per layer"
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
        fam = family_of(model_type if isinstance(model_type, str) else repr(model_type))
        dtype = d.get("torch_dtype") or d.get("dtype") or "float32"
        if model_type in EMO_TYPES:
            _refuse_unsupported(d)
            kwargs = {k: d.pop(k) for k in list(d) if k in EMO_FIELDS}
        else:  # the family's keys read into typed fields; the whole dict kept to write it back (hf_dict)
            kwargs = dict(hf_fields(d, fam), model_type=model_type)
        for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
            if isinstance(kwargs.get(key), list):  # HF allows a list of eos ids; the first is the document separator
                kwargs[key] = kwargs[key][0] if kwargs[key] else None
        return cls(**kwargs, torch_dtype=str(dtype), extra=d)

    def to_dict(self) -> dict[str, Any]:
        if self.model_type not in EMO_TYPES:
            d = hf_dict(self, self.family)
            d["dtype" if "dtype" in d or "torch_dtype" not in d else "torch_dtype"] = self.torch_dtype
            return dict(sorted(d.items()))
        d = dict(self.extra)
        for name in EMO_FIELDS:
            d[name] = getattr(self, name)
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
        if not os.path.lexists(path):
            raise ConfigError(f"{path} not found: a checkpoint folder needs a config.json")
        hint = "restore the file from the original download"
        # NaN / Infinity are read (as transformers reads them) so that from_dict names the field it refuses
        d = read_json(path, error=ConfigError, hint=hint, max_bytes=MAX_CONFIG_BYTES, expect=dict, allow_nan=True)
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


def _bad_value(cfg: EmoConfig):
    """bad(key, value, want): a ConfigError naming the key as the family's config.json spells it."""
    fam = FAMILIES.get(cfg.model_type)
    names = {} if fam is None else {**fam.keys, "num_experts": fam.count_keys_in(cfg.extra)[0]}

    def bad(key: str, value, want: str) -> ConfigError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return ConfigError(
            f"config.json sets {names.get(key, key)}={shown} ({type(value).__name__}); expected {want}: "
            "fix config.json or re-download the checkpoint"
        )

    return bad


def _is_int(v) -> bool:
    return type(v) is int  # JSON true/false are not counts


def _check_field_types(cfg: EmoConfig) -> None:
    """ConfigError naming the key, its value and what it must be, for a value of the wrong type or range."""
    bad, is_int = _bad_value(cfg), _is_int
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
    for key in (*_BOOLS, "qkv_bias", "o_bias"):
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
    if not is_int(cfg.head_dim) or cfg.head_dim < 1:
        raise bad("head_dim", cfg.head_dim, "null or a positive integer")
    if cfg.head_dim % 2:
        raise ConfigError(
            f"config.json: hidden_size {cfg.hidden_size} / num_attention_heads {cfg.num_attention_heads} (or head_dim) "
            f"gives an odd head size {cfg.head_dim}; rotary embeddings need an even one: fix config.json or "
            "re-download the checkpoint"
        )
    _check_variation_types(cfg, bad)


def _check_variation_types(cfg: EmoConfig, bad) -> None:
    """The family fields' types and ranges (see _check_field_types)."""
    is_int = _is_int
    for key, allowed in (
        ("qk_norm", QK_NORMS),
        ("routing", ROUTINGS),
        ("norm_cast", NORM_CASTS),
        ("expert_sum", EXPERT_SUMS),
    ):
        if getattr(cfg, key) not in allowed:
            raise bad(key, getattr(cfg, key), " or ".join(map(repr, allowed)))
    if cfg.clip_qkv is not None and (type(cfg.clip_qkv) not in (int, float) or not 0 < cfg.clip_qkv < float("inf")):
        raise bad("clip_qkv", cfg.clip_qkv, "null or a positive finite number")
    for key in ("dense_intermediate_size", "sliding_window"):
        v = getattr(cfg, key)
        if v is not None and (not is_int(v) or v < 1):
            raise bad(key, v, "null or a positive integer")
    v = cfg.shared_expert_intermediate_size
    if not is_int(v) or v < 0:
        raise bad("shared_expert_intermediate_size", v, "a non-negative integer (0: no shared expert MLP)")
    if not is_int(cfg.decoder_sparse_step) or cfg.decoder_sparse_step < 1:
        raise bad("decoder_sparse_step", cfg.decoder_sparse_step, "a positive integer")
    layers = cfg.mlp_only_layers
    if not isinstance(layers, list) or not all(is_int(l) and 0 <= l < cfg.num_hidden_layers for l in layers):
        raise bad("mlp_only_layers", layers, f"a list of layer indices in 0..{cfg.num_hidden_layers - 1}")
    types = cfg.layer_types
    if types is not None and (
        not isinstance(types, list)
        or len(types) != cfg.num_hidden_layers
        or any(t not in ("sliding_attention", "full_attention") for t in types)
    ):
        raise bad(
            "layer_types",
            types,
            f"null or {cfg.num_hidden_layers} entries each 'sliding_attention' or 'full_attention'",
        )


def _check_variations(cfg: EmoConfig) -> None:
    """Consistency of the family fields: a dense layer needs its width, and some layer must have experts."""
    step, dense = cfg.decoder_sparse_step, set(cfg.mlp_only_layers)
    candidates = cfg.num_hidden_layers // step  # layers step-1, 2*step-1, ...: those with experts unless listed
    if candidates <= len(dense) and all(l * step - 1 in dense for l in range(1, candidates + 1)):
        raise ConfigError(
            "config.json leaves no layer with experts (mlp_only_layers / decoder_sparse_step): "
            "emo-slice slices mixture-of-experts layers, and this model has none"
        )
    if cfg.dense_intermediate_size is None and (cfg.mlp_only_layers or cfg.decoder_sparse_step > 1):
        raise ConfigError(
            "config.json has dense layers (mlp_only_layers / decoder_sparse_step) but no intermediate_size "
            "for them: fix config.json or re-download the checkpoint"
        )
