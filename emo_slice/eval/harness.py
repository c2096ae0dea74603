"""Scoring a model: multiple-choice ranking classification and language-modelling perplexity.

Multiple choice (shared/spec/evaluation.md): each choice is scored by the log-likelihood of its tokens
given the context. Context and continuation are tokenised separately, as lm-evaluation-harness does
(trailing whitespace of the context moves to the front of the continuation), so every choice sees the
very same context tokens. That lets one row hold an item's context ONCE followed by all its choices:
a tree attention mask lets each choice attend to the context and to itself only, and each choice's
positions restart right after the context. Routing is per token, so every scored log-probability is
the one a separate forward pass of context + choice gives (tests check it), for about
ctx + sum(choices) tokens instead of n_choices * (ctx + choice).

Metrics per task (higher is better unless said): acc_raw (summed log-likelihood), acc_per_token,
acc_per_char, acc_per_byte (log-likelihood divided by the scored continuation's tokens / characters /
UTF-8 bytes; the scored continuation is the choice plus any whitespace moved from the context's end),
acc_uncond (log-likelihood minus that of the choice after a bare "Answer:" prompt; on request),
bits_per_byte_gold (lower is better: sum over items of -log2 p(gold) / sum of the gold's bytes).

Language modelling: perplexity per token and bits per byte, each document prefixed with EOS; rows are
either one document per row ("rows") or documents packed end to end ("packed"); documents (or the
packed stream) longer than the context are cut into disjoint windows.

Legend (tensor suffixes): B rows in a batch, T row length, D hidden, V vocab, P scored positions,
Dh head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


from emo_slice.data.sources import MCItem
from emo_slice.errors import DataError
from emo_slice.eval.metrics import mc_metrics
from emo_slice.eval.requests import Row, encode_item, lm_rows, make_batches, tree_row
from emo_slice.eval.runner import Runner

UNCOND_PROMPT = "Answer:"


# ---------------------------------------------------------------------------------------------
# Running a model: whole in memory, or one layer at a time
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Rows and batches
# ---------------------------------------------------------------------------------------------


def score_rows(runner: Runner, rows: list[Row], batch_size: int = 16, progress=None,
               max_batch_tokens: int | None = 32768) -> list[list[list[float]]]:
    """For each row, for each span, the log-probabilities of its targets."""
    pad = runner.tokenizer.pad_token_id if runner.tokenizer.pad_token_id is not None else 0
    batches = make_batches(rows, batch_size, pad, max_batch_tokens)
    lps = runner.run(batches, progress)
    out: list[list[list[float]]] = [[] for _ in rows]
    for b, lp in zip(batches, lps):
        lp = lp.tolist()
        k = 0
        for i in b.rows:
            r = rows[i]
            n = len(r.pred)
            out[i] = [lp[k + s:k + e] for s, e in r.spans]
            k += n
    return out


# ---------------------------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------------------------


@dataclass
class MCResult:
    metrics: dict
    predictions: list[dict]
    truncated: int
    n_items: int


def evaluate_mc(runner: Runner, items: list[MCItem], *, prefix: str = "", max_length: int | None = None,
                batch_size: int = 16, uncond: bool = False, progress=None, task: str = "task") -> MCResult:
    """Score multiple-choice items by ranking classification. prefix: the few-shot prompt."""
    if not items:
        raise DataError(f"{task}: no items to score; the task is empty (or --limit/--shots left none)")
    L = max_length or runner.config.max_position_embeddings
    tok = runner.tokenizer
    encs = [encode_item(tok, it, L, prefix, f"{task} item {it.id}") for it in items]
    rows = [tree_row(e) for e in encs]
    if uncond:
        u_items = [MCItem(it.id, UNCOND_PROMPT, list(e.texts), it.label) for it, e in zip(items, encs)]
        for it in u_items:  # the same scored texts, after a bare "Answer:"
            ue = encode_item(tok, it, L, "", f"{task} item {it.id} (unconditional)")
            r = tree_row(ue)
            r.unit = 0
            rows.append(r)
    scored = score_rows(runner, rows, batch_size, progress)
    lls = [[sum(s) for s in scored[i]] for i in range(len(items))]
    ntoks = [[len(c) for c in e.conts] for e in encs]
    unc = [[sum(s) for s in scored[len(items) + i]] for i in range(len(items))] if uncond else None
    metrics, preds = mc_metrics(items, encs, lls, ntoks, unc)
    trunc = sum(e.truncated for e in encs)
    metrics.update({"n_items": len(items), "truncated": trunc})
    metrics["acc,none"] = metrics["acc_raw"]  # lm-evaluation-harness names
    metrics["acc_norm,none"] = metrics["acc_per_char"]
    return MCResult(metrics, preds, trunc, len(items))


# ---------------------------------------------------------------------------------------------
# Language modelling
# ---------------------------------------------------------------------------------------------


def evaluate_lm(runner: Runner, docs: list[str], *, mode: str = "rows", max_length: int | None = None,
                batch_size: int = 16, progress=None, task: str = "text") -> dict:
    """Perplexity per token and bits per byte of the documents."""
    if not docs:
        raise DataError(f"{task}: no documents to score")
    L = max_length or runner.config.max_position_embeddings
    rows, cut = lm_rows(runner.tokenizer, docs, L, mode)
    scored = score_rows(runner, rows, batch_size, progress)
    nll = -sum(sum(s[0]) for s in scored)
    n_tok = sum(len(r.target) for r in rows)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return {"perplexity": math.exp(nll / n_tok), "bits_per_byte": nll / math.log(2) / n_bytes,
            "nll_per_token": nll / n_tok, "tokens": n_tok, "bytes": n_bytes, "documents": len(docs),
            "windows_cut": cut, "mode": mode}


