"""Forward tokens/s of an OLMoE, Qwen3-MoE, Qwen2-MoE or Mixtral checkpoint: emo-slice against transformers'
own model class, same checkpoint (same weights), same run, float32 and bfloat16; and layer streaming's memory.

    python examples/bench_forward.py --family qwen3_moe             # small and release-width sizes
    python examples/bench_forward.py --family mixtral --quick       # small size only
    python examples/bench_families.py --family all --quick          # every family, one after the other

transformers runs as users run it (`from_pretrained`, its default SDPA attention and grouped-matmul experts);
emo-slice runs `load_model` (whole model) and `LayerwiseModel` (layers streamed from the checkpoint: the
number of decoder layers alive at once is counted, and the process's resident memory above the baseline is
given as a multiple of one layer's weights). Ends with one JSON line of figures and ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
import weakref
from pathlib import Path

import torch

FAMILIES = ("olmoe", "qwen3_moe", "qwen2_moe", "mixtral")
SIZES = {  # the preset's shape is replaced by these (the family's own keys where they differ: see _config)
    "small": dict(hidden=256, expert=128, layers=4, heads=4, kv=2, experts=32, k=4, vocab=1024, tokens=(4, 256)),
    "release-width": dict(  # Qwen3-30B-A3B's widths (hidden 2048, expert 768, 8 of 128 experts), 64 experts, 1 layer
        hidden=2048, expert=768, layers=1, heads=16, kv=4, experts=64, k=8, vocab=1024, tokens=(1, 512)
    ),
}


def _config(family: str, s: dict):
    from emo_slice.model.families import family_of
    from emo_slice.model.presets import family_config

    fam = family_of(family)
    keys = {fam.count_key: s["experts"], fam.keys.get("intermediate_size", "intermediate_size"): s["expert"]}
    if "dense" in fam.options:
        keys["intermediate_size"] = 2 * s["expert"]
    if "shared_mlp" in fam.options:
        keys["shared_expert_intermediate_size"] = 4 * s["expert"]
    return family_config(
        family,
        "tiny",
        hidden_size=s["hidden"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        num_experts_per_tok=s["k"],
        vocab_size=s["vocab"],
        max_position_embeddings=4096,
        **({"head_dim": s["hidden"] // s["heads"]} if family == "qwen3_moe" else {}),
        **keys,
    )


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(models, ids, device, reps: int) -> list[float]:
    """Best wall time of one forward of each model, the models taking turns (a busy machine slows both alike)."""
    best = [float("inf")] * len(models)
    with torch.no_grad():
        for m in models:
            m(ids)  # warm-up
        for _ in range(reps):
            for i, m in enumerate(models):
                _sync(device)
                t = time.perf_counter()
                m(ids)
                _sync(device)
                best[i] = min(best[i], time.perf_counter() - t)
    return best


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def streaming(path: Path, ids: torch.Tensor, dtype: torch.dtype) -> dict:
    """A streamed forward (CPU): decoder layers alive at once (at most) and the resident memory it took above
    the baseline (after a first pass), as a multiple of one layer's weights (activations included)."""
    from emo_slice.io import loading
    from emo_slice.io.checkpoint import Checkpoint
    from emo_slice.model.hf_names import layer_tensors

    ckpt = Checkpoint(path)
    layer_bytes = sum(torch.Size(s).numel() for *_, s in layer_tensors(ckpt.config, 0)) * dtype.itemsize
    real, alive, peak = loading.load_layer, weakref.WeakSet(), [0, 0]

    def counted(*a, **kw):
        mod = real(*a, **kw)
        alive.add(mod)
        peak[0] = max(peak[0], len(alive))
        peak[1] = max(peak[1], _rss() - base)
        return mod

    lw = loading.LayerwiseModel(ckpt, dtype, "cpu")
    lw.forward([ids])  # warm: embedding and head read, allocator warmed; then the measured pass
    base = _rss()
    loading.load_layer = counted
    try:
        lw.forward([ids], trace=lambda b, t: peak.__setitem__(1, max(peak[1], _rss() - base)))
    finally:
        loading.load_layer = real
    return {"max_layers_alive": peak[0], "rss_over_baseline_in_layers": round(peak[1] / layer_bytes, 2)}


def bench_family(family: str, args) -> dict:
    from transformers import AutoModelForCausalLM

    from emo_slice.io.build import random_checkpoint
    from emo_slice.io.loading import load_model

    device = torch.device(args.device)
    results = {}
    for size, spec in SIZES.items():
        if args.quick and size != "small":
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench-{family}-", dir=args.scratch) as tmp:
            path = random_checkpoint(Path(tmp) / "ckpt", _config(family, spec), seed=0, std=0.02)
            B, T = spec["tokens"]
            ids = torch.randint(0, spec["vocab"], (B, T), generator=torch.Generator().manual_seed(0)).to(device)
            for dtype in (torch.float32, torch.bfloat16):
                hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
                ours = load_model(path, dtype, device)
                t_hf, t_ours = best_seconds([hf, ours], ids, device, args.reps)
                with torch.no_grad():
                    diff = float((hf(ids).logits.float() - ours(ids).float()).abs().max())
                key = f"{size}/{str(dtype).replace('torch.', '')}"
                results[key] = {
                    "ours_tok_s": round(ids.numel() / t_ours, 1),
                    "transformers_tok_s": round(ids.numel() / t_hf, 1),
                    "speedup": round(t_hf / t_ours, 2),
                    "max_abs_logit_diff": diff,
                }
                del hf, ours
                if device.type == "cpu" and dtype == torch.float32:
                    results[key]["streamed"] = streaming(path, ids, dtype)
                print(f"{family:10s} {key:22s} {json.dumps(results[key])}", flush=True)
    return results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", required=True, choices=(*FAMILIES, "all"))
    ap.add_argument("--quick", action="store_true", help="small size only")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    ap.add_argument("--scratch", default=None, help="folder for the temporary checkpoints (default: the system's)")
    args = ap.parse_args(argv)
    import transformers

    torch.manual_seed(0)
    families = FAMILIES if args.family == "all" else (args.family,)
    results = {f: bench_family(f, args) for f in families}
    print(
        json.dumps(
            {
                "benchmark": "forward-families",
                "device": args.device,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
