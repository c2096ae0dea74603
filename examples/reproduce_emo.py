"""The EMO paper's experiment at CPU scale: EMO vs a standard MoE, sliced per domain.

    python examples/reproduce_emo.py --data ../shared/data/domains --out runs/reproduce   # ~30-40 min
    python examples/reproduce_emo.py --out runs/reproduce-demo       # embedded corpus (emo-slice demo-data)

1. Pretrain an EMO model (document pool, intra-document attention) and a standard MoE with the same
   configuration, data, seed and token budget (the two runs in parallel, one core each).
2. For every domain, choose experts from a single 5-shot example of that domain's task (profile,
   mean router probability) and slice each model to 25% and 12.5% of its experts (extract).
3. Evaluate every slice against its full model on that domain's held-out documents (bits per byte)
   and on the rest of its multiple-choice task (accuracy), with `emo-slice eval`.
4. Specialisation: per layer, the Jaccard overlap of the expert sets chosen for different domains, and
   a PNG heatmap of expert usage by domain (needs matplotlib: pip install 'emo-slice[plot]').
Every step is an emo-slice command, echoed before it runs. Results: OUT/results.json, OUT/usage.png,
and the table; the last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("emo", "standard")
SHARES = ("25%", "12.5%")


def echo(args: list[str]) -> str:
    line = "$ emo-slice " + shlex.join(args)
    print(line, flush=True)
    return line


def cli(args: list[str], log: list[str], env: dict | None = None) -> None:
    log.append(echo(args))
    proc = subprocess.run([sys.executable, "-m", "emo_slice", *args], env=env, stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
        sys.exit(f"step failed: emo-slice {shlex.join(args)}")


def cli_parallel(jobs: list[list[str]], log: list[str]) -> None:
    """Run commands at the same time, one CPU thread each."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = []
    for args in jobs:
        log.append(echo(args))
        procs.append(
            (
                args,
                subprocess.Popen(
                    [sys.executable, "-m", "emo_slice", *args, "--set", "progress=false"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                ),
            )
        )
    for args, p in procs:
        if p.wait() != 0:
            sys.exit(f"step failed: emo-slice {shlex.join(args)}")


def prepare_data(src: Path | None, out: Path, log: list[str], calib_shots: int, seed: int) -> tuple[Path, list[str]]:
    """Per-domain held-out documents and task files; the calibration demos are removed from the tasks."""
    data = out / "data"
    if src is None:
        cli(["demo-data", str(out / "corpus")], log)
        src = out / "corpus"
    domains = sorted(p.stem for p in (src / "tasks").glob("*.jsonl"))
    if not domains:
        sys.exit(f"{src}/tasks holds no DOMAIN.jsonl task files")
    for sub in ("valid", "calib", "tasks"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    valid = [json.loads(l) for l in open(src / "valid.jsonl") if l.strip()]
    for d in domains:
        docs = [r for r in valid if r.get("domain") == d]
        (data / "valid" / f"{d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs))
        items = [json.loads(l) for l in open(src / "tasks" / f"{d}.jsonl") if l.strip()]
        calib = set(random.Random(seed).sample(range(len(items)), calib_shots))
        (data / "calib" / f"{d}.jsonl").write_text("".join(json.dumps(items[i]) + "\n" for i in sorted(calib)))
        (data / "tasks" / f"{d}.jsonl").write_text(
            "".join(json.dumps(it) + "\n" for i, it in enumerate(items) if i not in calib)
        )
    return src, domains


def main() -> None:
    ap = argparse.ArgumentParser(description="EMO vs standard MoE, sliced per domain, at CPU scale.")
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder with train.jsonl, valid.jsonl (a 'domain' field) and tasks/DOMAIN.jsonl; "
        "default: the embedded corpus (emo-slice demo-data)",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    ap.add_argument("--steps", type=int, default=800, help="optimizer steps (16 x 256 tokens each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lb-weight", type=float, default=0.1)
    ap.add_argument("--shots", type=int, default=5, help="demonstrations in the calibration example")
    ap.add_argument("--skip-train", action="store_true", help="reuse the models already in OUT")
    args = ap.parse_args()
    t0 = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    src, domains = prepare_data(args.data, out, log, args.shots, args.seed)
    data = out / "data"

    # 1. the two models: same configuration, data, seed and token budget
    train = [
        "--data",
        str(src / "train.jsonl"),
        "--valid-data",
        str(src / "valid.jsonl"),
        "--preset",
        "small",
        "--tokenizer",
        "bytes",
        "--set",
        "vocab_size=256",
        "--set",
        "intermediate_size=128",
        "--seq-len",
        "256",
        "--batch-size",
        "16",
        "--steps",
        str(args.steps),
        "--seed",
        str(args.seed),
        "--set",
        f"lb_weight={args.lb_weight}",
        "--set",
        f"eval_every={args.steps}",
        "--set",
        f"save_every={args.steps}",
    ]
    if not args.skip_train:
        cli_parallel([["pretrain", "--out", str(out / m), "--router", m, "--overwrite", *train] for m in MODELS], log)
    t_train = time.time() - t0

    # 2-3. per model and domain: profile one 5-shot example, slice, evaluate against the full model
    results: dict = {m: {} for m in MODELS}
    profiles: dict = {m: {} for m in MODELS}
    for m in MODELS:
        full = out / m / "final"
        for d in domains:
            prof = out / "profiles" / f"{m}-{d}.json"
            cli(
                [
                    "profile",
                    str(full),
                    "--examples",
                    str(data / "calib" / f"{d}.jsonl"),
                    "--shots",
                    str(args.shots),
                    "--out",
                    str(prof),
                    "--overwrite",
                ],
                log,
            )
            profiles[m][d] = json.loads(prof.read_text())
            row = {}
            for share in SHARES:
                tag = share.rstrip("%")
                sliced = out / "slices" / f"{m}-{d}-{tag}"
                cli(
                    [
                        "extract",
                        str(full),
                        "--keep",
                        share,
                        "--profile",
                        str(prof),
                        "--out",
                        str(sliced),
                        "--overwrite",
                    ],
                    log,
                )
                res_path = out / "eval" / f"{m}-{d}-{tag}.json"
                cli(
                    [
                        "eval",
                        str(sliced),
                        "--against",
                        str(full),
                        "--task",
                        str(data / "tasks" / f"{d}.jsonl"),
                        "--lm",
                        str(data / "valid" / f"{d}.jsonl"),
                        "--out",
                        str(res_path),
                        "--overwrite",
                    ],
                    log,
                )
                row[share] = json.loads(res_path.read_text())
            results[m][d] = row

    # 4. tables and specialisation
    from emo_slice.slicing.specialisation import overlap, usage_heatmap

    summary: dict = {
        "settings": {
            "data": str(args.data or "embedded demo corpus"),
            "steps": args.steps,
            "tokens_per_model": args.steps * 16 * 256,
            "seed": args.seed,
            "lb_weight": args.lb_weight,
            "calibration": f"one {args.shots}-shot example",
            "model": "4 layers, d 128, 32 routed + 1 shared experts, top 4 + shared, bytes",
        },
        "domains": {},
        "overlap": {},
    }
    print()
    header = (
        f"{'domain':12s}{'model':10s}{'full bpb':>10s}{'25%':>9s}{'drop':>8s}{'12.5%':>9s}{'drop':>8s}"
        f"{'full acc':>10s}{'25%':>8s}{'12.5%':>8s}"
    )
    print(header)
    print("-" * len(header))
    for d in domains:
        summary["domains"][d] = {}
        for m in MODELS:
            row = {}
            for share in SHARES:
                res = results[m][d][share]
                r, full = res["results"], res["against_results"]
                lm_key, mc_key = f"lm:{d}", d
                row["full_bpb"] = full[lm_key]["bits_per_byte"]
                row[f"bpb_{share}"] = r[lm_key]["bits_per_byte"]
                row["full_acc"] = full[mc_key]["acc_per_char"]
                row[f"acc_{share}"] = r[mc_key]["acc_per_char"]
            summary["domains"][d][m] = row
            print(
                f"{d:12s}{m:10s}{row['full_bpb']:10.3f}{row['bpb_25%']:9.3f}{row['bpb_25%'] - row['full_bpb']:+8.3f}"
                f"{row['bpb_12.5%']:9.3f}{row['bpb_12.5%'] - row['full_bpb']:+8.3f}"
                f"{row['full_acc']:10.1%}{row['acc_25%']:8.1%}{row['acc_12.5%']:8.1%}"
            )
    for m in MODELS:
        drops = {
            s: sum(summary["domains"][d][m][f"bpb_{s}"] - summary["domains"][d][m]["full_bpb"] for d in domains)
            / len(domains)
            for s in SHARES
        }
        summary[f"{m}_mean_bpb_increase"] = drops
    n_routed = profiles["emo"][domains[0]]["layers"][0]["scores"]["mean-prob"].__len__()
    for share, kept in (("25%", round((n_routed + 1) * 0.25) - 1), ("12.5%", round((n_routed + 1) * 0.125) - 1)):
        summary["overlap"][share] = {m: overlap(profiles[m], kept) for m in MODELS}
    ratio = summary["emo_mean_bpb_increase"]["25%"] / max(summary["standard_mean_bpb_increase"]["25%"], 1e-9)
    summary["emo_over_standard_increase_25"] = ratio
    print()
    for m in MODELS:
        inc = summary[f"{m}_mean_bpb_increase"]
        ov = {s: summary["overlap"][s][m]["mean"] for s in SHARES}
        print(
            f"{m:9s} mean bits/byte increase: 25% {inc['25%']:+.3f}, 12.5% {inc['12.5%']:+.3f};  "
            f"domain expert-set overlap (Jaccard): 25% {ov['25%']:.2f}, 12.5% {ov['12.5%']:.2f}"
        )
    print(f"EMO's increase at 25% is {ratio:.2f}x the standard MoE's (the paper's shape: well under 1/3)")
    png = usage_heatmap({m: profiles[m] for m in MODELS}, out / "usage.png")
    print(f"usage heatmap: {png}" if png else "usage heatmap skipped: pip install matplotlib")
    from emo_slice.artifacts import provenance

    summary["provenance"] = provenance(script="examples/reproduce_emo.py", argv=sys.argv[1:])
    summary["commands"] = log
    summary["seconds"] = {"pretrain": round(t_train, 1), "total": round(time.time() - t0, 1)}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "emo_mean_bpb_increase",
                    "standard_mean_bpb_increase",
                    "emo_over_standard_increase_25",
                    "seconds",
                )
            }
            | {"overlap_mean": {s: {m: round(summary["overlap"][s][m]["mean"], 3) for m in MODELS} for s in SHARES}}
        )
    )


if __name__ == "__main__":
    main()
