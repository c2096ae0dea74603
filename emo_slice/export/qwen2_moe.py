"""Export to `Qwen2MoeForCausalLM`: a Hugging Face folder transformers loads with no remote code and vLLM /
SGLang serve as a stock model.

Why it computes what EMO computes (transformers models/qwen2_moe/modeling_qwen2_moe.py, vLLM
model_executor/models/qwen2_moe.py):
- router `mlp.gate.weight` [num_experts, D]: softmax in float32 over the routed logits, top-k, no
  renormalisation with `norm_topk_prob: false`, weights cast back to the model dtype: EMO's routing with
  the shared row dropped (num_experts and num_experts_per_tok count routed experts only);
- one shared expert `mlp.shared_expert.{gate,up,down}_proj` scaled by sigmoid(shared_expert_gate(x)) with
  a bias-free [1, D] gate: an all-zero gate gives sigmoid(0) = 0.5 exactly, so the shared expert's
  down_proj is stored doubled (x2 is exact in every float format) and 0.5 * 2 * down(h) equals EMO's
  weight-1.0 shared expert bit for bit;
- q/k/v projections carry biases (vLLM always creates them): zeros; o_proj has none;
- norms: `input_layernorm` = EMO's pre_attention_layernorm, `post_attention_layernorm` = its
  pre_feedforward_layernorm (Qwen2 RMSNorm casts to the input dtype before the weight multiply: the same
  numbers in float32);
- every layer sparse: decoder_sparse_step 1, mlp_only_layers []; RoPE rotate-half with rope_theta.
Every tensor that is only renamed (all but the doubled down_proj and the zeros) is copied as bytes.
"""

from __future__ import annotations

import json
import os

import torch

from emo_slice import artifacts
from emo_slice.errors import UsageError
from emo_slice.export import common
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.writer import ShardWriter

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
SHARED_SCALE = 2.0  # undoes sigmoid(0) = 0.5 of the all-zero shared_expert_gate


def qwen2_moe_config(cfg, dtype: torch.dtype) -> dict:
    """config.json of the Qwen2MoeForCausalLM that computes what EMO config `cfg` computes."""
    R, k = common.routed(cfg)
    F_ = cfg.intermediate_size
    return {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_dropout": 0.0,
        "qkv_bias": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": cfg.num_hidden_layers,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "num_experts": R,
        "num_experts_per_tok": k,
        "norm_topk_prob": False,
        "moe_intermediate_size": F_,
        "shared_expert_intermediate_size": F_,
        "intermediate_size": F_,  # read only by dense (mlp_only) layers, of which there are none
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "use_cache": True,
        "initializer_range": 0.02,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": str(dtype).replace("torch.", ""),
    }


def tensor_plan(ckpt: Checkpoint, dtype: torch.dtype | None):
    """(qwen2-moe name, source, dtype, shape) in checkpoint order; source: a TensorInfo (bytes copied) or a
    callable making the tensor. dtype None keeps every stored dtype (all renamed tensors are byte copies)."""
    cfg = ckpt.config
    R, _ = common.routed(cfg)

    def same(name, info=None):
        info = info or ckpt.info(name)
        if dtype is None or info.torch_dtype == dtype:
            return info, info.torch_dtype, info.shape
        return (lambda: ckpt.get(info.name, dtype)[: info.shape[0]].contiguous()), dtype, info.shape

    def made(make, like: str, shape):
        dt = dtype or ckpt.info(like).torch_dtype
        return (lambda: make(dt)), dt, tuple(shape)

    def entry(name, plan):
        return (name, *plan)

    yield entry("model.embed_tokens.weight", same("model.embed_tokens.weight"))
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}"
        yield entry(f"{p}.input_layernorm.weight", same(f"{p}.pre_attention_layernorm.weight"))
        for proj in ("q", "k", "v"):
            w = f"{p}.self_attn.{proj}_proj.weight"
            yield entry(w, same(w))
            rows = ckpt.info(w).shape[0]
            yield entry(
                f"{p}.self_attn.{proj}_proj.bias", made(lambda dt, r=rows: torch.zeros(r, dtype=dt), w, (rows,))
            )
        yield entry(f"{p}.self_attn.o_proj.weight", same(f"{p}.self_attn.o_proj.weight"))
        yield entry(f"{p}.post_attention_layernorm.weight", same(f"{p}.pre_feedforward_layernorm.weight"))
        router = ckpt.info(f"{p}.mlp.gate.weight")
        yield entry(f"{p}.mlp.gate.weight", same(router.name, common.first_rows(router, R)))
        for e in range(R):
            for kind in ("gate", "up", "down"):
                yield entry(f"{p}.mlp.experts.{e}.{kind}_proj.weight", same(f"{p}.mlp.experts.{e}.{kind}_proj.weight"))
        for kind in ("gate", "up"):
            yield entry(f"{p}.mlp.shared_expert.{kind}_proj.weight", same(f"{p}.mlp.experts.{R}.{kind}_proj.weight"))
        down = f"{p}.mlp.experts.{R}.down_proj.weight"
        yield entry(
            f"{p}.mlp.shared_expert.down_proj.weight",
            made(lambda dt, n=down: ckpt.get(n, dt) * SHARED_SCALE, down, ckpt.info(down).shape),
        )
        D = cfg.hidden_size
        yield entry(f"{p}.mlp.shared_expert_gate.weight", made(lambda dt: torch.zeros(1, D, dtype=dt), down, (1, D)))
    yield entry("model.norm.weight", same("model.norm.weight"))
    if not cfg.tie_word_embeddings:
        yield entry("lm_head.weight", same("lm_head.weight"))


def export_qwen2_moe(
    model,
    out: str | os.PathLike,
    *,
    outtype: str | None = None,
    overwrite: bool = False,
    progress=None,
    max_shard_size: str | int = "5GB",
) -> dict:
    """Write `model` as a Qwen2MoeForCausalLM folder at `out` (atomically); returns export.json's content."""
    if outtype is not None and outtype not in DTYPES:
        raise UsageError(
            f"--outtype {outtype} is not a safetensors dtype; --format qwen2-moe takes "
            f"{', '.join(DTYPES)} (q8_0 is for --format gguf)"
        )
    ckpt = common.open_checkpoint(model)
    common.check_exportable(ckpt, "Qwen2MoeForCausalLM")
    out_path = common.check_out(ckpt, out, overwrite=overwrite, folder=True)
    dtype = DTYPES[outtype] if outtype else None
    config = qwen2_moe_config(ckpt.config, dtype or ckpt.stored_dtype)
    plan = list(tensor_plan(ckpt, dtype))
    total = sum(_nbytes(dt, shape) for _, _, dt, shape in plan)
    record = {
        "format": "qwen2-moe",
        "architecture": "Qwen2MoeForCausalLM",
        "source": common.source_record(ckpt),
        "shared_expert_down_proj_scale": SHARED_SCALE,
        "dtype": config["torch_dtype"],
        "byte_copies": sum(not callable(src) for _, src, _, _ in plan),
        "tensors": len(plan),
        "provenance": artifacts.provenance(),
    }
    with artifacts.atomic_output_dir(out_path, overwrite=overwrite) as tmp:
        w = ShardWriter(
            tmp,
            artifacts.parse_size(max_shard_size),
            {"created_by": "emo-slice export qwen2-moe", "source_fingerprint": record["source"]["fingerprint"]},
        )
        for name, source, dt, shape in plan:
            w.add(name, source, dtype=dt, shape=shape)
        record["files"] = w.finish()
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(_generation_config(ckpt, config), indent=2) + "\n")
        record["tokenizer_files"] = common.write_tokenizer(ckpt, tmp, config)
        (tmp / common.PROVENANCE).write_text(json.dumps(record, indent=1) + "\n")
    if progress is not None:
        progress(total, total)
    return {**record, "out": str(out_path), "bytes": total}


def _nbytes(dtype: torch.dtype, shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()


def _generation_config(ckpt: Checkpoint, config: dict) -> dict:
    gen = ckpt.side_json("generation_config.json")  # inside the folder, a regular file, bounded JSON, or refused
    gen = gen if isinstance(gen, dict) else {}
    gen.update({k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None})
    return gen
