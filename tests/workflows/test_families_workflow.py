"""The whole workflow on OLMoE, Qwen3-MoE, Qwen2-MoE and Mixtral checkpoints: init, info, profile (streamed,
greedy), extract, eval --against, generate, sweep across families, export's one-line answer."""

import json
import math

import pytest
from conftest import HF_IMPL, assert_one_line_error, invoke

FAMILIES = ["olmoe", "qwen3_moe", "qwen2_moe", "mixtral"]
TEXT = "The quick brown fox jumps over the lazy dog.\nPack my box with five dozen liquor jugs!\n"


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    p = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in (TEXT * 2, "def f(x):\n    return x * 2\n")))
    return p


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """`emo-slice init --family F` checkpoints (tiny preset: 8 routed experts, top 2), made on first use."""
    out = {}

    def get(family: str):
        if family not in out:
            path = tmp_path_factory.mktemp(family) / "full"
            r = invoke("init", "--out", path, "--family", family, "--seed", "3", "--std", "0.2")
            assert r.returncode == 0, r.stderr
            out[family] = path
        return out[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_info_profile_extract_eval_generate(made, docs, tmp_path, family):
    from transformers import AutoModelForCausalLM

    full = made(family)
    hf = AutoModelForCausalLM.from_pretrained(full, **HF_IMPL)
    assert type(hf).__name__ == json.loads((full / "config.json").read_text())["architectures"][0]
    # info: parameters as transformers counts them; active = total - the experts a token does not use
    info = json.loads(invoke("info", full, "--json").stdout)
    total = sum(p.numel() for p in hf.parameters())
    per_expert = 3 * 64 * 32  # gate, up, down of the tiny preset (hidden 64, expert width 32)
    assert info["parameters"]["total"] == total
    assert info["parameters"]["active"] == total - 2 * (8 - 2) * per_expert
    assert info["family"]["architecture"] == type(hf).__name__
    half = next(s for s in info["slices"] if s["share"] == 0.5)
    # profile with layer streaming, then extract K=4 by REAP
    r = invoke("profile", full, "--examples", docs, "--layerwise", "--out", tmp_path / "p.json", "--json")
    assert r.returncode == 0, r.stderr
    profile = json.loads((tmp_path / "p.json").read_text())
    assert profile["settings"]["placement"] == "streamed" and len(profile["layers"]) == 2
    r = invoke("extract", full, "--keep", "4", "--profile", tmp_path / "p.json", "--method", "reap", "--out",
               tmp_path / "s", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = json.loads(r.stdout)
    scores = profile["layers"][0]["scores"]["reap"]
    assert manifest["kept_experts"][0] == sorted(sorted(range(8), key=lambda e: (-scores[e], e))[:4])
    sliced = json.loads(invoke("info", tmp_path / "s", "--json").stdout)
    assert sliced["parameters"]["total"] == half["params_total"] and sliced["experts"]["per_layer"] == [4, 4]
    assert (
        sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tmp_path / "s").parameters())
        == (half["params_total"])
    )
    # eval the slice against the full model on the same text; generate from both
    r = invoke("eval", tmp_path / "s", "--against", full, "--lm", docs, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    bpb = [res[k]["lm:docs"]["bits_per_byte"] for k in ("results", "against_results")]
    assert all(math.isfinite(b) for b in bpb) and bpb[0] != bpb[1]
    r = invoke("generate", tmp_path / "s", "--against", full, "--prompt", "The quick", "--max-new-tokens", "5",
               "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_greedy_profile_and_per_layer_refusal(made, docs, tmp_path, family):
    full = made(family)
    r = invoke("extract", full, "--keep", "3", "--examples", docs, "--greedy", "--method", "frequency", "--out",
               tmp_path / "g", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [len(k) for k in json.loads(r.stdout)["kept_experts"]] == [3, 3]
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert cfg["num_experts_per_tok"] == 2
    r = invoke("extract", full, "--keep", "3", "--method", "random", "--per-layer", "--out", tmp_path / "x")
    assert_one_line_error(r, "--per-layer", "one expert count for every layer")
    assert not (tmp_path / "x").exists()


def test_export_points_at_llama_cpp_for_stock_families(made, tmp_path):
    r = invoke("export", made("olmoe"), "--format", "gguf", "--out", tmp_path / "o.gguf")
    assert_one_line_error(r, "OlmoeForCausalLM", "convert_hf_to_gguf.py", "olmoe")
    r = invoke("export", made("mixtral"), "--format", "qwen2-moe", "--out", tmp_path / "q")
    assert_one_line_error(r, "already a stock MixtralForCausalLM")
    assert not (tmp_path / "o.gguf").exists() and not (tmp_path / "q").exists()


@pytest.mark.slow
def test_sweep_and_eval_take_models_of_different_families(made, tiny_ckpt, docs, tmp_path):
    """The EMO paper's comparison on whatever the user has: one sweep over EMO and OLMoE, one eval of a Qwen3-MoE
    slice against Mixtral."""
    r = invoke("sweep", tiny_ckpt, made("olmoe"), "--keep", "50%", "--examples", docs, "--lm", docs, "--controls",
               "0", "--out", tmp_path / "sw.json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    sweeps = json.loads((tmp_path / "sw.json").read_text())["sweeps"]
    assert [s["keeps"] for s in sweeps] == [[4], [4]]  # 50% of 9 (EMO, shared counted) and of 8 (OLMoE)
    r = invoke("eval", made("qwen3_moe"), "--against", made("mixtral"), "--lm", docs, "--json")
    assert r.returncode == 0, r.stderr
    assert {"results", "against_results"} <= set(json.loads(r.stdout))
