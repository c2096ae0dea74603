"""Multiple-choice scoring speed, lm-evaluation-harness-exact in every arm: emo-slice's tree rows (an item's
context once, every choice after it under a tree attention mask) against one row per choice (what
`per_choice_rows=True` and a document pool use; lm-eval's request layout) and against lm-eval's own HF
backend (`HFLM`, when `lm_eval` is installed) on the same checkpoint exported to Qwen2MoeForCausalLM (which
computes what EMO computes). Same items, same run; the log-likelihoods must agree.

    python examples/bench_eval.py [--device cpu|cuda] [--preset small] [--layers N] [--items 40]
                                  [--task tasks/quotes.jsonl] [--batch-size 8] [--dtype float32]

The last line is one JSON object with the figures (items/s of each arm, ratios, largest difference).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from emo_slice.data.sources import MCItem, load_mc_task
from emo_slice.eval.runner import Runner
from emo_slice.eval.scoring import evaluate_mc
from emo_slice.io.build import random_checkpoint
from emo_slice.model.presets import preset


def synthetic_items(n: int) -> list[MCItem]:
    """Contexts of ~90 words, 4 choices of ~12 words each, lm-eval's " " target delimiter."""
    g = torch.Generator().manual_seed(0)
    words = "the of and to in is was he for it with as his on be at by had not are but from".split()
    out = []
    for i in range(n):
        ctx = " ".join(words[j] for j in torch.randint(len(words), (90,), generator=g).tolist()) + "\nAnswer:"
        choices = [" ".join(words[j] for j in torch.randint(len(words), (12,), generator=g).tolist()) for _ in range(4)]
        out.append(MCItem(str(i), ctx, choices, i % 4, target_delimiter=" "))
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def lm_eval_arm(folder: Path, items: list[MCItem], args, L: int):
    """(log-likelihoods per item, seconds) from lm-eval's HFLM, or None when lm_eval cannot be imported."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        print(f"lm-eval arm skipped: {e} (pip install 'lm-eval[hf]==0.4.13' to run it)")
        return None
    from emo_slice.export import export

    export(args.checkpoint, folder, "qwen2-moe")
    lm = HFLM(pretrained=str(folder), device=args.device, batch_size=args.batch_size, max_length=L, dtype=args.dtype)
    reqs = [
        Instance("loglikelihood", {}, (it.context, it.target_delimiter + c), idx)
        for it in items
        for idx, c in enumerate(it.choices)
    ]
    lm.loglikelihood(reqs[:8], disable_tqdm=True)  # warm-up
    res, secs = timed(lambda: lm.loglikelihood(reqs, disable_tqdm=True), args.device)
    flat = iter(ll for ll, _ in res)
    return [[next(flat) for _ in it.choices] for it in items], secs


def argmaxes(lls: list[list[float]]) -> list[int]:
    return [max(range(len(x)), key=lambda i: (x[i], -i)) for x in lls]


def emo_slice_arms(args, items: list[MCItem]) -> tuple[dict, list[list[float]], float, int]:
    """Tree rows and one row per choice: (figures, tree-row log-likelihoods, tree seconds, max_length)."""
    runner = Runner(str(args.checkpoint), args.dtype, device=args.device)
    L = args.max_length or runner.config.max_position_embeddings
    kw = dict(max_length=L, batch_size=args.batch_size)
    evaluate_mc(runner, items[:4], **kw)  # warm-up
    tree, t_tree = timed(lambda: evaluate_mc(runner, items, **kw), args.device)
    flat, t_flat = timed(lambda: evaluate_mc(runner, items, per_choice_rows=True, **kw), args.device)
    lls = [p["loglikelihoods"] for p in tree.predictions]
    lls_flat = [p["loglikelihoods"] for p in flat.predictions]
    n = len(items)
    fig = {
        "device": str(runner.device),
        "dtype": str(runner.dtype).replace("torch.", ""),
        "items": n,
        "choices": sum(len(it.choices) for it in items),
        "truncated_items": tree.truncated,
        "items_per_s_tree_rows": round(n / t_tree, 2),
        "items_per_s_per_choice_rows": round(n / t_flat, 2),
        "speedup_vs_per_choice_rows": round(t_flat / t_tree, 2),
        "max_abs_ll_diff_vs_per_choice_rows": max(abs(a - b) for x, y in zip(lls, lls_flat) for a, b in zip(x, y)),
    }
    return fig, lls, t_tree, L


def run(args, items: list[MCItem], tmp: Path) -> dict:
    fig, lls, t_tree, L = emo_slice_arms(args, items)
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    keys = ["items_per_s_lm_eval_hf", "speedup_vs_lm_eval_hf", "max_abs_ll_diff_vs_lm_eval_hf"]
    fig |= dict.fromkeys(keys + ["same_predictions_as_lm_eval_hf"])
    if args.skip_lm_eval:
        print("lm-eval arm skipped: --skip-lm-eval")
        return fig
    got = lm_eval_arm(tmp / "qwen2moe", items, args, L)
    if got is not None:
        theirs, t_lm = got
        fig["items_per_s_lm_eval_hf"] = round(len(items) / t_lm, 2)
        fig["speedup_vs_lm_eval_hf"] = round(t_lm / t_tree, 2)
        fig["max_abs_ll_diff_vs_lm_eval_hf"] = max(abs(a - b) for x, y in zip(lls, theirs) for a, b in zip(x, y))
        fig["same_predictions_as_lm_eval_hf"] = argmaxes(lls) == argmaxes(theirs)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--layers", type=int, default=None, help="override the preset's num_hidden_layers")
    ap.add_argument("--task", default=None, help="a multiple-choice task file (default: synthetic items)")
    ap.add_argument("--synthetic", action="store_true", help="synthetic items even when --task is given")
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default float32 on CPU, bfloat16 on CUDA)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-lm-eval", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    task = None if args.synthetic else args.task
    if task and not Path(task).is_file():
        print(f"error: --task {task}: no such file", file=sys.stderr)
        sys.exit(2)
    items = (load_mc_task(task) if task else synthetic_items(args.items))[: args.items]
    cfg = preset(args.preset, **({"num_hidden_layers": args.layers} if args.layers else {}))
    with tempfile.TemporaryDirectory() as tmp:
        args.checkpoint = random_checkpoint(Path(tmp) / "m", cfg, seed=0, dtype=args.dtype)
        fig = run(args, items, Path(tmp))
    fig = {"preset": args.preset, "layers": cfg.num_hidden_layers, "task": task or "synthetic"} | fig
    fig |= {"batch_size": args.batch_size, "threads": args.threads}
    print(f"{fig['items']} items, {fig['choices']} choices, preset {args.preset}, {fig['device']} {fig['dtype']}")
    print(f"emo-slice tree rows (context once): {fig['items_per_s_tree_rows']:8.2f} items/s")
    print(
        f"emo-slice one row per choice:       {fig['items_per_s_per_choice_rows']:8.2f} items/s "
        f"(tree rows {fig['speedup_vs_per_choice_rows']}x faster)"
    )
    if fig["items_per_s_lm_eval_hf"] is not None:
        print(
            f"lm-eval HFLM (Qwen2-MoE export):     {fig['items_per_s_lm_eval_hf']:8.2f} items/s "
            f"(tree rows {fig['speedup_vs_lm_eval_hf']}x faster; largest ll difference "
            f"{fig['max_abs_ll_diff_vs_lm_eval_hf']:.2e}, same predictions {fig['same_predictions_as_lm_eval_hf']})"
        )
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
