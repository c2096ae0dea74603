"""Training throughput: emo-slice's MoE (sorted token-expert pairs, grouped matmul) against a straightforward
per-expert-loop MoE (the reference model's style: for each expert, find its tokens with a mask, run it,
add its weighted output) of the same configuration, in the same run, float32 and bfloat16 autocast.

Each variant runs the full EMO training step: document-pool routing, CE + global LB + router z + LM z,
backward, clipping, AdamW. The models start from the same weights and see the same batches.

    python examples/bench_train.py                       # small preset, 8 x 128 tokens per step
    python examples/bench_train.py --preset tiny --steps 5

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time
import types

import torch
import torch.nn.functional as F

from emo_slice.model.modeling import EmoForCausalLM, init_weights
from emo_slice.model.routing import attention_documents, route
from emo_slice.train.config import train_preset
from emo_slice.train.losses import all_reduce_counts, expert_counts, lm_z_loss, moe_losses
from emo_slice.train.pools import pool_draw


def per_expert_loop_forward(self, x_ND, ctx, layer):
    """The straightforward MoE: a Python loop over all experts with a boolean mask per expert.

    Replaces MoE.forward(x_ND, ctx, layer) -> (out_ND, routing, expert norms or None)."""
    r = route(self.gate(x_ND), self.n_shared, self.top_k, self.norm_topk_prob, ctx.segment_ids_N, ctx.pool_for(layer))
    out_ND = torch.zeros_like(x_ND)
    for e in range(self.n_experts):
        tok_M, slot_M = torch.where(r.experts_NK == e)
        if tok_M.numel() == 0:
            continue
        x_MD = x_ND[tok_M]
        h_MF = F.silu(x_MD @ self.w_gate_EFD[e].t()) * (x_MD @ self.w_up_EFD[e].t())
        y_MD = (h_MF @ self.w_down_EDF[e].t()) * r.weights_NK[tok_M, slot_M, None]
        out_ND = out_ND.index_add(0, tok_M, y_MD.to(out_ND.dtype))
    return out_ND, r, None


def make_model(cfg, variant: str) -> EmoForCausalLM:
    model = init_weights(EmoForCausalLM(cfg), 0.02, seed=0)
    if variant == "per-expert loop":
        for layer in model.model.layers:
            layer.mlp.forward = types.MethodType(per_expert_loop_forward, layer.mlp)
    elif variant == "sorted loop":
        model.set_expert_impl("loop")
    return model


def step_fn(model, opt, ids, tc, p_min, p_max, step, dtype):
    """One EMO training step on windows ids [B, T+1]; returns the total loss."""
    eos = model.config.eos_token_id
    inp_BT, tgt_BT = ids[:, :-1], ids[:, 1:]
    pool = pool_draw(inp_BT, eos, p_min, p_max, 0, step, 0)  # a callable (layer, num_segments) -> sizes
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        out = model(inp_BT, pool_size=pool, document_ids_BT=attention_documents(inp_BT, eos), return_routing=True)
        logits_NV = out["logits"].float().reshape(-1, model.config.vocab_size)
        counts_LR = all_reduce_counts(torch.stack([expert_counts(r) for r in out["routing"]]))
        lb, z = moe_losses(out["routing"], counts_LR)
        loss = (
            F.cross_entropy(logits_NV, tgt_BT.reshape(-1))
            + tc.lb_weight * lb
            + tc.z_weight * z
            + tc.lm_z_weight * lm_z_loss(logits_NV)
        )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    tc = train_preset(args.preset)
    cfg = tc.model_config()
    p_min, p_max = tc.pool_range(cfg)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.warmup + args.steps):
        ids = torch.randint(2, cfg.vocab_size, (args.batch, args.seq_len + 1), generator=g)
        ids[torch.rand(ids.shape, generator=g) < 1 / 64] = cfg.eos_token_id  # documents of ~64 tokens
        batches.append(ids)
    tokens = args.batch * args.seq_len
    print(
        f"preset {args.preset}: {cfg.num_hidden_layers} layers, {cfg.num_experts} experts (top "
        f"{cfg.num_experts_per_tok}), d {cfg.hidden_size}, F {cfg.intermediate_size}; {tokens} tokens per step; "
        f"{torch.get_num_threads()} threads"
    )
    results = {}
    for dtype in ("float32", "bfloat16"):
        for variant in ("emo-slice", "sorted loop", "per-expert loop"):
            model = make_model(cfg, variant)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
            losses = []
            for i, ids in enumerate(batches):
                if i == args.warmup:
                    t0 = time.perf_counter()
                losses.append(step_fn(model, opt, ids, tc, p_min, p_max, i, dtype))
            dt = time.perf_counter() - t0
            tps = tokens * args.steps / dt
            results[f"{dtype}/{variant}"] = {"tokens_per_s": round(tps, 1), "last_loss": round(losses[-1], 4)}
            print(f"{dtype:9s} {variant:16s} {tps:10.0f} tok/s   loss after {len(losses)} steps {losses[-1]:.4f}")
        base = results[f"{dtype}/per-expert loop"]["tokens_per_s"]
        results[f"{dtype}/speedup_vs_per_expert_loop"] = round(results[f"{dtype}/emo-slice"]["tokens_per_s"] / base, 2)
        print(f"{dtype}: emo-slice is {results[f'{dtype}/speedup_vs_per_expert_loop']:.2f}x the per-expert loop")
    results["config"] = {
        "preset": args.preset,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
