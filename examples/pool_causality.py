"""How much of EMO's pooled score comes from seeing the future: the document pool chosen from the whole scored
window (as `eval --pool` does) against one chosen from the window's first half only (causal, as
`generate --pool` does), on the same tokens.

`eval --pool P` routes each window inside the top-P experts of the WHOLE window's router probability, so a
token's routing depends on tokens after it: pooled bits per byte can be optimistic. This scores the SECOND
half of every held-out window (rows exactly as `eval` builds them, `eval.requests.lm_rows`) four ways:

- standard MoE, no pool (the baseline of the full-model gap);
- EMO, no pool;
- EMO, pool from the whole window (`pool_size=P`: what `eval --pool P` reports);
- EMO, pool from the first half only (`generation.prompt_pools` + `restricted_routing`: no future token
  influences any routing), the honest pooled number.

All four share the inputs and targets, so ratios of nats per token are ratios of bits per byte. Ends with
one JSON line.

    python examples/pool_causality.py --emo runs/rep800-bpe/emo/final --standard runs/rep800-bpe/standard/final \\
        --valid runs/rep800-bpe/data/valid --pools 8,16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from emo_slice.data.sources import read_texts
from emo_slice.errors import DataError, EmoSliceError, UsageError
from emo_slice.eval.requests import lm_rows
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import load_model
from emo_slice.io.tokenizer import load_tokenizer
from emo_slice.model.generation import prompt_pools, restricted_routing


def second_half_nll(model, inp: list[int], pred: list[int], tgt: list[int], pool: int | None, causal: bool) -> float:
    """Summed NLL (nats) of the targets predicted at positions >= len(inp) // 2."""
    ids_BT = torch.tensor([inp])
    half = len(inp) // 2
    if pool is not None and causal:
        with restricted_routing(model, prompt_pools(model, [inp[:half]], pool)):
            logits = model(ids_BT)
    else:
        logits = model(ids_BT, pool_size=pool)
    logp_TV = torch.log_softmax(logits[0].float(), dim=-1)
    keep = [(p, t) for p, t in zip(pred, tgt) if p >= half]
    pos = torch.tensor([p for p, _ in keep])
    return -logp_TV[pos, torch.tensor([t for _, t in keep])].sum().item()


def score(model, rows, pool: int | None = None, causal: bool = False) -> float:
    """Nats per scored token over all rows."""
    with torch.no_grad():
        total = sum(second_half_nll(model, r.ids, r.pred, r.target, pool, causal) for r in rows)
    return total / sum(sum(p >= len(r.ids) // 2 for p in r.pred) for r in rows)


def rows_for(ckpt: Checkpoint, valid: Path, min_tokens: int, limit: int | None = None):
    """eval's LM rows for the held-out documents (the first `limit` of each file, or all), one row per window of
    the model's context, keeping rows of at least min_tokens inputs (a half of a few tokens says little)."""
    files = sorted(valid.glob("*.jsonl")) if valid.is_dir() else []
    if not files:
        raise DataError(f"--valid {valid}: no *.jsonl files there; give the folder of held-out documents")
    docs = [d for f in files for d in read_texts(f, flag="--valid")[:limit]]
    rows, _ = lm_rows(load_tokenizer(ckpt.path), docs, ckpt.config.max_position_embeddings)
    rows = [r for r in rows if len(r.ids) >= min_tokens]
    if not rows:
        raise DataError(f"--valid {valid}: no window of at least {min_tokens} tokens; lower --min-tokens")
    return rows


def measure(emo_path: Path, std_path: Path, valid: Path, pools: list[int], min_tokens: int = 64, limit=None) -> dict:
    """Nats per token on the windows' second halves: the standard MoE and EMO without a pool, EMO with each pool
    from the whole window and from the first half, and every EMO figure's gap to the standard MoE."""
    emo_ckpt, std_ckpt = Checkpoint(emo_path), Checkpoint(std_path)  # validated: config, headers, tensors
    rows = rows_for(emo_ckpt, valid, min_tokens, limit)
    if rows != rows_for(std_ckpt, valid, min_tokens, limit):
        raise UsageError("the two models tokenize the documents differently; give models of one tokenizer")
    emo, std = load_model(emo_ckpt, dtype="float32"), load_model(std_ckpt, dtype="float32")
    base = score(std, rows)
    out = {"rows": len(rows), "standard_no_pool": base, "emo_no_pool": score(emo, rows), "pools": {}}
    for P in pools:
        out["pools"][P] = {"window_pool": score(emo, rows, P), "first_half_pool": score(emo, rows, P, causal=True)}
    out["gap_vs_standard"] = {
        "no_pool": out["emo_no_pool"] / base - 1,
        **{f"{k}@{P}": v / base - 1 for P, d in out["pools"].items() for k, v in d.items()},
    }
    return out


def rounded(v):
    """v with every float rounded to 5 places, nested dicts included."""
    if isinstance(v, dict):
        return {k: rounded(x) for k, x in v.items()}
    return round(v, 5) if isinstance(v, float) else v


def parse_pools(text: str) -> list[int]:
    """'8,16' -> [8, 16]; anything but positive integers is refused."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words or not all(w.isdigit() and int(w) > 0 for w in words):
        raise UsageError(f"--pools {text!r}: give pool sizes as positive integers, e.g. 8,16")
    return [int(w) for w in words]


def main() -> None:
    ap = argparse.ArgumentParser(
        description="EMO's pooled score with the pool from the whole window vs its first half."
    )
    ap.add_argument("--emo", type=Path, required=True, help="the EMO model folder")
    ap.add_argument("--standard", type=Path, required=True, help="the standard MoE folder (same tokenizer)")
    ap.add_argument("--valid", type=Path, required=True, help="folder of held-out *.jsonl documents ('text')")
    ap.add_argument("--pools", default="8,16", help="pool sizes, comma-separated")
    ap.add_argument("--min-tokens", type=int, default=64, help="skip windows shorter than this")
    ap.add_argument("--limit", type=int, default=None, help="only the first N documents of each file")
    ap.add_argument("--device", default="cpu", help="cpu only: rows run one at a time, float32")
    args = ap.parse_args()
    try:
        if args.device != "cpu":
            raise UsageError("this measurement runs on the CPU: --device cpu")
        pools = parse_pools(args.pools)
        t0 = time.perf_counter()
        out = measure(args.emo, args.standard, args.valid, pools, args.min_tokens, args.limit)
    except EmoSliceError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    gap = out["gap_vs_standard"]
    for P, d in out["pools"].items():
        print(
            f"pool {P}: EMO from the whole window {d['window_pool']:.4f} ({gap[f'window_pool@{P}']:+.2%} vs "
            f"standard), from the first half {d['first_half_pool']:.4f} ({gap[f'first_half_pool@{P}']:+.2%})"
        )
    print(
        f"no pool: EMO {out['emo_no_pool']:.4f} ({gap['no_pool']:+.2%}), standard {out['standard_no_pool']:.4f} "
        f"nats/token on the second halves of {out['rows']} windows"
    )
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(rounded(out)))


if __name__ == "__main__":
    main()
