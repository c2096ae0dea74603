"""Metrics: accuracies under each normalisation, bits per byte, and model-vs-model comparison."""

from __future__ import annotations

import math

from emo_slice.data.sources import MCItem
from emo_slice.eval.requests import Encoded

HIGHER_IS_BETTER = {
    "acc_raw": True,
    "acc_per_token": True,
    "acc_per_char": True,
    "acc_per_byte": True,
    "acc_uncond": True,
    "bits_per_byte_gold": False,
    "perplexity": False,
    "bits_per_byte": False,
}


def argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))  # first best, as numpy


def mc_metrics(
    items: list[MCItem],
    encs: list[Encoded],
    lls: list[list[float]],
    ntoks: list[list[int]],
    uncond: list[list[float]] | None,
) -> tuple[dict, list[dict]]:
    """Accuracies under each normalisation, gold bits per byte, and per-item predictions."""
    names = ["acc_raw", "acc_per_token", "acc_per_char", "acc_per_byte"] + (["acc_uncond"] if uncond else [])
    correct = {m: 0 for m in names}
    gold_nll, gold_bytes = 0.0, 0
    preds = []
    for i, (it, enc, ll, nt) in enumerate(zip(items, encs, lls, ntoks)):
        scores = {
            "acc_raw": ll,
            "acc_per_token": [x / n for x, n in zip(ll, nt)],
            "acc_per_char": [x / max(1, len(t)) for x, t in zip(ll, enc.texts)],
            "acc_per_byte": [x / max(1, len(t.encode("utf-8"))) for x, t in zip(ll, enc.texts)],
        }
        if uncond:
            scores["acc_uncond"] = [x - u for x, u in zip(ll, uncond[i])]
        p = {m: argmax(scores[m]) for m in names}
        for m in names:
            correct[m] += p[m] == it.label
        gold_nll += -ll[it.label]
        gold_bytes += len(enc.texts[it.label].encode("utf-8"))
        rec = {
            "id": it.id,
            "label": it.label,
            "loglikelihoods": ll,
            "tokens": nt,
            "truncated": enc.truncated,
            "pred": p,
        }
        if uncond:
            rec["loglikelihoods_uncond"] = uncond[i]
        preds.append(rec)
    n = len(items)
    metrics = {m: correct[m] / n for m in names}
    for m in names:  # standard error of a mean of 0/1 outcomes
        metrics[m + "_stderr"] = math.sqrt(metrics[m] * (1 - metrics[m]) / (n - 1)) if n > 1 else 0.0
    metrics["bits_per_byte_gold"] = gold_nll / math.log(2) / gold_bytes if gold_bytes else float("nan")
    return metrics, preds


def compare(model: dict, against: dict) -> dict:
    """metric -> {model, against, diff (model - against), kept}: kept = model / against for higher-is-better
    metrics, against / model for lower-is-better ones (bits, perplexity)."""
    out = {}
    for m, hib in HIGHER_IS_BETTER.items():
        if m in model and m in against:
            a, b = model[m], against[m]
            kept = (a / b if b else None) if hib else (b / a if a else None)
            out[m] = {"model": a, "against": b, "diff": a - b, "kept": kept}
    return out
