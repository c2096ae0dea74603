"""llama.cpp runs emo-slice's GGUF exports with emo-slice's numbers (NOT run in CI).

For a byte-level tiny model and a BPE "bench" model (6 layers, 64 routed + 1 shared experts, top 4 +
shared, a BPE trained here, a padded vocabulary), and a slice of each: export to GGUF f32, run the files
with llama-cpp-python (llama.cpp's own code) and compare with emo-slice:
- logits of a prompt (logits_all=True; f32 KV cache, so the comparison is of the model, not of the f16
  cache llama.cpp uses by default, whose error is reported apart),
- greedy tokens for 32 steps,
- tokenization of sample texts (GPT-2 byte-level regex, byte-level, and the cl100k split of AllenAI's
  dolma2 tokenizer that llama.cpp calls "dbrx"),
- prompt and generation speed (tokens/s) of the slice against the full model, and file sizes.

llama-cpp-python compiles llama.cpp from its PyPI source with cmake (about 15 minutes on 2 cores); the
script installs it when it is missing (--no-install refuses). With --llama-completion PATH it also runs
llama.cpp's command-line tool on the slice.

    python examples/verify_llamacpp.py                   # ~2 minutes once llama-cpp-python is installed
    python examples/verify_llamacpp.py --llama-completion /path/to/llama-completion

Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "héllo wörld, déjà vu: naïve café ÅÄÖ 日本語 🙂",
    "def f(x):\n    return x ** 2  # squares\n\n",
    "tabs\tand  double  spaces, 12345 numbers, it's we'll",
]
CL100K = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


def ensure_llama_cpp(install: bool):
    try:
        import llama_cpp

        return llama_cpp
    except ImportError:
        if not install:
            sys.exit("llama-cpp-python is not installed; pip install llama-cpp-python (or drop --no-install)")
    print("installing llama-cpp-python from source (compiles llama.cpp; ~15 minutes on 2 cores)", file=sys.stderr)
    p = subprocess.run([sys.executable, "-m", "pip", "install", "llama-cpp-python"], capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stdout + p.stderr).strip().splitlines()[-30:]
        print("\n".join(tail), file=sys.stderr)
        print(json.dumps({"error": "pip install llama-cpp-python failed", "tail": tail[-5:]}))
        sys.exit(1)
    import llama_cpp

    return llama_cpp


def train_bpe(pre: str, vocab_size: int):
    """A byte-level BPE trained on the demo corpus: GPT-2's regex ('gpt-2') or dolma2's cl100k split ('dbrx')."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from emo_slice.data.democorpus import arithmetic_docs, code_docs, docstring_docs, unicode_docs
    from emo_slice.io.tokenizer import Tokenizer as EmoTokenizer

    tok = Tokenizer(models.BPE())
    if pre == "gpt-2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CL100K), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [d for make in (code_docs, docstring_docs, unicode_docs, arithmetic_docs) for d in make(200_000)] + TEXTS
    tok.train_from_iterator(texts, trainer)
    return EmoTokenizer(tok, 0, 1, f"trained here ({pre})")


def make_models(work: Path) -> dict:
    """{name: (full folder, slice folder)}: tiny byte-level, and the BPE bench model (vocab padded by 8)."""
    from emo_slice.io.build import random_checkpoint
    from emo_slice.io.checkpoint import Checkpoint
    from emo_slice.io.tokenizer import write_tokenizer_files
    from emo_slice.model.presets import preset
    from emo_slice.slicing.extract import extract
    from emo_slice.slicing.select import plan_slice

    tiny = random_checkpoint(work / "tiny", "tiny", seed=0)
    tok = train_bpe("gpt-2", 2048)
    cfg = preset(
        "small",
        vocab_size=tok.vocab_size + 8,
        hidden_size=256,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        num_experts=65,
        num_experts_per_tok=5,
    )
    bench = random_checkpoint(work / "bench", cfg, seed=0, std=0.05)
    write_tokenizer_files(bench, tok, cfg)
    dtok = train_bpe("dbrx", 1024)
    dcfg = preset("tiny", vocab_size=dtok.vocab_size)
    dbrx = random_checkpoint(work / "dbrx", dcfg, seed=0)
    write_tokenizer_files(dbrx, dtok, dcfg)
    out = {}
    for name, full, keep in (("tiny", tiny, 5), ("bench", bench, 17)):
        sl = work / f"{name}-slice{keep}"
        extract(full, plan_slice(Checkpoint(full), keep, method="random", seed=0), sl)
        out[name] = (full, sl)
    out["dbrx"] = (dbrx, None)
    return out


def emo_greedy(model, prompt: list[int], steps: int) -> tuple[np.ndarray, list[int]]:
    from emo_slice.model.context import KVCache

    cache = KVCache()
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), cache=cache)[0]
        first, toks = logits.numpy(), []
        for _ in range(steps):
            toks.append(int(logits[-1].argmax()))
            logits = model(torch.tensor([[toks[-1]]]), cache=cache)[0]
    return first, toks


def llama_greedy(llm, prompt: list[int], steps: int) -> tuple[np.ndarray, list[int]]:
    llm.reset()
    llm.eval(prompt)
    first, toks = np.array(llm.scores[: len(prompt)]), []
    for _ in range(steps):
        toks.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([toks[-1]])
    return first, toks


def compare(llama_cpp, gguf: Path, folder: Path, steps: int = 32) -> dict:
    from emo_slice.io.loading import load_model
    from emo_slice.io.tokenizer import load_tokenizer

    tok, model = load_tokenizer(folder), load_model(folder, dtype="float32")
    prompt = tok.encode(TEXTS[0] + " " + TEXTS[2])[:48]
    want_logits, want = emo_greedy(model, prompt, steps)
    f32 = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    llm = llama_cpp.Llama(str(gguf), logits_all=True, n_ctx=256, n_threads=2, verbose=False, **f32)
    got_logits, got = llama_greedy(llm, prompt, steps)
    f16 = llama_cpp.Llama(str(gguf), logits_all=True, n_ctx=256, n_threads=2, verbose=False)  # llama.cpp's default
    f16_logits, f16_toks = llama_greedy(f16, prompt, steps)
    same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), steps)
    return {
        "prompt_tokens": len(prompt),
        "max_abs_logit_diff": float(np.abs(got_logits - want_logits).max()),
        "logit_scale": float(np.abs(want_logits).max()),
        "greedy_equal_steps": same,
        "greedy_equal": got == want,
        "max_abs_logit_diff_f16_kv": float(np.abs(f16_logits - want_logits).max()),
        "greedy_equal_f16_kv": f16_toks == want,
        "tokenizer": tokenizer_check(llm, tok),
    }


def tokenizer_check(llm, tok) -> dict:
    same = [llm.tokenize(t.encode(), add_bos=False, special=False) == tok.encode(t) for t in TEXTS]
    back = [llm.detokenize(tok.encode(t)).decode("utf-8", errors="replace") == t for t in TEXTS]
    return {"encode_equal": all(same), "decode_equal": all(back), "texts": len(TEXTS)}


def speed(llama_cpp, ggufs: dict[str, Path], n_prompt: int = 64, n_gen: int = 64, rounds: int = 10) -> dict:
    """Best of `rounds` per file, the files measured in turn, in alternating order (so load drifts of a shared
    machine hit both alike): prompt tokens/s (one batch of n_prompt), generated tokens/s (one token per eval)."""
    llms = {
        k: llama_cpp.Llama(str(p), n_ctx=n_prompt + n_gen + 8, n_threads=2, verbose=False) for k, p in ggufs.items()
    }
    prompt = [int(i) for i in np.random.default_rng(0).integers(2, 200, n_prompt)]
    best = {k: {"prompt_tok_s": 0.0, "gen_tok_s": 0.0} for k in ggufs}
    for r in range(rounds):
        for k, llm in list(llms.items()) if r % 2 == 0 else list(llms.items())[::-1]:
            llm.reset()
            t = time.perf_counter()
            llm.eval(prompt)
            best[k]["prompt_tok_s"] = max(best[k]["prompt_tok_s"], round(n_prompt / (time.perf_counter() - t), 1))
            t = time.perf_counter()
            for _ in range(n_gen):
                llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
            best[k]["gen_tok_s"] = max(best[k]["gen_tok_s"], round(n_gen / (time.perf_counter() - t), 1))
    return best


def run_cli_tool(binary: str, gguf: Path) -> dict:
    cmd = [binary, "-m", str(gguf), "-p", "The quick brown fox", "-n", "16", "--temp", "0", "-t", "2", "-no-cnv"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return {
        "command": " ".join(cmd[:1] + ["-m", gguf.name] + cmd[3:]),
        "returncode": p.returncode,
        "output": p.stdout.strip()[-200:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="Keep the models and GGUF files here (default: a temporary folder).")
    ap.add_argument("--no-install", action="store_true", help="Fail instead of installing llama-cpp-python.")
    ap.add_argument("--llama-completion", help="Path of llama.cpp's llama-completion binary to run on the slice.")
    args = ap.parse_args()
    llama_cpp = ensure_llama_cpp(not args.no_install)
    from emo_slice.export import export

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        models = make_models(work)
        figures = {"llama_cpp_python": llama_cpp.__version__}
        ggufs = {}
        for name, (full, sl) in models.items():
            for which, folder in (("full", full), ("slice", sl)):
                if folder is None:
                    continue
                gguf = ggufs[f"{name}_{which}"] = work / f"{folder.name}.f32.gguf"
                t = time.perf_counter()
                export(folder, gguf, "gguf", outtype="f32", overwrite=True)
                rec = {
                    "export_s": round(time.perf_counter() - t, 2),
                    "gguf_bytes": gguf.stat().st_size,
                    "safetensors_bytes": sum(p.stat().st_size for p in folder.glob("*.safetensors")),
                }
                rec.update(compare(llama_cpp, gguf, folder))
                figures[f"{name}_{which}"] = rec
                print(f"{name} {which}: {json.dumps(rec)}", file=sys.stderr)
        bench = {k: ggufs[k] for k in ("bench_full", "bench_slice")}
        for k, v in speed(llama_cpp, bench).items():
            figures[k].update(v)
        if args.llama_completion:
            figures["bench_slice"]["llama_completion"] = run_cli_tool(args.llama_completion, ggufs["bench_slice"])
        b = figures
        figures["bench_slice_vs_full"] = {
            "gen_speedup": round(b["bench_slice"]["gen_tok_s"] / b["bench_full"]["gen_tok_s"], 3),
            "prompt_speedup": round(b["bench_slice"]["prompt_tok_s"] / b["bench_full"]["prompt_tok_s"], 3),
            "size_ratio": round(b["bench_slice"]["gguf_bytes"] / b["bench_full"]["gguf_bytes"], 3),
        }
        ok = all(
            v["greedy_equal"] and v["max_abs_logit_diff"] < 1e-3 and v["tokenizer"]["encode_equal"]
            for k, v in figures.items()
            if isinstance(v, dict) and "greedy_equal" in v
        )
        figures["all_equal"] = ok
    print(json.dumps(figures))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
