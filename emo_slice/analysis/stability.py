"""Calibration stability: how the kept experts change with the number of calibration examples (EMO's
`analyze_nprune_keep_sets`).

Each example (a document, or a multiple-choice item with its gold answer) runs through the model once; its
router statistics are kept per example: per layer, the sum over its scored tokens of the routed
probabilities (mean-prob) and of the top-k indicators (frequency), and its token count. Any set of
examples then scores exactly as `emo-slice profile` on those examples would: sums over the set divided by
its tokens. For each seed, the examples are put in a seeded order (torch.randperm, as EMO's pruning
draws its calibration subset) and the first N of that order choose the kept set, for every N asked
(nested subsets). The reference is the largest N with seed 0.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from emo_slice.data.sources import check_tokenizer_fits
from emo_slice.errors import UsageError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import DEVICE, LayerwiseModel, choose_placement, default_dtype
from emo_slice.io.tokenizer import load_tokenizer
from emo_slice.model.devices import resolve_device
from emo_slice.slicing.calibration import batch_groups, chunk_groups, make_rows, pad_batch
from emo_slice.slicing.select import choose_experts

METHODS = ("mean-prob", "frequency")


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """|A ∩ B| / |A ∪ B| (1.0 for two empty sets)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def parse_sizes(text: str) -> list[int]:
    """'1,5,10,100' -> [1, 5, 10, 100] (sorted, distinct, each at least 1)."""
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--calib-n {text!r}: give example counts separated by commas, e.g. 1,5,10,100") from None
    if not sizes or sizes[0] < 1:
        raise UsageError(f"--calib-n {text!r}: every count must be at least 1")
    return sizes


def orders(n: int, seeds: int) -> list[list[int]]:
    """The examples' order for each seed (torch.randperm with a generator seeded 0, 1, ...)."""
    return [torch.randperm(n, generator=torch.Generator().manual_seed(s)).tolist() for s in range(seeds)]


@dataclass
class ExampleStats:
    """Per example and layer: sums of routed probabilities and top-k indicators, and scored tokens."""

    prob_XLR: np.ndarray  # float64 [examples, L, R]
    count_XLR: np.ndarray  # float64 [examples, L, R]
    tokens_X: np.ndarray  # int64 [examples]

    def scores(self, subset: Sequence[int], method: str) -> np.ndarray:
        """[L, R] scores of the examples in `subset`, as profile computes them."""
        idx = np.asarray(subset)
        sums = (self.prob_XLR if method == "mean-prob" else self.count_XLR)[idx].sum(0)
        return sums / max(int(self.tokens_X[idx].sum()), 1)


def _tokenizer(ckpt):
    """The model's tokenizer, the padding id, and the ids never scored (as profile: eos, pad, bos)."""
    cfg, tok = ckpt.config, load_tokenizer(ckpt.path)
    check_tokenizer_fits(tok, cfg.vocab_size, str(ckpt.path))
    ids = (cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    return tok, cfg.pad_token_id if cfg.pad_token_id is not None else 0, {i for i in ids if i is not None}


def collect(model, texts: list[str], settings, progress: Callable[[int, int], None] | None = None) -> ExampleStats:
    """Run every example through the model once (chunks of rows, the one forward path); return its sums.
    settings: a ProfileSettings (device, dtype, max_length, batching, memory bound)."""
    dev = resolve_device(settings.device)
    dtype = default_dtype(settings.dtype, dev)
    ckpt = Checkpoint(model)
    cfg = ckpt.config
    tok, pad, special = _tokenizer(ckpt)
    max_len = settings.max_length or cfg.max_position_embeddings
    rows, owner = [], []
    for x, text in enumerate(texts):
        r = make_rows(tok, [text], max_len)
        rows += r
        owner += [x] * len(r)
    L, n_shared = cfg.num_hidden_layers, cfg.num_shared_experts
    R = max(cfg.experts_in_layer(l) for l in range(L)) - n_shared
    stats = ExampleStats(np.zeros((len(texts), L, R)), np.zeros((len(texts), L, R)), np.zeros(len(texts), np.int64))
    chunks = chunk_groups(rows, batch_groups(rows, settings.max_batch_tokens), settings.max_tokens_in_memory)
    place = choose_placement(ckpt, dtype, dev, settings.layerwise)
    lw = LayerwiseModel(ckpt, dtype, dev, resident=place["placement"] == DEVICE)
    for c, chunk in enumerate(chunks):
        batches = [pad_batch(rows, g, pad, special) for g in chunk]
        owners = [torch.tensor(np.repeat([owner[i] for i in g], ids.shape[1])) for g, (ids, _) in zip(chunk, batches)]
        for (_, valid), o in zip(batches, owners):
            np.add.at(stats.tokens_X, o[valid.reshape(-1)].numpy(), 1)

        def trace(b: int, t, batches=batches, owners=owners) -> None:
            r = t.routing
            valid = batches[b][1].reshape(-1).to(r.probs_NR.device)
            who = owners[b][valid.cpu()].numpy()
            R_l = r.probs_NR.shape[1]
            np.add.at(stats.prob_XLR[:, t.layer, :R_l], who, r.probs_NR[valid].double().cpu().numpy())
            chosen = torch.zeros_like(r.probs_NR[valid], dtype=torch.float64)
            chosen.scatter_(1, r.experts_NK[valid, : r.n_routed_k], 1.0)
            np.add.at(stats.count_XLR[:, t.layer, :R_l], who, chosen.cpu().numpy())

        def after_layer(l: int, layer, c=c) -> None:
            if progress is not None:
                progress(c * L + l + 1, len(chunks) * L)

        lw.hidden_states([ids for ids, _ in batches], trace=trace, after_layer=after_layer)
    return stats


def kept_sets(stats: ExampleStats, subset: Sequence[int], keep_routed: int, method: str) -> list[list[int]]:
    """Per layer, the routed experts kept: the keep_routed best by `method` (profile's rank, ascending ids)."""
    scores = stats.scores(subset, method)
    return [
        choose_experts(scores[l].tolist(), scores.shape[1], 0, keep_routed, method, 0, l) for l in range(len(scores))
    ]


def compare(stats: ExampleStats, sizes: list[int], seeds: int, keep_routed: int, method: str) -> dict:
    """Kept sets for every (N, seed), their per-layer Jaccard with the reference (largest N, seed 0), and the
    mean pairwise Jaccard across seeds at each N."""
    n = len(stats.tokens_X)
    perms = orders(n, seeds)
    eff = [min(s, n) for s in sizes]
    kept = {(N, s): kept_sets(stats, perms[s][:N], keep_routed, method) for N in eff for s in range(seeds)}
    ref = kept[(eff[-1], 0)]
    rows = []
    for asked, N in zip(sizes, eff):
        vs_ref = np.array([[jaccard(a, b) for a, b in zip(kept[(N, s)], ref)] for s in range(seeds)])  # [seeds, L]
        pairs = list(itertools.combinations(range(seeds), 2))
        across = np.array([[jaccard(a, b) for a, b in zip(kept[(N, i)], kept[(N, j)])] for i, j in pairs])
        rows.append(
            {
                "n": asked,
                "n_effective": N,
                "jaccard_vs_reference": vs_ref.mean(0).round(6).tolist(),  # per layer, mean over seeds
                "mean_jaccard_vs_reference": float(vs_ref.mean()),
                "min_layer_jaccard_vs_reference": float(vs_ref.mean(0).min()),
                "jaccard_across_seeds": across.mean(0).round(6).tolist() if pairs else None,
                "mean_jaccard_across_seeds": float(across.mean()) if pairs else None,
                "kept": [kept[(N, s)] for s in range(seeds)],
            }
        )
    return {"reference": {"n": sizes[-1], "n_effective": eff[-1], "seed": 0, "kept": ref}, "sizes": rows}
