"""Multiple-choice scoring speed: emo-slice eval's one-row-per-item scoring (context once, every choice
after it under a tree attention mask) against the naive way (one full forward pass per choice), and
against one batched row per choice. Same model, same items, same run; the log-likelihoods must agree.

    python examples/bench_eval.py [--preset small] [--task tasks/quotes.jsonl] [--items 40]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from emo_slice.data.sources import MCItem, load_mc_task
from emo_slice.eval.harness import evaluate_mc, score_rows
from emo_slice.eval.requests import encode_item, naive_rows
from emo_slice.eval.runner import Runner
from emo_slice.io.build import random_checkpoint

DEFAULT_TASK = Path("/work/shared/data/domains/tasks/quotes.jsonl")


def synthetic_items(n: int) -> list[MCItem]:
    g = torch.Generator().manual_seed(0)
    words = "the of and to in is was he for it with as his on be at by had not are but from".split()
    out = []
    for i in range(n):
        ctx = " ".join(words[j] for j in torch.randint(len(words), (90,), generator=g).tolist()) + "\n"
        choices = [" ".join(words[j] for j in torch.randint(len(words), (12,), generator=g).tolist()) for _ in range(4)]
        out.append(MCItem(str(i), ctx, choices, i % 4))
    return out


@torch.no_grad()
def naive(runner: Runner, items: list[MCItem], L: int) -> list[list[float]]:
    """One forward pass per choice over context + choice, full logits, as a direct implementation would."""
    lls = []
    for it in items:
        enc = encode_item(runner.tokenizer, it, L)
        C = len(enc.ctx)
        row = []
        for cont in enc.conts:
            logits = runner.model(torch.tensor([enc.ctx + cont]))
            lp = torch.log_softmax(logits[0, C - 1 : -1].float(), -1)
            row.append(lp.gather(-1, torch.tensor(cont)[:, None]).sum().item())
        lls.append(row)
    return lls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--task", default=str(DEFAULT_TASK) if DEFAULT_TASK.exists() else None)
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items = (load_mc_task(args.task) if args.task else synthetic_items(args.items))[: args.items]
    with tempfile.TemporaryDirectory() as tmp:
        path = random_checkpoint(Path(tmp) / "m", args.preset, seed=0)
        runner = Runner(str(path))
        L = runner.config.max_position_embeddings
        evaluate_mc(runner, items[:2], batch_size=args.batch_size)  # warm-up

        t0 = time.perf_counter()
        fast = evaluate_mc(runner, items, batch_size=args.batch_size)
        t_fast = time.perf_counter() - t0

        t0 = time.perf_counter()
        rows = [r for it in items for r in naive_rows(encode_item(runner.tokenizer, it, L))]
        per_row = score_rows(runner, rows, args.batch_size)
        t_rows = time.perf_counter() - t0

        t0 = time.perf_counter()
        slow = naive(runner, items, L)
        t_naive = time.perf_counter() - t0

    lls_fast = [p["loglikelihoods"] for p in fast.predictions]
    flat_rows = [sum(s[0]) for s in per_row]
    diff = max(abs(a - b) for fa, sa in zip(lls_fast, slow) for a, b in zip(fa, sa))
    diff_rows = max(abs(a - b) for a, b in zip([x for f in lls_fast for x in f], flat_rows))
    n = len(items)
    tok_ctx = sum(len(encode_item(runner.tokenizer, it, L).ctx) for it in items)
    figures = {
        "preset": args.preset,
        "task": args.task or "synthetic",
        "items": n,
        "choices": sum(len(it.choices) for it in items),
        "context_tokens": tok_ctx,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "items_per_s_emo_slice": round(n / t_fast, 2),
        "items_per_s_naive_per_choice": round(n / t_naive, 2),
        "items_per_s_row_per_choice_batched": round(n / t_rows, 2),
        "speedup_vs_naive": round(t_naive / t_fast, 2),
        "speedup_vs_row_per_choice": round(t_rows / t_fast, 2),
        "max_abs_ll_diff_vs_naive": diff,
        "max_abs_ll_diff_vs_rows": diff_rows,
        "same_predictions": [max(range(len(f)), key=f.__getitem__) for f in lls_fast]
        == [max(range(len(s)), key=s.__getitem__) for s in slow],
    }
    print(f"{n} items, {figures['choices']} choices, preset {args.preset}")
    print(f"emo-slice (context once per item): {figures['items_per_s_emo_slice']:8.2f} items/s")
    print(
        f"one row per choice, batched:       {figures['items_per_s_row_per_choice_batched']:8.2f} items/s "
        f"({figures['speedup_vs_row_per_choice']}x slower)"
    )
    print(
        f"naive, one forward per choice:     {figures['items_per_s_naive_per_choice']:8.2f} items/s "
        f"({figures['speedup_vs_naive']}x slower)"
    )
    print(f"largest log-likelihood difference vs naive: {diff:.2e}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
