"""Metrics: accuracies under each normalisation, bits per byte, and model-vs-model comparison.

lm-evaluation-harness's names carry its numbers (lm_eval/api/task.py `process_results`, multiple_choice;
lm_eval/api/metrics.py `mean`, `mean_stderr`):
- `acc,none`: argmax of the summed log-likelihoods (first index on ties, as numpy.argmax);
- `acc_norm,none`: argmax of log-likelihood / len(choice) in characters, the choice as the task gives it
  (without target delimiter or moved whitespace); for items with per-choice contexts (Winogrande) lm-eval
  divides by the length of each choice's context (its doc_to_choice), and so does this; a task of such
  items (Winogrande) does not report it (`task_metrics`), as lm-eval's winogrande reports acc only;
- `acc_stderr,none`, `acc_norm_stderr,none`: sample standard deviation / sqrt(n) ("N/A" for one item).

OLMES's names keep their own definitions: acc_raw (summed log-likelihood; = acc,none), acc_per_token
(/ continuation tokens), acc_per_char and acc_per_byte (/ characters, UTF-8 bytes of the SCORED
continuation: the whitespace moved from the context's end + target delimiter + choice), acc_uncond
(minus the log-likelihood after a bare "Answer:"), bits_per_byte_gold (lower is better).
"""

from __future__ import annotations

import math

from emo_slice.data.sources import MCItem
from emo_slice.eval.encoding import Encoded

HIGHER_IS_BETTER = {
    "acc,none": True,
    "acc_norm,none": True,
    "acc_raw": True,
    "acc_per_token": True,
    "acc_per_char": True,
    "acc_per_byte": True,
    "acc_uncond": True,
    "bits_per_byte_gold": False,
    "perplexity": False,
    "bits_per_byte": False,
}
LM_EVAL = {"acc,none": "acc", "acc_norm,none": "acc_norm"}  # results key -> lm-eval metric name


def argmax(xs: list[float]) -> int:
    """numpy.argmax: the first NaN if there is one, else the first largest."""
    nan = next((i for i, x in enumerate(xs) if x != x), None)
    return nan if nan is not None else max(range(len(xs)), key=lambda i: (xs[i], -i))


def np_div(x: float, n: float) -> float:
    """x / n with numpy's float semantics (a zero length gives -inf / inf / nan, not an exception)."""
    if n:
        return x / n
    return math.copysign(math.inf, x) if x else math.nan


def mean(arr: list[float]) -> float:
    return sum(arr) / len(arr)


def mean_stderr(arr: list[float]) -> float | str:
    """lm-eval's mean_stderr (sample std / sqrt(n)); "N/A" for a single item, as lm-eval writes it."""
    if len(arr) < 2:
        return "N/A"
    mu = mean(arr)
    return math.sqrt(sum([(x - mu) ** 2 for x in arr]) / (len(arr) - 1)) / math.sqrt(len(arr))


def _scores(enc: Encoded, ll: list[float], nt: list[int], unc: list[float] | None) -> dict[str, list[float]]:
    scores = {
        "acc,none": ll,
        "acc_norm,none": [np_div(x, float(n)) for x, n in zip(ll, enc.norms)],
        "acc_raw": ll,
        "acc_per_token": [x / n for x, n in zip(ll, nt)],
        "acc_per_char": [x / max(1, len(t)) for x, t in zip(ll, enc.texts)],
        "acc_per_byte": [x / max(1, len(t.encode("utf-8"))) for x, t in zip(ll, enc.texts)],
    }
    if unc is not None:
        scores["acc_uncond"] = [x - u for x, u in zip(ll, unc)]
    return scores


def mc_metrics(
    items: list[MCItem],
    encs: list[Encoded],
    lls: list[list[float]],
    ntoks: list[list[int]],
    uncond: list[list[float]] | None,
) -> tuple[dict, list[dict]]:
    """Accuracies under each normalisation, gold bits per byte, and per-item predictions."""
    outcomes: dict[str, list[float]] = {}
    gold_nll, gold_bytes = 0.0, 0
    preds = []
    for i, (it, enc, ll, nt) in enumerate(zip(items, encs, lls, ntoks)):
        scores = _scores(enc, ll, nt, uncond[i] if uncond else None)
        p = {m: argmax(s) for m, s in scores.items()}
        for m in scores:
            outcomes.setdefault(m, []).append(1.0 if p[m] == it.label else 0.0)
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
    metrics: dict = {}
    for m, xs in outcomes.items():
        if m in LM_EVAL:  # lm-eval's aggregation: mean and mean_stderr of the 0/1 outcomes
            metrics[m] = mean(xs)
            metrics[f"{LM_EVAL[m]}_stderr,none"] = mean_stderr(xs)
        else:  # standard error of a mean of 0/1 outcomes (0.0 for one item)
            metrics[m] = sum(xs) / n
            metrics[m + "_stderr"] = math.sqrt(metrics[m] * (1 - metrics[m]) / (n - 1)) if n > 1 else 0.0
    metrics["bits_per_byte_gold"] = gold_nll / math.log(2) / gold_bytes if gold_bytes else float("nan")
    return metrics, preds


def task_metrics(metrics: dict, preds: list[dict], items: list[MCItem]) -> tuple[dict, list[dict]]:
    """The metrics (and per-item predictions) a task reports: all of mc_metrics', but acc_norm (and its stderr)
    for a task with per-choice contexts (`MCItem.contexts`: Winogrande)."""
    if not any(it.contexts for it in items):
        return metrics, preds
    # lm-eval's winogrande reports acc only: its acc_norm would divide by len(context), demonstrations included
    drop = {"acc_norm,none", "acc_norm_stderr,none"}
    kept = {k: v for k, v in metrics.items() if k not in drop}
    return kept, [p | {"pred": {k: v for k, v in p["pred"].items() if k not in drop}} for p in preds]


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
