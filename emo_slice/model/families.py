"""Model families: how each `model_type`'s config.json becomes the typed fields of one `EmoConfig`.

The model is one forward pass (model/modeling.py); what differs between families is data, read here from
the checkpoint's own config.json and checked against transformers' modelling files of each family:

  family      q/k norm     biases        routing                              shared expert      other
  emo         none         none          softmax, top-k (renormalised only    last experts of    RMSNorm weight
                                         without shared experts)              the pool           before the cast
  olmoe       full width   q,k,v,o opt.  softmax, top-k, norm_topk_prob       none               clip_qkv
  qwen3_moe   per head     q,k,v,o opt.  softmax, top-k, norm_topk_prob       none               head_dim, dense
                                                                                                 layers, window
  qwen2_moe   none         q,k,v         softmax, top-k, norm_topk_prob       gated MLP          head_dim, dense
                                                                                                 layers, window
  mixtral     none         none          top-k, softmax over the k (float32   none               head_dim, window
                                         weights)

A `Family` lists the config.json keys of the family that differ from EmoConfig's field names (Mixtral's
`num_local_experts`, the Qwen families' `moe_intermediate_size`), the variation fields it fixes, and the
Hugging Face defaults of keys a config.json may omit. Tensor names per family live in model/hf_names.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emo_slice.errors import ConfigError

EMO_TYPES = ("emo", "flex_olmo_noqknorm_prenorm")


@dataclass(frozen=True)
class Family:
    """What one model_type's config.json means, as EmoConfig fields."""

    model_type: str
    architecture: str  # config.json "architectures": the stock class that loads the family
    keys: dict[str, str]  # EmoConfig field -> this family's config.json key, where they differ
    fixed: dict[str, Any]  # variation fields the family fixes (q/k norm, routing rule, norm cast, shared pool)
    defaults: dict[str, Any]  # values of keys a config.json may leave out (the family's HF config defaults)
    options: frozenset[str] = field(default_factory=frozenset)  # features: window, dense, shared_mlp, clip_qkv
    gguf_arch: str | None = None  # llama.cpp's architecture name, where llama.cpp has the family
    per_layer_k: bool = False  # its loader accepts a different expert count per layer (num_experts_per_layer)
    count_aliases: tuple[str, ...] = ()  # other keys transformers reads the expert count from (attribute_map)

    @property
    def count_key(self) -> str:
        """The config.json key of the experts per layer (`num_experts`, Mixtral's `num_local_experts`)."""
        return self.keys.get("num_experts", "num_experts")

    def count_keys_in(self, d: dict[str, Any]) -> list[str]:
        """The keys of config.json `d` that hold the expert count (a slice updates each of them)."""
        return [k for k in (self.count_key, *self.count_aliases) if k in d] or [self.count_key]


# Llama-style RMSNorm (cast, then weight); expert outputs summed one expert at a time as transformers' loop does
_HF_COMMON = dict(norm_cast="cast-first", expert_sum="expert-order", num_shared_experts=0)
_QWEN_DEFAULTS = dict(
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    norm_topk_prob=False,
    tie_word_embeddings=False,
    decoder_sparse_step=1,
    max_position_embeddings=32768,
    pad_token_id=None,
    bos_token_id=None,
    eos_token_id=None,
)

FAMILIES: dict[str, Family] = {
    t: Family(
        t,
        "EmoForCausalLM" if t == "emo" else "FlexOlmoNoQKNormPrenormForCausalLM",
        {},
        dict(qk_norm="none", routing="softmax-topk", norm_cast="weight-first", expert_sum="index-add"),
        {},
        per_layer_k=True,
    )
    for t in EMO_TYPES
}
FAMILIES["olmoe"] = Family(
    "olmoe",
    "OlmoeForCausalLM",
    {},
    dict(_HF_COMMON, qk_norm="full", routing="softmax-topk"),
    dict(
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        norm_topk_prob=False,
        tie_word_embeddings=False,
        pad_token_id=1,
        eos_token_id=50279,
        bos_token_id=None,
        max_position_embeddings=4096,
    ),
    frozenset({"clip_qkv"}),
    gguf_arch="olmoe",
    count_aliases=("num_local_experts",),
)
FAMILIES["qwen3_moe"] = Family(
    "qwen3_moe",
    "Qwen3MoeForCausalLM",
    {"intermediate_size": "moe_intermediate_size", "dense_intermediate_size": "intermediate_size"},
    dict(_HF_COMMON, qk_norm="head", routing="softmax-topk"),
    dict(_QWEN_DEFAULTS, moe_intermediate_size=768, intermediate_size=6144),
    frozenset({"window", "dense"}),
    gguf_arch="qwen3moe",
    count_aliases=("num_local_experts",),  # transformers 5 writes this key for Qwen3-MoE
)
FAMILIES["qwen2_moe"] = Family(
    "qwen2_moe",
    "Qwen2MoeForCausalLM",
    {"intermediate_size": "moe_intermediate_size", "dense_intermediate_size": "intermediate_size"},
    dict(_HF_COMMON, qk_norm="none", routing="softmax-topk"),
    dict(
        _QWEN_DEFAULTS,
        qkv_bias=True,
        moe_intermediate_size=1408,
        intermediate_size=5632,
        shared_expert_intermediate_size=5632,
    ),
    frozenset({"window", "dense", "shared_mlp"}),
    gguf_arch="qwen2moe",
)
FAMILIES["mixtral"] = Family(
    "mixtral",
    "MixtralForCausalLM",
    {"num_experts": "num_local_experts"},
    dict(_HF_COMMON, qk_norm="none", routing="topk-softmax"),
    dict(
        rope_theta=1e6,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        max_position_embeddings=4096 * 32,
    ),
    frozenset({"window"}),
    gguf_arch="llama",
    count_aliases=("num_experts",),
)
SUPPORTED = ", ".join(FAMILIES)
WINDOWED = ", ".join(t for t, f in FAMILIES.items() if "window" in f.options)

# keys every non-EMO family shares with EmoConfig's field names
COMMON_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "num_experts_per_tok",
    "rms_norm_eps",
    "max_position_embeddings",
    "tie_word_embeddings",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "output_router_logits",
)


def family_of(model_type) -> Family:
    """The Family of a config.json's model_type; ConfigError naming the supported ones for any other."""
    if model_type not in FAMILIES:
        raise ConfigError(
            f"config.json has model_type {model_type!r}, which emo-slice does not read; supported model types: "
            f"{SUPPORTED} (EMO and the OLMoE, Qwen2-MoE, Qwen3-MoE and Mixtral families)"
        )
    return FAMILIES[model_type]


def refuse(key: str, value, why: str) -> ConfigError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return ConfigError(f"config.json sets {key}={shown}, which emo-slice does not support: {why}")


# ---- reading a non-EMO family's config.json ------------------------------------------------------------


def hf_fields(d: dict[str, Any], fam: Family) -> dict[str, Any]:
    """EmoConfig keyword arguments from the config.json `d` of a non-EMO family (refusing what we do not run)."""
    _refuse_common(d, fam)
    get = lambda key, default=None: d.get(key, fam.defaults.get(key, default))  # noqa: E731
    kw: dict[str, Any] = {k: get(k) for k in COMMON_KEYS if k in d or k in fam.defaults}
    kw.update(fam.fixed)
    kw["num_experts"] = d[fam.count_keys_in(d)[0]]
    kw["intermediate_size"] = get(fam.keys.get("intermediate_size", "intermediate_size"))
    kw["rope_theta"] = _rope_theta(d, fam)
    if fam.model_type != "mixtral":
        kw["norm_topk_prob"] = get("norm_topk_prob", False)
    head_dim = d.get("head_dim")
    if head_dim is not None:
        if fam.model_type == "olmoe" and head_dim != _div(d.get("hidden_size"), d.get("num_attention_heads")):
            raise refuse("head_dim", head_dim, "OLMoE's q/k norms are hidden_size wide: head_dim must be hidden/heads")
        kw["head_dim"] = head_dim
    kw.update(_biases(d, fam))
    if "clip_qkv" in fam.options and d.get("clip_qkv") is not None:
        kw["clip_qkv"] = d["clip_qkv"]
    if "dense" in fam.options:
        kw["dense_intermediate_size"] = get("intermediate_size")
        kw["decoder_sparse_step"] = get("decoder_sparse_step", 1)
        kw["mlp_only_layers"] = d.get("mlp_only_layers") or []
    if "shared_mlp" in fam.options:
        kw["shared_expert_intermediate_size"] = get("shared_expert_intermediate_size")
    kw.update(_window(d, fam))
    return kw


def _div(a, b):
    return a // b if type(a) is int and type(b) is int and b > 0 else None


def _refuse_common(d: dict[str, Any], fam: Family) -> None:
    if d.get("hidden_act", "silu") != "silu":
        raise refuse("hidden_act", d.get("hidden_act"), f"{fam.model_type} experts are SwiGLU (silu) here")
    if d.get("mlp_bias"):
        raise refuse("mlp_bias", d["mlp_bias"], "experts with biases are not implemented")
    for key in ("n_group", "topk_group", "scoring_func", "routed_scaling_factor", "n_shared_experts"):
        if d.get(key) not in (None, 0, 1, 1.0, "softmax"):
            raise refuse(key, d[key], f"grouped or scaled routing (DeepSeek style) is not implemented; {SUPPORTED}")
    keys = [k for k in fam.count_keys_in(d) if k in d]
    if not keys:
        raise ConfigError(
            f"config.json of model_type {fam.model_type!r} lacks {fam.count_key}: it does not describe a "
            "mixture-of-experts model; re-download the checkpoint"
        )
    if len({repr(d[k]) for k in keys}) > 1:
        raise refuse(keys[1], d[keys[1]], f"it disagrees with {keys[0]}={d[keys[0]]!r}; keep one expert count")
    types = d.get("layer_types")
    if fam.model_type == "qwen3_moe" and types not in (None, []):
        if not isinstance(types, list) or any(t != "full_attention" for t in types):
            raise refuse("layer_types", types, "qwen3_moe windows every layer or none (use_sliding_window)")


def _rope_theta(d: dict[str, Any], fam: Family):
    """rope_theta from the top-level key or v5's rope_parameters; any RoPE scaling is refused."""
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    for key, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if value in (None, {}):
            continue
        kind = value.get("rope_type", value.get("type", "default")) if isinstance(value, dict) else value
        if kind != "default":
            raise refuse(key, value, "only default RoPE (no scaling) is implemented")
    if isinstance(params, dict) and "rope_theta" in params:
        return params["rope_theta"]
    return d.get("rope_theta", fam.defaults.get("rope_theta"))


def _biases(d: dict[str, Any], fam: Family) -> dict[str, Any]:
    if fam.model_type == "qwen2_moe":  # q/k/v biases (on by default), none on o_proj
        return {"qkv_bias": d.get("qkv_bias", True), "o_bias": False}
    if fam.model_type == "mixtral":
        if d.get("attention_bias"):
            raise refuse("attention_bias", d["attention_bias"], "Mixtral's attention has no biases")
        return {}
    bias = d.get("attention_bias", False)  # olmoe, qwen3_moe: biases on q, k, v and o together
    return {"qkv_bias": bias, "o_bias": bias}


def _window(d: dict[str, Any], fam: Family) -> dict[str, Any]:
    """sliding_window (None: full attention) and layer_types, with the family's own semantics (transformers 5)."""
    if "window" not in fam.options:
        if d.get("sliding_window") not in (None, 0) or d.get("use_sliding_window"):
            raise refuse(
                "sliding_window",
                d.get("sliding_window"),
                f"{fam.model_type} has no sliding-window attention (families with one: {WINDOWED})",
            )
        return {}
    if fam.model_type == "mixtral":
        window = d.get("sliding_window")
    else:
        window = d.get("sliding_window", 4096) if d.get("use_sliding_window", False) else None
    if window is None:
        return {"sliding_window": None}
    out: dict[str, Any] = {"sliding_window": window}
    if fam.model_type == "qwen2_moe":
        types = d.get("layer_types")
        if types is None:
            L, last = d.get("num_hidden_layers"), d.get("max_window_layers", 28)
            if type(L) is not int or type(last) is not int:
                raise refuse("max_window_layers", last, "it must be an integer, as num_hidden_layers")
            types = [
                "sliding_attention" if (i + 1) % 2 and i < last else "full_attention" for i in range(min(L, 100_000))
            ]
        out["layer_types"] = types
    return out


# ---- writing one back ------------------------------------------------------------------------------------


def hf_dict(cfg, fam: Family) -> dict[str, Any]:
    """The config.json of a non-EMO family from an EmoConfig: its source's keys (kept in `extra`), updated."""
    d = dict(cfg.extra)
    for k in COMMON_KEYS:
        d[k] = getattr(cfg, k)
    for key in fam.count_keys_in(d):
        d[key] = cfg.num_experts
    d[fam.keys.get("intermediate_size", "intermediate_size")] = cfg.intermediate_size
    if isinstance(d.get("rope_parameters"), dict):
        d["rope_parameters"] = dict(d["rope_parameters"], rope_theta=cfg.rope_theta)
    else:
        d["rope_theta"] = cfg.rope_theta
    if fam.model_type != "mixtral":
        d["norm_topk_prob"] = cfg.norm_topk_prob
    if cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads or "head_dim" in d:
        d["head_dim"] = cfg.head_dim
    if fam.model_type == "qwen2_moe":
        d["qkv_bias"] = cfg.qkv_bias
        d["shared_expert_intermediate_size"] = cfg.shared_expert_intermediate_size
    elif fam.model_type != "mixtral":
        d["attention_bias"] = cfg.qkv_bias
    if "clip_qkv" in fam.options:
        d["clip_qkv"] = cfg.clip_qkv
    if "dense" in fam.options:
        d.update(
            intermediate_size=cfg.dense_intermediate_size,
            decoder_sparse_step=cfg.decoder_sparse_step,
            mlp_only_layers=list(cfg.mlp_only_layers),
        )
    if fam.model_type == "mixtral":
        d["sliding_window"] = cfg.sliding_window
    elif "window" in fam.options:
        d["use_sliding_window"] = cfg.sliding_window is not None
        if cfg.sliding_window is not None:
            d["sliding_window"] = cfg.sliding_window
        if cfg.layer_types is not None:
            d["layer_types"] = list(cfg.layer_types)
    d.setdefault("architectures", [fam.architecture])
    d.setdefault("hidden_act", "silu")
    d["model_type"] = fam.model_type
    return d
