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
import time
from dataclasses import dataclass
from typing import Callable

import torch

from emo_slice.data.sources import MCItem
from emo_slice.errors import DataError, UsageError
from emo_slice.model.modeling import rope_cos_sin

UNCOND_PROMPT = "Answer:"
HIGHER_IS_BETTER = {"acc_raw": True, "acc_per_token": True, "acc_per_char": True, "acc_per_byte": True,
                    "acc_uncond": True, "bits_per_byte_gold": False, "perplexity": False, "bits_per_byte": False}


# ---------------------------------------------------------------------------------------------
# Running a model: whole in memory, or one layer at a time
# ---------------------------------------------------------------------------------------------

class Runner:
    """A checkpoint ready to score rows: `hidden(batches)` and `logprobs(x_PD, targets_P)`.

    layerwise=True holds one decoder layer's weights at a time (emo_slice.loading.LayerwiseModel):
    every batch goes through layer l before layer l+1 is loaded. Results equal the whole model's.
    """

    def __init__(self, path: str, dtype: str | None = None, layerwise: bool = False):
        from emo_slice.io.checkpoint import Checkpoint
        from emo_slice.io.loading import LayerwiseModel, load_model
        from emo_slice.io.tokenizer import load_tokenizer

        self.ckpt = Checkpoint(path)
        self.path = str(path)
        self.config = self.ckpt.config
        self.tokenizer = load_tokenizer(path)
        self.layerwise = layerwise
        if layerwise:
            self.lw = LayerwiseModel(self.ckpt, dtype)
            self.dtype = self.lw.dtype
            self.model = None
        else:
            self.model = load_model(self.ckpt, dtype)
            self.dtype = next(self.model.parameters()).dtype
        self.seconds = 0.0  # time spent scoring
        self.tokens = 0  # tokens run through the model (padding excluded)

    def describe(self) -> dict:
        params = sum(math.prod(i.shape) for i in self.ckpt.infos.values())
        return {"path": self.path, "fingerprint": self.ckpt.fingerprint(), "parameters": params,
                "weight_bytes": self.ckpt.total_bytes, "dtype": str(self.dtype).replace("torch.", ""),
                "layerwise": self.layerwise, "tokenizer": self.tokenizer.describe(),
                "experts_per_layer": [self.config.experts_in_layer(l) for l in range(self.config.num_hidden_layers)],
                "tokens": self.tokens, "seconds": round(self.seconds, 4),
                "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else None}

    def _cos_sin(self, pos_BT: torch.Tensor | None, T: int):
        cos, sin = rope_cos_sin(T if pos_BT is None else int(pos_BT.max()) + 1, self.config.head_dim,
                                self.config.rope_theta, self.dtype)
        if pos_BT is None:
            return cos, sin
        return cos[pos_BT][:, None], sin[pos_BT][:, None]  # [B, 1, T, Dh]: broadcast over heads

    @torch.no_grad()
    def run(self, batches: list["Batch"], progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Log-probabilities of each batch's targets (one tensor [P] per batch)."""
        t0 = time.perf_counter()
        out: list[torch.Tensor] = []
        if not self.layerwise:
            for b in batches:
                x = self.model.embed(b.ids_BT)
                cos, sin = self._cos_sin(b.pos_BT, b.ids_BT.shape[1])
                for layer in self.model.model.layers:
                    x, _ = layer(x, cos, sin, b.mask_BTT)
                out.append(self._logprobs(self.model.head(x[b.pred_b, b.pred_t]), b.targets_P))
                if progress:
                    progress(b.n_units)
        else:
            xs = [self.lw.embed(b.ids_BT) for b in batches]
            cs = [self._cos_sin(b.pos_BT, b.ids_BT.shape[1]) for b in batches]
            for l in range(self.config.num_hidden_layers):
                layer = self.lw.layer(l)
                xs = [layer(x, c, s, b.mask_BTT)[0] for x, (c, s), b in zip(xs, cs, batches)]
                del layer
            for x, b in zip(xs, batches):
                out.append(self._logprobs(self.lw.head(x[b.pred_b, b.pred_t]), b.targets_P))
                if progress:
                    progress(b.n_units)
        self.seconds += time.perf_counter() - t0
        self.tokens += sum(b.n_tokens for b in batches)
        return out

    @staticmethod
    def _logprobs(logits_PV: torch.Tensor, targets_P: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits_PV.float(), -1).gather(-1, targets_P[:, None])[:, 0]


# ---------------------------------------------------------------------------------------------
# Rows and batches
# ---------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One sequence: tokens, their positions, their branch (0 = shared prefix, c+1 = choice c),
    and the scored (predictor index, target token) pairs, grouped in spans (one per choice)."""

    ids: list[int]
    pos: list[int]
    branch: list[int]
    pred: list[int]
    target: list[int]
    spans: list[tuple[int, int]]  # [start, end) into pred/target, one per scored continuation
    unit: int = 1  # progress units (items) this row stands for


@dataclass
class Batch:
    ids_BT: torch.Tensor
    pos_BT: torch.Tensor | None
    mask_BTT: torch.Tensor | None
    pred_b: torch.Tensor
    pred_t: torch.Tensor
    targets_P: torch.Tensor
    rows: list[int]  # indices of the rows it holds
    n_tokens: int
    n_units: int


def make_batches(rows: list[Row], batch_size: int, pad_id: int = 0, max_batch_tokens: int | None = None) -> list[Batch]:
    """Rows sorted by length (less padding), at most batch_size rows (and max_batch_tokens padded
    tokens) per batch, right padded. Tree rows get a [B, T, T] mask and per-row positions."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].ids))
    groups, cur = [], []
    for i in order:
        T = len(rows[cur[0]].ids) if cur else len(rows[i].ids)
        if cur and (len(cur) >= batch_size or (max_batch_tokens and (len(cur) + 1) * T > max_batch_tokens)):
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    batches = []
    for g in groups:
        T = max(len(rows[i].ids) for i in g)
        B = len(g)
        ids = torch.full((B, T), pad_id, dtype=torch.long)
        pos = torch.zeros(B, T, dtype=torch.long)
        br = torch.full((B, T), -1, dtype=torch.long)
        pb, pt, tg = [], [], []
        tree = any(max(rows[i].branch) > 0 for i in g)
        for b, i in enumerate(g):
            r = rows[i]
            n = len(r.ids)
            ids[b, :n] = torch.tensor(r.ids)
            pos[b, :n] = torch.tensor(r.pos)
            pos[b, n:] = torch.arange(T - n) + (max(r.pos) + 1)
            br[b, :n] = torch.tensor(r.branch)
            pb += [b] * len(r.pred)
            pt += r.pred
            tg += r.target
        mask = None
        if tree:  # causal, and a choice's tokens see the prefix (branch 0) and their own branch only
            causal_TT = torch.ones(T, T, dtype=torch.bool).tril()
            same = (br[:, None, :] == 0) | (br[:, None, :] == br[:, :, None])
            mask = causal_TT[None] & same & (br[:, None, :] >= 0)
            mask |= torch.eye(T, dtype=torch.bool)[None]  # padding attends to itself (no empty rows)
        batches.append(Batch(ids, pos if tree else None, mask, torch.tensor(pb, dtype=torch.long),
                             torch.tensor(pt, dtype=torch.long), torch.tensor(tg, dtype=torch.long), g,
                             sum(len(rows[i].ids) for i in g), sum(rows[i].unit for i in g)))
    return batches


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

def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-evaluation-harness: trailing whitespace of the context belongs to the continuation."""
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


@dataclass
class Encoded:
    """An item's context and choices as token ids (context already cut to fit), plus the scored texts."""

    ctx: list[int]
    conts: list[list[int]]
    texts: list[str]  # scored continuation texts (choice + moved whitespace)
    truncated: bool


def encode_item(tok, item: MCItem, max_length: int, prefix: str = "", where: str = "") -> Encoded:
    ctx_text = prefix + item.context
    pairs = [split_pair(ctx_text, c) for c in item.choices]
    ctx = tok.encode(pairs[0][0])
    if not ctx:  # nothing to condition on: start from EOS, as lm-eval does
        ctx = [tok.eos_token_id if tok.eos_token_id is not None else 0]
    conts = [tok.encode(p[1]) for p in pairs]
    for c, ids in enumerate(conts):
        if not ids:
            raise DataError(f"{where}: choice {c} is empty; every choice needs some text")
        if len(ids) >= max_length:
            raise DataError(f"{where}: choice {c} is {len(ids)} tokens, as long as the model's context "
                            f"({max_length}); raise --max-length or drop the item")
    room = max_length - max(len(c) for c in conts)
    truncated = len(ctx) > room
    return Encoded(ctx[-room:] if truncated else ctx, conts, [p[1] for p in pairs], truncated)


def tree_row(enc: Encoded) -> Row:
    """Context once, then every choice; each choice's positions restart after the context."""
    C = len(enc.ctx)
    ids, pos, branch = list(enc.ctx), list(range(C)), [0] * C
    pred, target, spans = [], [], []
    for c, cont in enumerate(enc.conts):
        start = len(ids)
        ids += cont
        pos += range(C, C + len(cont))
        branch += [c + 1] * len(cont)
        s = len(pred)
        pred += [C - 1] + list(range(start, start + len(cont) - 1))
        target += cont
        spans.append((s, len(pred)))
    return Row(ids, pos, branch, pred, target, spans)


def naive_rows(enc: Encoded) -> list[Row]:
    """One row per choice: context + choice (the naive way; the benchmark's baseline)."""
    rows = []
    C = len(enc.ctx)
    for cont in enc.conts:
        ids = enc.ctx + cont
        rows.append(Row(ids, list(range(len(ids))), [0] * len(ids), list(range(C - 1, len(ids) - 1)), list(cont),
                        [(0, len(cont))]))
    return rows


@dataclass
class MCResult:
    metrics: dict
    predictions: list[dict]
    truncated: int
    n_items: int


def argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))  # first best, as numpy


def mc_metrics(items: list[MCItem], encs: list[Encoded], lls: list[list[float]], ntoks: list[list[int]],
               uncond: list[list[float]] | None) -> tuple[dict, list[dict]]:
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
        rec = {"id": it.id, "label": it.label, "loglikelihoods": ll, "tokens": nt, "truncated": enc.truncated,
               "pred": p}
        if uncond:
            rec["loglikelihoods_uncond"] = uncond[i]
        preds.append(rec)
    n = len(items)
    metrics = {m: correct[m] / n for m in names}
    for m in names:  # standard error of a mean of 0/1 outcomes
        metrics[m + "_stderr"] = math.sqrt(metrics[m] * (1 - metrics[m]) / (n - 1)) if n > 1 else 0.0
    metrics["bits_per_byte_gold"] = gold_nll / math.log(2) / gold_bytes if gold_bytes else float("nan")
    return metrics, preds


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

def lm_rows(tok, docs: list[str], max_length: int, mode: str = "rows") -> tuple[list[Row], int]:
    """Rows for perplexity: each document prefixed with EOS; "rows" one document per row, "packed"
    all documents end to end. Streams longer than max_length are cut into disjoint windows (each
    window's first target is predicted from the previous window's last token). Returns (rows, windows cut)."""
    if mode not in ("rows", "packed"):
        raise UsageError(f"--lm-mode {mode!r} is unknown; choose rows or packed")
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    streams, scored = [], []
    for d in docs:
        ids = [eos] + tok.encode(d)
        flags = [False] + [True] * (len(ids) - 1)  # the EOS separator is input, never a target
        if mode == "rows" or not streams:
            streams.append(ids)
            scored.append(flags)
        else:
            streams[-1] += ids
            scored[-1] += flags
    rows, cut = [], 0
    for ids, flags in zip(streams, scored):
        windows = range(0, max(1, len(ids) - 1), max_length)
        cut += len(windows) - 1
        for s in windows:
            inp = ids[s:s + max_length]
            pred = [t for t in range(len(inp)) if s + t + 1 < len(ids) and flags[s + t + 1]]
            tgt = [ids[s + t + 1] for t in pred]
            if pred:
                rows.append(Row(inp, list(range(len(inp))), [0] * len(inp), pred, tgt, [(0, len(pred))]))
    return rows, cut


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
