"""Export to one GGUF file of llama.cpp's architecture `deepseek` (DeepSeek-MoE v1), for llama.cpp, Ollama and
llama-cpp-python.

What llama.cpp's deepseek graph computes (src/models/deepseek.cpp) and why it is EMO:
- `build_moe_ffn(..., n_expert, n_expert_used, SILU, norm_w=false, expert_weights_scale, SOFTMAX)`: softmax
  over the routed experts' router logits (`ffn_gate_inp`, routed rows only), top `expert_used_count`, no
  renormalisation, weights scaled only when expert_weights_scale is neither 0 nor 1 (we write 1.0);
- plus one ungated shared expert (`ffn_*_shexp`, added with weight 1) when expert_shared_count is 1;
- every layer an MoE layer with leading_dense_block_count 0; RMSNorm with
  attention.layer_norm_rms_epsilon; RoPE of llama.cpp's NORM type (rotating consecutive pairs; see
  llama-model.cpp `llama_model_rope_type`). EMO (like HF DeepSeek-MoE) rotates halves (NeoX), so q and k
  rows are permuted within each head as convert_hf_to_gguf.py's DeepseekModel.permute does.
Tensors are written one at a time (one stacked expert tensor of a layer at most in memory). Norms and
the router stay float32 whatever --outtype (as the converter does); q8_0 falls back to f16 for rows not
a multiple of 32.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from emo_slice import artifacts
from emo_slice.errors import UsageError
from emo_slice.export import common
from emo_slice.export.gguf_vocab import gguf_vocab
from emo_slice.io.tokenizer import load_tokenizer
from emo_slice.ownership import GGUF_KEY

ARCH = "deepseek"
MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS, src/llama-hparams.h
EMO_KEY = GGUF_KEY  # "emo_slice.export", JSON: provenance and source of the export


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UsageError("--format gguf needs llama.cpp's gguf package: pip install gguf") from None
    return gguf


def qtypes(outtype: str):
    """(GGMLQuantizationType, LlamaFileType) of an --outtype."""
    g = _gguf()
    Q, F = g.GGMLQuantizationType, g.LlamaFileType
    return {
        "f32": (Q.F32, F.ALL_F32),
        "f16": (Q.F16, F.MOSTLY_F16),
        "bf16": (Q.BF16, F.MOSTLY_BF16),
        "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0),
    }[outtype]


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of each head from halves order [x0..x(d/2-1), x(d/2)..] to pairs [x0, x(d/2), x1, ...]: NeoX RoPE
    weights for llama.cpp's NORM RoPE (convert_hf_to_gguf.py DeepseekModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass
class Entry:
    name: str
    shape: tuple[int, ...]  # torch / numpy order (GGUF stores it reversed)
    qtype: object
    make: Callable[[], torch.Tensor]  # float32
    nbytes: int = 0


def tensor_plan(ckpt, outtype: str) -> list[Entry]:
    """Every GGUF tensor in write order, with how to make it from the checkpoint."""
    cfg = ckpt.config
    R, _ = common.routed(cfg)
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    f32 = lambda name: lambda: ckpt.get(name, torch.float32)  # noqa: E731

    def stacked(p: str, kind: str) -> Callable[[], torch.Tensor]:
        def make():
            first = ckpt.info(f"{p}.mlp.experts.0.{kind}_proj.weight")
            out = torch.empty((R, *first.shape), dtype=torch.float32)
            for e in range(R):
                ckpt.read_into(f"{p}.mlp.experts.{e}.{kind}_proj.weight", out[e])
            return out

        return make

    items = [("token_embd.weight", "model.embed_tokens.weight", f32("model.embed_tokens.weight"))]
    for l in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{l}", f"blk.{l}"
        q, k = f"{p}.self_attn.q_proj.weight", f"{p}.self_attn.k_proj.weight"
        items += [
            (f"{b}.attn_norm.weight", f"{p}.pre_attention_layernorm.weight", None),
            (f"{b}.attn_q.weight", q, lambda q=q: permute_rows(ckpt.get(q, torch.float32), H)),
            (f"{b}.attn_k.weight", k, lambda k=k: permute_rows(ckpt.get(k, torch.float32), Hkv)),
            (f"{b}.attn_v.weight", f"{p}.self_attn.v_proj.weight", None),
            (f"{b}.attn_output.weight", f"{p}.self_attn.o_proj.weight", None),
            (f"{b}.ffn_norm.weight", f"{p}.pre_feedforward_layernorm.weight", None),
            (
                f"{b}.ffn_gate_inp.weight",
                f"{p}.mlp.gate.weight",
                lambda p=p: ckpt.get(f"{p}.mlp.gate.weight", torch.float32)[:R].contiguous(),
            ),
        ]
        for kind in ("gate", "up", "down"):
            items.append((f"{b}.ffn_{kind}_exps.weight", f"{p}.mlp.experts.0.{kind}_proj.weight", stacked(p, kind)))
        for kind in ("gate", "up", "down"):
            items.append((f"{b}.ffn_{kind}_shexp.weight", f"{p}.mlp.experts.{R}.{kind}_proj.weight", None))
    items.append(("output_norm.weight", "model.norm.weight", None))
    if not cfg.tie_word_embeddings:
        items.append(("output.weight", "lm_head.weight", None))
    return [_entry(name, ckpt, src, make or f32(src), outtype, R) for name, src, make in items]


def _entry(name: str, ckpt, src: str, make, outtype: str, R: int) -> Entry:
    g = _gguf()
    shape = tuple(ckpt.info(src).shape)
    if name.endswith("_exps.weight"):
        shape = (R, *shape)
    elif name.endswith("ffn_gate_inp.weight"):
        shape = (R, *shape[1:])
    qtype, _ = qtypes(outtype)
    if len(shape) <= 1 or name.endswith("_norm.weight") or name.endswith("ffn_gate_inp.weight"):
        qtype = g.GGMLQuantizationType.F32
    elif qtype == g.GGMLQuantizationType.Q8_0 and shape[-1] % g.GGML_QUANT_SIZES[qtype][0]:
        qtype = g.GGMLQuantizationType.F16
    nbytes = int(np.prod(g.quant_shape_to_byte_shape(shape, qtype)))
    return Entry(name, shape, qtype, make, nbytes)


def encode(t: torch.Tensor, qtype) -> np.ndarray:
    """A float32 tensor as the bytes GGUF stores for qtype (gguf-py's own quantizers for bf16 / q8_0)."""
    g = _gguf()
    a = t.detach().contiguous().numpy()
    if qtype == g.GGMLQuantizationType.F32:
        return a
    if qtype == g.GGMLQuantizationType.F16:
        return a.astype(np.float16)
    return g.quants.quantize(a, qtype)


def add_metadata(w, ckpt, vocab, outtype: str, record: dict) -> None:
    """Every key llama.cpp's deepseek loader reads (llama-model.cpp load_hparams, models/deepseek.cpp)."""
    g = _gguf()
    cfg = ckpt.config
    R, k = common.routed(cfg)
    w.add_string(EMO_KEY, json.dumps(record, sort_keys=True))  # first after the architecture: ownership.py reads it
    w.add_type("model")
    w.add_name(ckpt.path.resolve().name)
    w.add_file_type(qtypes(outtype)[1])
    w.add_quantization_version(g.GGML_QUANT_VERSION)
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_scaling_type(g.RopeScalingType.NONE)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_leading_dense_block_count(0)
    w.add_expert_count(R)
    w.add_expert_used_count(k)
    w.add_expert_shared_count(1)
    w.add_expert_feed_forward_length(cfg.intermediate_size)
    w.add_expert_weights_scale(1.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    for add, token_id in (
        (w.add_bos_token_id, cfg.bos_token_id),
        (w.add_eos_token_id, cfg.eos_token_id),
        (w.add_pad_token_id, cfg.pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    w.add_add_bos_token(False)  # EMO has no BOS token
    w.add_add_eos_token(False)


def export_gguf(
    model, out: str | os.PathLike, *, outtype: str | None = None, overwrite: bool = False, progress=None
) -> dict:
    """Write `model` as one GGUF file at `out` (atomically); returns a summary."""
    g = _gguf()

    ckpt = common.open_checkpoint(model)
    common.check_exportable(ckpt, "llama.cpp's deepseek architecture")
    if common.routed(ckpt.config)[0] > MAX_EXPERTS:
        raise UsageError(
            f"{ckpt.path} has {common.routed(ckpt.config)[0]} routed experts per layer; llama.cpp "
            f"loads at most {MAX_EXPERTS}: slice it first (emo-slice extract --keep)"
        )
    if not str(out).endswith(".gguf"):
        raise UsageError(f"--out {out} does not end in .gguf; name the file like model.gguf")
    out_path = common.check_out(ckpt, out, overwrite=overwrite, folder=False)
    outtype = outtype or {torch.float16: "f16", torch.bfloat16: "bf16"}.get(ckpt.stored_dtype, "f32")
    vocab = gguf_vocab(load_tokenizer(ckpt.path), ckpt.config.vocab_size)
    plan = tensor_plan(ckpt, outtype)
    total = sum(e.nbytes for e in plan)
    record = {
        "format": "gguf",
        "architecture": ARCH,
        "outtype": outtype,
        "source": common.source_record(ckpt),
        "tokenizer_pre": vocab.pre,
        "provenance": artifacts.provenance(),
    }
    with artifacts.atomic_output_file(out_path) as tmp:
        w = g.GGUFWriter(tmp, ARCH)
        try:
            add_metadata(w, ckpt, vocab, outtype, record)
            for e in plan:
                w.add_tensor_info(e.name, e.shape, np.dtype(np.float32), e.nbytes, raw_dtype=e.qtype)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            done = 0
            for e in plan:
                w.write_tensor_data(encode(e.make(), e.qtype))
                done += e.nbytes
                if progress is not None:
                    progress(done, total)
        finally:
            w.close()
    return {**record, "out": str(out_path), "bytes": out_path.stat().st_size, "tensors": len(plan)}
