"""Forward tokens/s: emo-slice's MoE (tokens sorted by expert, grouped matmul) against a
straightforward per-expert loop like the reference modelling code's (one-hot expert mask, torch.where
per expert, gather, index_add), same model, same weights, same run; float32 and bfloat16, two sizes.

    python examples/bench_forward.py            # both sizes (~2-4 minutes on 2 cores)
    python examples/bench_forward.py --quick    # small size only
    python examples/bench_forward.py --device cuda
    python examples/bench_forward.py --family qwen3_moe    # a Qwen3-MoE checkpoint against transformers' own class

Prints a table and, as its last line, one JSON object with the figures and the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

from emo_slice.model.config import EmoConfig
from emo_slice.model.modeling import EmoForCausalLM, MoE, init_weights
from emo_slice.model.routing import route

SIZES = {
    "small": dict(
        hidden_size=256,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_experts=33,
        num_experts_per_tok=5,
        vocab_size=1024,
        tokens=(4, 256),
    ),
    "release-width": dict(
        hidden_size=2048,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=16,
        num_experts=64,
        num_experts_per_tok=8,
        vocab_size=1024,
        tokens=(1, 512),
    ),
}


def reference_moe_forward(self: MoE, x_ND, ctx, layer):
    """The reference's MoE block: a Python loop over experts with a one-hot mask and index_add."""
    r = route(self.gate(x_ND), self.n_shared, self.top_k, self.norm_topk_prob, ctx.segment_ids_N, ctx.pool_for(layer))
    out_ND = torch.zeros_like(x_ND)
    mask_EKN = F.one_hot(r.experts_NK, num_classes=self.n_experts).permute(2, 1, 0)
    for e in range(self.n_experts):
        slot, tok = torch.where(mask_EKN[e])
        if tok.numel() == 0:
            continue
        xe = x_ND[tok]
        h = F.silu(xe @ self.w_gate_EFD[e].t()) * (xe @ self.w_up_EFD[e].t())
        out_ND.index_add_(0, tok, (h @ self.w_down_EDF[e].t()) * r.weights_NK[tok, slot, None])
    return out_ND, r, None


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tokens_per_s(model, ids, reps: int) -> float:
    with torch.no_grad():
        model(ids)  # warm-up
        best = float("inf")
        for _ in range(reps):
            _sync(ids.device)
            t = time.perf_counter()
            model(ids)
            _sync(ids.device)
            best = min(best, time.perf_counter() - t)
    return ids.numel() / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small size only")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    ap.add_argument(
        "--family",
        choices=("olmoe", "qwen3_moe", "qwen2_moe", "mixtral", "all"),
        help="instead: that family's checkpoint, emo-slice against transformers' own class (bench_families.py)",
    )
    args = ap.parse_args()
    if args.family:
        import bench_families  # beside this script

        extra = ["--quick"] if args.quick else []
        bench_families.main(["--family", args.family, "--reps", str(args.reps), "--device", args.device, *extra])
        return
    torch.manual_seed(0)
    results = {}
    for size, spec in SIZES.items():
        if args.quick and size != "small":
            continue
        spec = dict(spec)
        B, T = spec.pop("tokens")
        cfg = EmoConfig(**spec, num_key_value_heads=spec["num_attention_heads"], num_shared_experts=1)
        base = init_weights(EmoForCausalLM(cfg), std=0.02, seed=0).eval().to(args.device)
        ids = torch.randint(0, cfg.vocab_size, (B, T), device=args.device)
        for dtype in (torch.float32, torch.bfloat16):
            model = base.to(dtype)
            model.set_expert_impl("auto")
            ours = tokens_per_s(model, ids, args.reps)
            with torch.no_grad():
                ours_logits = model(ids).float()
            original = MoE.forward
            MoE.forward = reference_moe_forward
            try:
                ref = tokens_per_s(model, ids, args.reps)
                with torch.no_grad():
                    ref_logits = model(ids).float()
            finally:
                MoE.forward = original
            key = f"{size}/{str(dtype).replace('torch.', '')}"
            results[key] = {
                "ours_tok_s": round(ours, 1),
                "per_expert_loop_tok_s": round(ref, 1),
                "speedup": round(ours / ref, 2),
                "max_abs_logit_diff": float((ours_logits - ref_logits).abs().max()),
            }
            print(
                f"{key:28s} ours {ours:10.1f} tok/s   per-expert loop {ref:10.1f} tok/s   "
                f"x{ours / ref:.2f}   max |dlogit| {results[key]['max_abs_logit_diff']:.2e}",
                flush=True,
            )
        del base
    print(
        json.dumps(
            {
                "benchmark": "forward",
                "device": args.device,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
