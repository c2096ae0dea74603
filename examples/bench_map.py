"""Time and peak memory of `emo-slice map`: the quickstart's two models for real, and the release's shape
(1M tokens x 16 layers x 128 experts) for everything after the forward, side by side in one run.

  python examples/bench_map.py --models qs/emo/final qs/standard/final --docs qs/data/valid.jsonl --device cpu

1. quickstart: `emo-slice map A B --docs DOCS` in a child process (wall time, peak RSS of that process),
   and the capture alone (the forward through `LayerwiseModel`), whose tokens/s the projection uses.
2. release shape: a child process writes synthetic router logits (domain bias + rank-32 part + noise),
   --tokens x (--layers x --experts) float16, straight into the memory map a capture writes, then runs the
   map's analysis on it (representations, PCA + k-means fitted on 100k tokens, every token assigned,
   figures): its wall time and peak RSS, against the 16 GB a laptop has.
3. projection: the release's forward at 2 x active parameters FLOPs a token and this machine's measured
   float32 matmul rate at the release's width (a compute-bound estimate: the capture adds no work to the
   forward `profile` runs), plus step 2's measured analysis time.

Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 1 << 30


def child(cmd: list[str]) -> dict:
    """Run a child process; its wall time, peak resident memory (os.wait4's rusage of that process), stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        text, msg = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: {' '.join(cmd[1:5])} ... failed: {msg.strip().splitlines()[-1:]}")
    return {"wall_s": round(wall, 2), "peak_rss_bytes": usage.ru_maxrss * 1024, "stdout": text}


def active_params(cfg) -> int:
    """Parameters a token runs through: attention, the k' routed + shared experts and routers, and the head."""
    D, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    dh = D // cfg.num_attention_heads
    attn = 2 * D * D + 2 * D * cfg.num_key_value_heads * dh
    experts = cfg.num_experts_per_tok * 3 * D * F + D * cfg.num_experts
    return L * (attn + experts) + cfg.vocab_size * D


def matmul_flops(device: str, width: int, repeat: int = 5) -> float:
    """FLOP/s of a float32 [width x width] matmul on the device (the best of `repeat`)."""
    import torch

    a = torch.randn(width, width, device=device)
    best = float("inf")
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ a
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * width**3 / best


def run_quickstart(args) -> None:
    """Child: capture each model alone (tokens/s), print one JSON line."""
    from emo_slice.analysis.capture import CaptureSettings, capture, read_documents
    from emo_slice.io.checkpoint import Checkpoint

    docs = read_documents([args.docs])
    res = {}
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        for i, m in enumerate(args.models):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            t0 = time.perf_counter()
            info = capture(m, docs, folder, CaptureSettings(device=args.device))
            s = time.perf_counter() - t0
            res[m] = {"tokens": info["tokens"], "capture_s": round(s, 3), "tokens_per_s": info["tokens"] / s}
            res[m]["active_params"] = active_params(Checkpoint(m).config)
    print(json.dumps({"models": res}))


def run_release(args) -> None:
    """Child: synthetic release-shape logits into the capture's memory map, then the map's analysis."""
    import numpy as np

    from emo_slice.analysis.capture import Documents
    from emo_slice.analysis.cluster import ClusterSettings
    from emo_slice.workflows.map import analyse

    N, L, R, per_doc, domains = args.tokens, args.layers, args.experts, 250, 4
    n_docs = N // per_doc
    rng = np.random.default_rng(0)
    # logits like a router's: a domain bias, a rank-32 token part, and noise (one block of noise reused)
    bias = rng.normal(0, 1.5, (domains, L * R)).astype(np.float32)
    W = rng.normal(0, 1.0, (32, L * R)).astype(np.float32)
    noise = rng.normal(0, 0.3, (16_384, L * R)).astype(np.float32)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        offsets = np.arange(n_docs + 1, dtype=np.int64) * per_doc
        np.save(folder / "doc_offsets.npy", offsets)
        np.save(folder / "tokens.npy", rng.integers(0, 50_000, n_docs * per_doc, dtype=np.int32))
        mm = np.lib.format.open_memmap(folder / "router_logits.npy", "w+", np.float16, (n_docs * per_doc, L * R))
        for a in range(0, n_docs * per_doc, 16_384):
            b = min(a + 16_384, n_docs * per_doc)
            dom = (np.arange(a, b) // per_doc) % domains
            z = bias[dom] + rng.standard_normal((b - a, 32), dtype=np.float32) @ W + noise[: b - a]
            mm[a:b] = z.astype(np.float16)
        mm.flush()
        del mm
        write_s = time.perf_counter() - t0
        docs = Documents(tuple("" for _ in range(n_docs)), tuple(f"d{i % domains}" for i in range(n_docs)))
        info = {"columns": [l * R for l in range(L + 1)], "routed_top_k": [8] * L, "tokens": n_docs * per_doc}
        strings = {i: str(i) for i in range(50_000)}
        t1 = time.perf_counter()
        out = analyse(folder, info, docs, ClusterSettings(clusters=args.clusters), strings)
        analyse_s = time.perf_counter() - t1
    print(json.dumps({"tokens": n_docs * per_doc, "columns": L * R, "write_s": round(write_s, 2),
                      "analyse_s": round(analyse_s, 2), "purity": out["figures"]["purity"]}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs=2, required=True, help="the quickstart's EMO and standard final checkpoints")
    ap.add_argument("--docs", required=True, help="documents (the quickstart's data/valid.jsonl)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="release-shape tokens (synthetic)")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--clusters", type=int, default=64)
    ap.add_argument("--release-preset", default="emo-1b14b", help="the release config the forward is projected to")
    ap.add_argument("--scratch", default=None, help="folder for temporary arrays (4 GB at the release shape)")
    ap.add_argument("--child", choices=["quickstart", "release"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scratch is not None and not Path(args.scratch).is_dir():
        ap.error(f"--scratch {args.scratch} is not a folder; create it or give an existing one")
    if args.child == "quickstart":
        return run_quickstart(args)
    if args.child == "release":
        return run_release(args)
    base = [sys.executable, __file__, "--models", *args.models, "--docs", args.docs, "--device", args.device]
    base += ["--tokens", str(args.tokens), "--layers", str(args.layers), "--experts", str(args.experts)]
    base += ["--clusters", str(args.clusters)] + (["--scratch", args.scratch] if args.scratch else [])
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        cmd = [sys.executable, "-m", "emo_slice", "map", *args.models, "--docs", args.docs, "--out", f"{tmp}/map"]
        full = child([*cmd, "--device", args.device, "--json", "--overwrite"] + ["--labels", "emo,standard"])
    c, r = child([*base, "--child", "quickstart"]), child([*base, "--child", "release"])
    cap = json.loads(c["stdout"].strip().splitlines()[-1]) | {"peak_rss_bytes": c["peak_rss_bytes"]}
    rel = json.loads(r["stdout"].strip().splitlines()[-1]) | {"peak_rss_bytes": r["peak_rss_bytes"]}
    report(args, full, cap, rel)


def report(args, full: dict, cap: dict, rel: dict) -> None:
    from emo_slice.model.presets import preset

    emo = cap["models"][args.models[0]]
    cfg = preset(args.release_preset)
    release_active = active_params(cfg)
    flops = matmul_flops(args.device, cfg.hidden_size)
    fwd_s = args.tokens * 2 * release_active / flops
    figures = {
        "device": args.device,
        "load_1min": round(os.getloadavg()[0], 1),
        "quickstart_map_wall_s": full["wall_s"],
        "quickstart_map_peak_rss_gib": round(full["peak_rss_bytes"] / GIB, 2),
        "quickstart_tokens": emo["tokens"],
        "quickstart_capture_tokens_per_s": round(emo["tokens_per_s"], 1),
        "quickstart_capture_peak_rss_gib": round(cap["peak_rss_bytes"] / GIB, 2),
        "release_shape": [rel["tokens"], args.layers, args.experts],
        "release_analysis_s": rel["analyse_s"],
        "release_logits_write_s": rel["write_s"],
        "release_analysis_peak_rss_gib": round(rel["peak_rss_bytes"] / GIB, 2),
        "release_analysis_peak_share_of_16gb": round(rel["peak_rss_bytes"] / (16 * GIB), 3),
        "release_active_params": release_active,
        "matmul_gflops": round(flops / 1e9, 1),
        "release_forward_s_projected": round(fwd_s, 1),
        "release_map_s_projected": round(fwd_s + rel["analyse_s"], 1),
    }
    print(f"quickstart map (two models, {emo['tokens']:,} tokens each): {full['wall_s']:.1f} s")
    print(f"release shape {rel['tokens']:,} x {args.layers} x {args.experts}: analysis {rel['analyse_s']:.1f} s, "
          f"peak {figures['release_analysis_peak_rss_gib']} GiB ({figures['release_analysis_peak_share_of_16gb']:.0%} "
          f"of 16 GB); forward projected {fwd_s / 3600:.1f} h on this machine")  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
