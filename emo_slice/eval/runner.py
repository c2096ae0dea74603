"""Running a checkpoint to score rows: whole in memory, or one layer at a time from the checkpoint."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from emo_slice.errors import UsageError
from emo_slice.eval.requests import Batch
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import STREAMED, open_model
from emo_slice.io.tokenizer import load_tokenizer
from emo_slice.model.devices import resolve_device


def check_pool(pool: int | None, config, where: str = "--pool") -> int | None:
    """The document pool to route with (None: no pool). 0 or None means none; a pool smaller than the routed
    experts each token takes is refused (top-k' would pick experts outside it); one of at least the routed
    experts of a layer leaves that layer unrestricted."""
    if pool is None or pool == 0:
        return None
    k = config.num_experts_per_tok - config.num_shared_experts
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < k:
        raise UsageError(
            f"{where} {pool} is below the {k} routed experts each token takes; choose at least {k}, or 0 for no pool"
        )
    return pool


class Runner:
    """A checkpoint ready to score rows: `run(batches)` gives the log-probabilities of their targets.

    On `device` (auto: a GPU when there is one; compute dtype default bfloat16 on CUDA, float32 elsewhere),
    through `emo_slice.io.loading.LayerwiseModel`, the one layer loop: the whole model resident when it fits
    (in `max_memory` bytes when given, else in the device's free memory; placement "device"), otherwise, or
    with layerwise=True, one decoder layer's weights at a time, the next one prefetched (placement
    "streamed"): every batch goes through layer l before layer l+1 runs. Results equal the whole model's.
    The runner counts the tokens it runs and the seconds it takes (`tokens`, `seconds`).
    """

    def __init__(
        self,
        path: str,
        dtype: str | None = None,
        layerwise: bool = False,
        pool: int | None = None,
        device: str | torch.device = "auto",
        max_memory: int | None = None,
    ):
        self.ckpt = Checkpoint(path)
        self.path = str(path)
        self.config = self.ckpt.config
        self.tokenizer = load_tokenizer(path)
        self.pool = check_pool(pool, self.config)  # each row's document routes inside its own top-P pool
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.lw = open_model(self.ckpt, dtype, self.device, layerwise=layerwise, max_memory=max_memory)
        self.dtype = self.lw.dtype
        self.placement = self.lw.placement
        self.layerwise = self.placement == STREAMED
        self.seconds = 0.0  # time spent scoring
        self.tokens = 0  # tokens run through the model (padding excluded)

    @property
    def model(self):
        """The whole `EmoForCausalLM` when resident (None when streamed)."""
        return self.lw.model

    def describe(self) -> dict:
        params = sum(math.prod(i.shape) for i in self.ckpt.infos.values())
        return {
            "path": self.path,
            "fingerprint": self.ckpt.fingerprint(),
            "parameters": params,
            "weight_bytes": self.ckpt.total_bytes,
            "dtype": str(self.dtype).replace("torch.", ""),
            "weight_dtype": str(self.lw.weight_dtype).replace("torch.", ""),
            "layerwise": self.layerwise,
            "device": str(self.device),
            "placement": self.placement,
            "pool": self.pool,
            "tokenizer": self.tokenizer.describe(),
            "experts_per_layer": [self.config.experts_in_layer(l) for l in range(self.config.num_hidden_layers)],
            "tokens": self.tokens,
            "seconds": round(self.seconds, 4),
            "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else None,
        }

    @property
    def pad_token_id(self) -> int:
        """The id rows are padded with. With a pool, EOS: every padding token then opens a segment of its own,
        so a row's document chooses its pool from its own tokens only, whatever it is batched with."""
        if self.pool is not None and self.config.eos_token_id is not None:
            return self.config.eos_token_id
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _inputs(self, b: Batch) -> dict:
        if self.pool is not None and b.mask_BTT is not None:
            raise UsageError(
                "a document pool needs one row per document; rows sharing a context between choices (tree rows) "
                "would pool all choices together: score multiple choice with one row per choice"
            )
        inputs = {"input_ids_BT": b.ids_BT, "position_ids_BT": b.pos_BT, "attention_mask": b.mask_BTT}
        return inputs | ({"pool_size": self.pool} if self.pool is not None else {})

    @torch.no_grad()
    def run(self, batches: list[Batch], progress: Callable | None = None) -> list[torch.Tensor]:
        """Log-probabilities of each batch's targets (one tensor [P] per batch).

        progress(units, tokens) is called as batches finish, with the items they complete and the tokens
        they held; when progress has a `layers` method, progress.layers(layers done, layers, tokens done) is
        called before the first layer and after each, of every pass (streamed: one pass of all batches;
        resident: one pass per batch)."""
        t0 = time.perf_counter()
        out: list[torch.Tensor] = []
        on_layer = getattr(progress, "layers", None)
        if self.layerwise:  # all batches through one layer at a time
            n = sum(b.n_tokens for b in batches)
            xs = self.lw.hidden_states([self._inputs(b) for b in batches], progress=on_layer, n_tokens=n)
        for i, b in enumerate(batches):
            if self.layerwise:
                x_BTD = xs[i]
            else:
                (x_BTD,) = self.lw.hidden_states([self._inputs(b)], progress=on_layer, n_tokens=b.n_tokens)
            out.append(self._logprobs(self.lw.head(x_BTD[b.pred_b, b.pred_t]), b.targets_P))
            self.tokens += b.n_tokens
            if progress:
                progress(b.n_units, b.n_tokens)
        self.seconds += time.perf_counter() - t0
        return out

    @staticmethod
    def _logprobs(logits_PV: torch.Tensor, targets_P: torch.Tensor) -> torch.Tensor:
        """log p(target) of each prediction, on the CPU."""
        targets_P = targets_P.to(logits_PV.device)
        return torch.log_softmax(logits_PV.float(), -1).gather(-1, targets_P[:, None])[:, 0].cpu()
