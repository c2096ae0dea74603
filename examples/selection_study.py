"""Is the profile's choice of experts better than random ones? Every selection method against random draws.

For each model: profile it once on a few-shot example of one domain (`--calib`), then at every K slice it by
each scored method (mean-prob, frequency, REAP, EASY-EP), by the greedy layer-by-layer selection (the EMO
paper's, one profile per K) and by `--draws` random draws, and score every slice against the full model in bits
per byte on the held-out documents of EVERY domain (the calibration domain and the others). The share of the
full model's score kept is `full bits per byte / slice bits per byte`, as `sweep` reports it.

Beside the scores, what the kept experts held of the full model's routing on the calibration domain's held-out
documents (one profile of those documents, averaged over layers): `mass`, the router probability they carry
(mean-prob summed over the kept routed experts), and `slots`, the share of the top-k choices that went to them.
At K <= top-k (every kept expert fires on every token, weights renormalised over the kept) these say whether the
experts the router favoured are the ones that help when always on. And per layer of the full model, on the same
documents: `routed_weight`, the routing weight its top-k routed experts carry per token (a slice's router is a
softmax over the kept experts alone, so at K <= top-k their weights sum to 1: the routed part is scaled up by
1 / routed_weight against the shared expert), and `shared_share`, the shared experts' share of the weighted
expert output norms (sum of weight x ||expert output||).

    python examples/selection_study.py --models quickstart/emo/final quickstart/standard/final \\
        --data quickstart/data --calib code --keep 4,8,16 --draws 8 --out selection-quickstart.json
    python examples/selection_study.py ... --rescale on    # every slice rescaled (extract --rescale on)

`--data` is a folder with tasks/DOMAIN.jsonl (the calibration example is drawn from it) and valid/DOMAIN.jsonl
(held-out documents), as `emo-slice demo-data` and examples/reproduce_emo.py write them. Ends with one JSON
line of figures (per model, K and domain: each method's share kept and the random draws' mean, sd, min, max).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from emo_slice.artifacts import atomic_write_text, check_output
from emo_slice.errors import EmoSliceError, UsageError
from emo_slice.eval.settings import EvalSettings
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import open_model
from emo_slice.io.tokenizer import load_tokenizer
from emo_slice.slicing.calibration import batch_groups, calibration_texts, make_rows, pad_batch
from emo_slice.slicing.profile import profile_model
from emo_slice.slicing.profile_settings import ProfileSettings
from emo_slice.slicing.rescale import MODES, rescale
from emo_slice.slicing.select import SCORED, parse_keep, plan_slice
from emo_slice.workflows.scoring import score_full, score_slice
from emo_slice.workflows.sweep import label_of, spread

METHODS = (*SCORED, "greedy")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="model folders (e.g. EMO and its standard twin)")
    ap.add_argument("--data", required=True, help="folder with tasks/DOMAIN.jsonl and valid/DOMAIN.jsonl")
    ap.add_argument("--calib", default="code", help="domain of the few-shot calibration example")
    ap.add_argument("--domains", default=None, help="held-out domains scored (comma-separated; default: all)")
    ap.add_argument("--keep", default="4,8,16", help="experts kept per layer (counts or shares, comma-separated)")
    ap.add_argument("--draws", type=int, default=8, help="random slices per K (seeds 0, 1, ...)")
    ap.add_argument("--methods", default=",".join(METHODS), help="methods compared with random")
    ap.add_argument("--shots", type=int, default=5, help="demonstrations in the calibration example")
    ap.add_argument("--limit", type=int, default=None, help="score only N documents per domain (smoke runs)")
    ap.add_argument(
        "--rescale",
        default="off",
        choices=MODES,
        help="routing-mass rescaling of every slice (emo-slice extract --rescale; off: plain slices)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="write every row here (JSON)")
    return ap.parse_args(argv)


def kept_routing(diag: dict, kept: list[list[int]]) -> dict:
    """mass and slots held by the kept routed experts, averaged over the MoE layers (see the module docstring)."""
    mass, slots = [], []
    for layer, ids in zip(diag["layers"], kept):
        if not ids:
            continue
        s = layer["scores"]
        n_routed = len(s["mean-prob"])
        routed = [e for e in ids if e < n_routed]
        mass.append(sum(s["mean-prob"][e] for e in routed))
        total = sum(s["frequency"]) or 1.0
        slots.append(sum(s["frequency"][e] for e in routed) / total)
    return {"mass": sum(mass) / len(mass), "slots": sum(slots) / len(slots)}


def routing_weights(ckpt: Checkpoint, docs: str, device: str) -> list[dict]:
    """Per MoE layer of the full model on the documents: routed_weight and shared_share (module docstring)."""
    import torch

    cfg = ckpt.config
    rows = make_rows(load_tokenizer(ckpt.path), calibration_texts(docs)[0], cfg.max_position_embeddings)
    special = {i for i in (cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id) if i is not None}
    batches = [pad_batch(rows, g, cfg.pad_token_id or 0, special) for g in batch_groups(rows)]
    sums = {}

    def trace(b: int, t) -> None:
        valid_N = batches[b][1].reshape(-1)
        k = t.routing.n_routed_k
        w_NK = t.routing.weights_NK[valid_N].double()
        contrib_NK = w_NK * t.expert_norm_NK[valid_N].double()
        s = sums.setdefault(t.layer, [0.0, 0.0, 0.0, 0])
        s[0] += float(w_NK[:, :k].sum())
        s[1] += float(contrib_NK[:, k:].sum())
        s[2] += float(contrib_NK.sum())
        s[3] += int(valid_N.sum())

    lw = open_model(ckpt, torch.float32, device)
    with torch.no_grad():
        lw.hidden_states([ids for ids, _ in batches], trace=trace, expert_norms=True)
    return [
        {"layer": l, "routed_weight": a / n, "shared_share": sh / tot if tot else 0.0}
        for l, (a, sh, tot, n) in sorted(sums.items())
    ]


def study_model(model: str, args, domains: list[str], data: Path) -> dict:
    ckpt = Checkpoint(model)
    cfg = ckpt.config
    ks = sorted({parse_keep(k, cfg.fewest_experts(), cfg.num_shared_experts) for k in args.keep.split(",")})
    lm = [str(data / "valid" / f"{d}.jsonl") for d in domains]
    settings = EvalSettings(limit=args.limit, device=args.device)
    calib = ProfileSettings(
        examples=str(data / "tasks" / f"{args.calib}.jsonl"), shots=args.shots, seed=0, device=args.device
    )
    t0 = time.perf_counter()
    prof = profile_model(ckpt, calib)
    held_out = ProfileSettings(examples=str(data / "valid" / f"{args.calib}.jsonl"), device=args.device)
    diag = profile_model(ckpt, held_out)
    weights = routing_weights(ckpt, held_out.examples, args.device)
    full, _, scored = score_full(ckpt, [], lm, [prof["inputs"]], settings)
    methods = [m for m in args.methods.split(",") if m]
    rows = []
    with tempfile.TemporaryDirectory(prefix="selection-study-") as tmp:
        for k in ks:
            arms = [(m, None) for m in methods] + [("random", s) for s in range(args.draws)]
            for method, seed in arms:
                if method == "greedy":
                    g = profile_model(ckpt, replace(calib, greedy=True, keep=str(k)))
                    plan = rescale(plan_slice(ckpt, k, profile=g, method="mean-prob"), cfg, [g], args.rescale)
                else:
                    plan = plan_slice(ckpt, k, profile=prof, method=method, seed=seed or 0)
                    rescale(plan, cfg, [prof], args.rescale)
                row = score_slice(ckpt, plan, Path(tmp) / f"{method}-{k}-{seed}", full, (scored, lm, settings))
                kept = {f"lm:{d}": row["kept"][f"lm:{d}"]["bits_per_byte"] for d in domains}
                routing = kept_routing(diag, row["kept_experts"])
                rows.append({"keep": k, "method": method, "seed": seed, "kept": kept, **routing})
                print(f"{label_of(model)} K={k} {method}{'' if seed is None else seed}: {kept}", file=sys.stderr)
    return {
        "model": str(ckpt.path),
        "label": label_of(model),
        "num_experts": cfg.num_experts,
        "top_k": cfg.num_experts_per_tok,
        "num_shared_experts": cfg.num_shared_experts,
        "full_bits_per_byte": {n: r["bits_per_byte"] for n, r in full["results"].items()},
        "routing": weights,
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def summary(result: dict, domains: list[str]) -> dict:
    """Per K and domain: each method's share kept, and the random draws' spread."""
    out = {}
    for k in sorted({r["keep"] for r in result["rows"]}):
        at_k = [r for r in result["rows"] if r["keep"] == k]
        for d in domains:
            key = f"lm:{d}"
            cell = {r["method"]: round(r["kept"][key], 4) for r in at_k if r["method"] != "random"}
            st = spread([r["kept"][key] for r in at_k if r["method"] == "random"])
            cell["random"] = {n: (round(v, 4) if isinstance(v, float) else v) for n, v in st.items()}
            out[f"K={k} {d}"] = cell
        routing = {}
        for r in at_k:
            m = r["method"]
            routing.setdefault(m, []).append((r["mass"], r["slots"]))
        out[f"K={k} routing held"] = {
            m: {"mass": round(sum(a for a, _ in v) / len(v), 4), "slots": round(sum(b for _, b in v) / len(v), 4)}
            for m, v in routing.items()
        }
    return out


def table(result: dict, domains: list[str], methods: list[str]) -> str:
    head = "| K | held-out | " + " | ".join(methods) + " | random mean ± sd [min, max] |"
    full = ", ".join(f"{n} {v:.3f}" for n, v in result["full_bits_per_byte"].items())
    routing = ", ".join(f"{r['routed_weight']:.2f}/{r['shared_share']:.2f}" for r in result["routing"])
    lines = [
        f"### {result['label']}: full model {full} bits per byte; per layer routed weight / shared share {routing}",
        head,
    ]
    lines.append("|" + "---|" * (len(methods) + 3))
    for k in sorted({r["keep"] for r in result["rows"]}):
        at_k = [r for r in result["rows"] if r["keep"] == k]
        for d in domains:
            key = f"lm:{d}"
            by = {r["method"]: r["kept"][key] for r in at_k if r["method"] != "random"}
            st = spread([r["kept"][key] for r in at_k if r["method"] == "random"])
            sd = f" ± {st['sd']:.1%}" if st["sd"] is not None else ""
            rand = f"{st['mean']:.1%}{sd} [{st['min']:.1%}, {st['max']:.1%}]" if st["n"] else "-"
            cells = [f"{by[m]:.1%}" if m in by else "-" for m in methods]
            lines.append(f"| {k} | {d} | " + " | ".join(cells) + f" | {rand} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    data = Path(args.data)
    try:
        valid = sorted(p.stem for p in (data / "valid").glob("*.jsonl"))
        if not valid or not (data / "tasks" / f"{args.calib}.jsonl").is_file():
            raise UsageError(f"--data {data}: needs valid/DOMAIN.jsonl files and tasks/{args.calib}.jsonl")
        domains = args.domains.split(",") if args.domains else valid
        methods = [m for m in args.methods.split(",") if m]
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise UsageError(f"--methods {','.join(bad)}: choose from {','.join(METHODS)}")
        if args.draws < 2:
            raise UsageError(f"--draws {args.draws}: at least 2 draws are needed for a spread")
        if args.out:  # never onto or into an input, never over an existing file: checked before any work
            if os.path.lexists(args.out):
                raise UsageError(f"--out {args.out} already exists; the study never replaces a file, choose another")
            check_output(args.out, inputs=[*args.models, data])
        results = [study_model(m, args, domains, data) for m in args.models]
    except EmoSliceError as e:  # a bad model folder, data file or option: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(table(r, domains, methods) + "\n")
    record = {"calib": args.calib, "shots": args.shots, "draws": args.draws, "rescale": args.rescale}
    record |= {"domains": domains, "models": results}
    if args.out:
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    figures = {r["label"]: summary(r, domains) | {"routing": r["routing"]} for r in results}
    print(json.dumps({"calib": args.calib, "draws": args.draws, "rescale": args.rescale, "figures": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
