"""Updating a module without disrupting the full model: slice to one domain, fine-tune the slice, merge it back,
and measure every domain before and after, for an EMO model and the standard MoE trained the same way.

The EMO paper names "updating modules without disrupting the full model" as an open problem. On the embedded
four-domain corpus (the quickstart's models, `emo-slice quickstart`), for each model:

1. profile the model on a 5-shot prompt of the domain's TRAINING items and extract a slice keeping --keep experts;
2. fine-tune the slice on the domain's training items (continuation multiple choice built from training
   documents exactly as demo-data builds the scored items from held-out ones: context lines, gold = next line),
   answer-only loss, `--train` part (default routed: only the kept routed experts learn, exactly what `merge`
   writes back by default);
3. merge the tuned slice back into the full model: replace, and average with weight 0.5;
4. score, on the held-out scored items and documents of every domain (tasks/DOMAIN.jsonl: accuracy and bits per
   byte of the gold answer; valid/DOMAIN.jsonl: bits per byte of the documents): the slice before (step-000000)
   and after fine-tuning on the domain; the full model before, merged (replace) and merged (average) on every
   domain. The other domains' change is the disruption.

Ends with one JSON line holding every figure.

    python examples/finetune_merge.py --quickstart runs/quickstart --out runs/finetune-merge
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from emo_slice.data.democorpus import DOMAINS, make_tasks
from emo_slice.errors import EmoSliceError, UsageError

ROUTERS = ("emo", "standard")


def train_items(data: Path, domain: str, n: int, seed: int, out: Path) -> Path:
    """The domain's training items, from its TRAINING documents (the scored items come from held-out ones)."""
    docs = [json.loads(ln) for ln in (data / "train.jsonl").read_text().splitlines() if ln.strip()]
    docs = [d for d in docs if d.get("domain") == domain]
    items = make_tasks(docs, n, seed)
    if not items:
        raise UsageError(f"{data}/train.jsonl has no {domain} document to build training items from")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(it) + "\n" for it in items))
    return out


def scores(model: Path, data: Path, domains, limit, device: str) -> dict:
    """Per domain: accuracy, bits per byte of the gold, bits per byte of the held-out documents."""
    from emo_slice.eval.harness import simple_evaluate

    tasks = [str(data / "tasks" / f"{d}.jsonl") for d in domains]
    lm = [str(data / "valid" / f"{d}.jsonl") for d in domains]
    r = simple_evaluate(str(model), tasks=tasks, lm=lm, limit=limit, device=device)["results"]
    return {
        d: {
            "acc": r[d]["acc,none"],
            "gold_bpb": r[d]["bits_per_byte_gold"],
            "doc_bpb": r[f"lm:{d}"]["bits_per_byte"],
        }
        for d in domains
    }


def slice_model(full: Path, examples: Path, keep: str, out: Path) -> None:
    from emo_slice.workflows.slice import make_slice

    if not (out / "slice.json").exists():
        make_slice(str(full), out, keep=keep, examples=str(examples), shots=5, seed=0)


def finetune(sl: Path, items: Path, run: Path, args) -> None:
    from emo_slice.train.finetune import finetune as train
    from emo_slice.train.finetune_config import FinetuneConfig

    if (run / "final").is_dir():
        return
    cfg = FinetuneConfig(
        model=str(sl), tasks=[str(items)], out=str(run), train=args.train, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, valid_share=0.1, seed=args.seed, device=args.device, progress=False,
        overwrite=True,
    )  # fmt: skip
    train(cfg)


def merged(full: Path, tuned: Path, out: Path, mode: str) -> Path:
    from emo_slice.slicing.merge import MergeRecipe, merge

    if not (out / "merge.json").exists():
        merge(full, tuned, out, MergeRecipe(mode, 0.5 if mode == "average" else None), overwrite=True)
    return out


def one_model(router: str, args) -> dict:
    qs, work = Path(args.quickstart), Path(args.out) / router
    data, full, dom = qs / "data", qs / router / "final", args.domain
    items = train_items(data, dom, args.items, args.seed, work / "train-items" / f"{dom}.jsonl")
    t0 = time.perf_counter()
    slice_model(full, items, args.keep, work / "slice")
    finetune(work / "slice", items, work / "ft", args)
    tuned = work / "ft" / "final"
    rep, avg = (
        merged(full, tuned, work / "merged-replace", "replace"),
        merged(full, tuned, work / "merged-average", "average"),
    )
    train_s = time.perf_counter() - t0
    out = {
        "slice_before": scores(work / "ft" / "step-000000", data, [dom], args.limit, args.device)[dom],
        "slice_after": scores(tuned, data, [dom], args.limit, args.device)[dom],
        "full_before": scores(full, data, DOMAINS, args.limit, args.device),
        "merged_replace": scores(rep, data, DOMAINS, args.limit, args.device),
        "merged_average": scores(avg, data, DOMAINS, args.limit, args.device),
        "experts_kept": json.loads((work / "slice" / "slice.json").read_text())["keep"],
        "seconds_slice_and_train": round(train_s, 1),
    }
    log = [json.loads(ln) for ln in (work / "ft" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["kind"] == "eval"]
    out["held_out_loss"] = [evals[0].get("val_loss"), evals[-1].get("val_loss")]
    out["steps"] = max(r["step"] for r in log)
    return out


def table(results: dict, domain: str) -> str:
    """The markdown table of docs/finetune.md: one row per figure, EMO and standard side by side."""
    lines = ["| | EMO | standard |", "| --- | --- | --- |"]

    def row(label, get):
        lines.append(f"| {label} | " + " | ".join(get(results[r]) for r in ROUTERS) + " |")

    for m, what in (("acc", "accuracy"), ("gold_bpb", "gold bits/byte"), ("doc_bpb", "document bits/byte")):
        row(
            f"{domain} {what}: slice before -> after",
            lambda x: f"{x['slice_before'][m]:.3f} -> {x['slice_after'][m]:.3f}",
        )
        row(
            f"{domain} {what}: full -> merged (replace / average)",
            lambda x: (
                f"{x['full_before'][domain][m]:.3f} -> {x['merged_replace'][domain][m]:.3f} / "
                f"{x['merged_average'][domain][m]:.3f}"
            ),
        )
    for d in DOMAINS:
        if d != domain:
            row(
                f"{d} document bits/byte: full -> merged (replace / average)",
                lambda x, d=d: (
                    f"{x['full_before'][d]['doc_bpb']:.3f} -> {x['merged_replace'][d]['doc_bpb']:.3f} / "
                    f"{x['merged_average'][d]['doc_bpb']:.3f}"
                ),
            )
            row(
                f"{d} accuracy: full -> merged (replace / average)",
                lambda x, d=d: (
                    f"{x['full_before'][d]['acc']:.3f} -> {x['merged_replace'][d]['acc']:.3f} / "
                    f"{x['merged_average'][d]['acc']:.3f}"
                ),
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quickstart", required=True, help="A quickstart folder (data/, emo/final, standard/final).")
    p.add_argument("--out", required=True, help="Working folder (slices, runs, merged models are kept and reused).")
    p.add_argument("--domain", default="code", choices=DOMAINS)
    p.add_argument("--keep", default="25%", help="Experts the slice keeps (count or share).")
    p.add_argument("--train", default="routed", help="What fine-tuning trains (finetune --train).")
    p.add_argument("--items", type=int, default=400, help="Training items built from the domain's documents.")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="Scored items / documents per domain (default all).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    random.seed(args.seed)
    try:
        results = {r: one_model(r, args) for r in ROUTERS}
    except EmoSliceError as e:
        sys.exit(f"error: {e}")
    print(table(results, args.domain))
    settings = {k: v for k, v in vars(args).items()}
    print(json.dumps({"settings": settings, "results": results}))


if __name__ == "__main__":
    main()
