"""emo-slice export: Qwen2-MoE folders transformers runs with no remote code, and llama.cpp GGUF files.

qwen2-moe: transformers' own Qwen2MoeForCausalLM (trust_remote_code=False) must give emo-slice's logits and
greedy tokens, for a model and a slice. gguf: every tensor and metadata key read back with gguf-py's
GGUFReader is checked against the source (read with the safetensors library, not emo-slice), and a small
reference of llama.cpp's deepseek graph (NORM RoPE on the permuted q/k, softmax gating over the routed
router rows, ungated shared expert) run on the file's tensors gives emo-slice's logits.
"""

import json
import math

import pytest
import torch
from conftest import assert_one_line_error, invoke
from safetensors.torch import load_file

from emo_slice.export import FORMATS, OUTTYPES, export
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import load_model
from emo_slice.model.context import KVCache
from emo_slice.slicing.extract import extract
from emo_slice.slicing.select import plan_slice

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

import emo_slice.cli.export  # noqa: E402,F401  (registers the command until cli/__init__.py lists it)

BYTE_CHARS = bytes_to_unicode()


def _source_tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def models(tiny_ckpt, tmp_path_factory):
    """The tiny model (8 routed + 1 shared, top 2 + shared, GQA), a slice keeping routed 0, 3, 6 (+ shared), and a
    tiny model with tied embeddings (no lm_head)."""
    from emo_slice.io.build import random_checkpoint
    from emo_slice.model.presets import preset

    sl = tmp_path_factory.mktemp("slice") / "s"
    extract(tiny_ckpt, plan_slice(Checkpoint(tiny_ckpt), experts="0,3,6"), sl)
    tied = random_checkpoint(tmp_path_factory.mktemp("tied") / "t", preset("tiny", tie_word_embeddings=True), seed=1)
    return {"full": tiny_ckpt, "slice": sl, "tied": tied}


def _hf(folder):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=False, dtype=torch.float32, output_loading_info=True
    )
    assert type(model).__name__ == "Qwen2MoeForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return model.eval()


def _emo(src):
    """emo-slice's model of src. Tied embeddings are re-tied here: io/loading.py load_model leaves lm_head
    unread when tie_word_embeddings is set (to_empty unties it), a bug reported apart."""
    model = load_model(src)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def _greedy(model, prompt_BT: torch.Tensor, steps: int, eos: int) -> list[list[int]]:
    """emo-slice greedy decoding with its KV cache, one row at a time, stopping at eos like transformers."""
    rows = []
    for row in prompt_BT:
        cache, ids, out = KVCache(), row[None], row.tolist()
        for _ in range(steps):
            nxt = int(model(ids, cache=cache)[0, -1].argmax())
            out.append(nxt)
            if nxt == eos:
                break
            ids = torch.tensor([[nxt]])
        rows.append(out)
    return rows


@pytest.mark.parametrize("which", ["full", "slice", "tied"])
def test_qwen2_moe_matches_emo_slice(models, which, tmp_path):
    src = models[which]
    summary = export(src, tmp_path / "q", "qwen2-moe")
    hf, emo = _hf(tmp_path / "q"), _emo(src)
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    R = emo.config.num_experts - 1
    assert "auto_map" not in cfg and cfg["num_experts"] == R and cfg["num_experts_per_tok"] == min(2, R)
    ids = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (hf(ids).logits - emo(ids)).abs().max() < 1e-4
        prompt = ids[:, :6]
        got = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=16)
        want = _greedy(emo, prompt, 16, emo.config.eos_token_id)
    assert [r[: len(w)] for r, w in zip(got.tolist(), want)] == want
    assert summary["tensors"] - summary["byte_copies"] == 5 * emo.config.num_hidden_layers  # biases, gate, down


def test_qwen2_moe_tensors_and_streaming(models, tmp_path, monkeypatch):
    src = models["full"]
    read = []
    orig = Checkpoint.get
    monkeypatch.setattr(Checkpoint, "get", lambda self, name, dtype=None: read.append(name) or orig(self, name, dtype))
    export(src, tmp_path / "q", "qwen2-moe")
    monkeypatch.undo()
    assert sorted(read) == [f"model.layers.{l}.mlp.experts.8.down_proj.weight" for l in range(2)]  # all else bytes
    a, b = _source_tensors(src), _source_tensors(tmp_path / "q")
    assert torch.equal(b["model.layers.1.mlp.gate.weight"], a["model.layers.1.mlp.gate.weight"][:8])
    assert torch.equal(
        b["model.layers.0.mlp.shared_expert.down_proj.weight"], 2 * a["model.layers.0.mlp.experts.8.down_proj.weight"]
    )
    assert torch.equal(
        b["model.layers.0.mlp.shared_expert.up_proj.weight"], a["model.layers.0.mlp.experts.8.up_proj.weight"]
    )
    assert torch.equal(
        b["model.layers.1.mlp.experts.7.gate_proj.weight"], a["model.layers.1.mlp.experts.7.gate_proj.weight"]
    )
    assert not b["model.layers.0.mlp.shared_expert_gate.weight"].any()
    assert not b["model.layers.1.self_attn.k_proj.bias"].any() and b["model.layers.1.self_attn.k_proj.bias"].shape == (
        32,
    )
    record = json.loads((tmp_path / "q" / "export.json").read_text())
    assert record["source"]["fingerprint"] == Checkpoint(src).fingerprint() and "provenance" in record
    half = export(src, tmp_path / "h", "qwen2-moe", outtype="bf16")
    assert half["dtype"] == "bfloat16" and _source_tensors(tmp_path / "h")["lm_head.weight"].dtype == torch.bfloat16


# ---- GGUF ----------------------------------------------------------------------------------------------


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's q/k row order, written from its definition: GGUF row h*Dh + 2j + s holds HF row
    h*Dh + s*Dh/2 + j."""
    Dh = w.shape[0] // n_head
    out = torch.empty_like(w)
    for h in range(n_head):
        for j in range(Dh // 2):
            for s in range(2):
                out[h * Dh + s * Dh // 2 + j] = w[h * Dh + 2 * j + s]
    return out


def _read_gguf(path):
    r = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {}
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = (torch.from_numpy(data.copy()).float(), t.tensor_type.name, [int(x) for x in t.shape])
    return fields, tensors


def _expected_gguf(src, outtype: str):
    """What the GGUF must hold, from the source's config.json and safetensors (torch shape order)."""
    cfg = json.loads((src / "config.json").read_text())
    a = _source_tensors(src)
    E, H, Hkv = cfg["num_experts"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    R = E - 1
    exp = {
        "token_embd.weight": a["model.embed_tokens.weight"],
        "output_norm.weight": a["model.norm.weight"],
        "output.weight": a["lm_head.weight"],
    }
    for l in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{l}", f"blk.{l}"
        exp[f"{b}.attn_norm.weight"] = a[f"{p}.pre_attention_layernorm.weight"]
        exp[f"{b}.ffn_norm.weight"] = a[f"{p}.pre_feedforward_layernorm.weight"]
        for ours, theirs in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o")):
            exp[f"{b}.attn_{ours}.weight"] = a[f"{p}.self_attn.{theirs}_proj.weight"]
        exp[f"{b}.ffn_gate_inp.weight"] = a[f"{p}.mlp.gate.weight"][:R]
        for kind in ("gate", "up", "down"):
            exp[f"{b}.ffn_{kind}_exps.weight"] = torch.stack(
                [a[f"{p}.mlp.experts.{e}.{kind}_proj.weight"] for e in range(R)]
            )
            exp[f"{b}.ffn_{kind}_shexp.weight"] = a[f"{p}.mlp.experts.{R}.{kind}_proj.weight"]
    dense = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[outtype]
    types = {n: "F32" if t.dim() == 1 or "gate_inp" in n else dense for n, t in exp.items()}
    return cfg, exp, types, (H, Hkv)


def test_gguf_tensors_and_metadata(models, tmp_path):
    src = models["slice"]
    export(src, tmp_path / "m.gguf", "gguf", outtype="f32")
    fields, tensors = _read_gguf(tmp_path / "m.gguf")
    cfg, exp, types, (H, Hkv) = _expected_gguf(src, "f32")
    assert set(tensors) == set(exp)
    for name, want in exp.items():
        got, qtype, ne = tensors[name]
        assert qtype == types[name] and ne == list(reversed(want.shape)), name  # ggml order: innermost first
        if ".attn_q." in name or ".attn_k." in name:
            got = _unpermute(got, H if ".attn_q." in name else Hkv)
        assert torch.equal(got.reshape(want.shape), want), name
    R = cfg["num_experts"] - 1
    a = "deepseek."
    assert fields == {
        "general.architecture": "deepseek",
        "general.type": "model",
        "general.name": src.name,
        "general.file_type": 0,
        "general.quantization_version": 2,
        a + "vocab_size": 256,
        a + "context_length": cfg["max_position_embeddings"],
        a + "embedding_length": 64,
        a + "feed_forward_length": 32,
        a + "block_count": 2,
        a + "attention.head_count": 4,
        a + "attention.head_count_kv": 2,
        a + "rope.freq_base": cfg["rope_theta"],
        a + "rope.dimension_count": 16,
        a + "rope.scaling.type": "none",
        a + "attention.layer_norm_rms_epsilon": pytest.approx(cfg["rms_norm_eps"]),
        a + "leading_dense_block_count": 0,
        a + "expert_count": R,
        a + "expert_used_count": cfg["num_experts_per_tok"] - 1,
        a + "expert_shared_count": 1,
        a + "expert_feed_forward_length": 32,
        a + "expert_weights_scale": 1.0,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": [BYTE_CHARS[b] for b in range(256)],  # GPT-2's byte -> character map
        "tokenizer.ggml.token_type": [1] * 256,
        "tokenizer.ggml.merges": ["\u0100\u0100 \u0100\u0100"],
        "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.ggml.padding_token_id": 1,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": False,
        "emo_slice.export": fields["emo_slice.export"],
    }
    tokens = fields["tokenizer.ggml.tokens"]
    assert [tokens[b] for b in b"Az~ "] == ["A", "z", "~", "\u0120"]
    record = json.loads(fields["emo_slice.export"])
    assert record["source"]["slice_kept_experts"] == [[0, 3, 6, 8]] * 2
    names = {gguf.TENSOR_NAMES[t].split(".")[-1] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.DEEPSEEK]}
    assert {n.split(".")[-2] for n in tensors} <= names | {"token_embd", "output_norm", "output"}


@pytest.mark.parametrize("outtype,tol", [("f16", 2e-3), ("bf16", 1e-2), ("q8_0", 1e-2)])
def test_gguf_outtypes(models, tmp_path, outtype, tol):
    src = models["full"]
    export(src, tmp_path / "m.gguf", "gguf", outtype=outtype)
    fields, tensors = _read_gguf(tmp_path / "m.gguf")
    cfg, exp, types, (H, Hkv) = _expected_gguf(src, outtype)
    assert fields["general.file_type"] == {"f16": 1, "bf16": 32, "q8_0": 7}[outtype]
    for name, want in exp.items():
        got, qtype, _ = tensors[name]
        assert qtype == types[name], name
        if ".attn_q." in name or ".attn_k." in name:
            got = _unpermute(got.reshape(want.shape), H if ".attn_q." in name else Hkv)
        err = (got.reshape(want.shape) - want).abs().max() / want.abs().max()
        assert err <= (0 if qtype == "F32" else tol), (name, float(err))


def _deepseek_forward(tensors, fields, ids_T: torch.Tensor) -> torch.Tensor:
    """llama.cpp's deepseek graph (src/models/deepseek.cpp) on GGUF tensors, written from its definition:
    NORM RoPE rotates consecutive pairs (2i, 2i+1) by pos * base^(-2i/n_rot); softmax gating, top-k, no
    renormalisation; the shared expert added with weight 1."""
    W = {n: t.reshape(list(reversed(ne))) for n, (t, _, ne) in tensors.items()}
    a = "deepseek."
    H, Hkv, eps = (
        fields[a + "attention.head_count"],
        fields[a + "attention.head_count_kv"],
        fields[a + "attention.layer_norm_rms_epsilon"],
    )
    base, k = fields[a + "rope.freq_base"], fields[a + "expert_used_count"]

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rope(x):  # [T, heads, Dh], pairs
        T, _, Dh = x.shape
        theta = torch.arange(T)[:, None].double() * base ** (-torch.arange(0, Dh, 2).double() / Dh)
        c, s = theta.cos().float()[:, None], theta.sin().float()[:, None]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).reshape(x.shape)

    def ffn(x, g, u, d):
        return torch.nn.functional.silu(x @ g.T) * (x @ u.T) @ d.T

    x = W["token_embd.weight"][ids_T]
    T = len(ids_T)
    for l in range(fields[a + "block_count"]):
        b = f"blk.{l}."
        h = norm(x, W[b + "attn_norm.weight"])
        q = rope((h @ W[b + "attn_q.weight"].T).view(T, H, -1))
        kk = rope((h @ W[b + "attn_k.weight"].T).view(T, Hkv, -1)).repeat_interleave(H // Hkv, 1)
        v = (h @ W[b + "attn_v.weight"].T).view(T, Hkv, -1).repeat_interleave(H // Hkv, 1)
        att = torch.einsum("thd,shd->hts", q, kk) / math.sqrt(q.shape[-1])
        att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)
        x = x + torch.einsum("hts,shd->thd", att, v).reshape(T, -1) @ W[b + "attn_output.weight"].T
        h = norm(x, W[b + "ffn_norm.weight"])
        probs = (h @ W[b + "ffn_gate_inp.weight"].T).softmax(-1)
        w, idx = probs.topk(k, -1)
        moe = torch.stack(
            [
                sum(
                    w[t, j]
                    * ffn(
                        h[t],
                        W[b + "ffn_gate_exps.weight"][e],
                        W[b + "ffn_up_exps.weight"][e],
                        W[b + "ffn_down_exps.weight"][e],
                    )
                    for j, e in enumerate(idx[t].tolist())
                )
                for t in range(T)
            ]
        )
        x = (
            x
            + moe
            + ffn(h, W[b + "ffn_gate_shexp.weight"], W[b + "ffn_up_shexp.weight"], W[b + "ffn_down_shexp.weight"])
        )
    return norm(x, W["output_norm.weight"]) @ W.get("output.weight", W["token_embd.weight"]).T  # tied: embedding


@pytest.mark.parametrize("which", ["full", "slice", "tied"])
def test_gguf_runs_as_llama_cpp_deepseek(models, which, tmp_path):
    export(models[which], tmp_path / "m.gguf", "gguf", outtype="f32")
    fields, tensors = _read_gguf(tmp_path / "m.gguf")
    ids = torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = _emo(models[which])(ids[None])[0]
    assert (_deepseek_forward(tensors, fields, ids) - want).abs().max() < 1e-4


# ---- refusals: one line, exit 2, nothing written ------------------------------------------------------


def _nothing_written(tmp_path, before):
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_refusals(models, tiny_ckpt, tmp_path):
    var = tmp_path / "var"
    extract(tiny_ckpt, plan_slice(Checkpoint(tiny_ckpt), experts="0,1;0,1,2", per_layer=True), var)
    (tmp_path / "exists.gguf").write_text("keep")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("keep")
    before = sorted(p.name for p in tmp_path.iterdir())
    src_before = sorted(p.name for p in tiny_ckpt.iterdir())
    for fmt in FORMATS:
        out = tmp_path / ("v.gguf" if fmt == "gguf" else "v")
        assert_one_line_error(
            invoke("export", var, "--format", fmt, "--out", out), "num_experts_per_layer", "--per-layer"
        )
    assert_one_line_error(invoke("export", tiny_ckpt, "--format", "onnx", "--out", tmp_path / "o"), "--format")
    assert_one_line_error(
        invoke("export", tiny_ckpt, "--format", "gguf", "--outtype", "q4_k", "--out", tmp_path / "o.gguf"), "--outtype"
    )
    assert_one_line_error(
        invoke("export", tiny_ckpt, "--format", "qwen2-moe", "--outtype", "q8_0", "--out", tmp_path / "o"), "q8_0"
    )
    assert_one_line_error(
        invoke("export", tiny_ckpt, "--format", "gguf", "--out", tmp_path / "exists.gguf"), "--overwrite"
    )
    assert_one_line_error(
        invoke("export", tiny_ckpt, "--format", "qwen2-moe", "--out", tmp_path / "full"), "--overwrite"
    )
    assert_one_line_error(invoke("export", tiny_ckpt, "--format", "qwen2-moe", "--out", tiny_ckpt / "q"), "inside")
    assert_one_line_error(invoke("export", tiny_ckpt, "--format", "gguf", "--out", tiny_ckpt / "m.gguf"), "inside")
    assert_one_line_error(invoke("export", tiny_ckpt, "--format", "gguf", "--out", tmp_path / "m.bin"), ".gguf")
    _nothing_written(tmp_path, before)
    assert sorted(p.name for p in tiny_ckpt.iterdir()) == src_before
    assert (tmp_path / "exists.gguf").read_text() == "keep" and (tmp_path / "full" / "keep.txt").exists()
    assert_one_line_error(  # not a GGUF emo-slice exported: --overwrite does not replace it either
        invoke("export", tiny_ckpt, "--format", "gguf", "--out", tmp_path / "exists.gguf", "--overwrite"),
        "not a GGUF file emo-slice exported",
    )
    assert (tmp_path / "exists.gguf").read_text() == "keep"
    mine = tmp_path / "mine.gguf"
    assert invoke("export", tiny_ckpt, "--format", "gguf", "--out", mine).returncode == 0
    ok = invoke("export", tiny_ckpt, "--format", "gguf", "--out", mine, "--overwrite", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["outtype"] == "f32"
    assert mine.read_bytes()[:4] == b"GGUF"


def test_refuses_two_shared_experts(tmp_path):
    from emo_slice.io.build import random_checkpoint
    from emo_slice.model.presets import preset

    src = random_checkpoint(
        tmp_path / "two", preset("tiny", num_experts=10, num_experts_per_tok=4, num_shared_experts=2)
    )
    r = invoke("export", src, "--format", "qwen2-moe", "--out", tmp_path / "q")
    assert_one_line_error(r, "num_shared_experts 2")
    assert not (tmp_path / "q").exists()


def test_cli_enums_are_the_library_lists():
    from emo_slice.cli.export import ExportFormat, OutType

    assert [m.value for m in ExportFormat] == list(FORMATS) and [m.value for m in OutType] == list(OUTTYPES)
