"""Running a checkpoint to score rows: whole in memory, or one layer at a time from the checkpoint."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from emo_slice.eval.requests import Batch


class Runner:
    """A checkpoint ready to score rows: `run(batches)` gives the log-probabilities of their targets.

    The whole model in memory (`EmoForCausalLM.hidden_states`), or with layerwise=True one decoder layer's
    weights at a time (`emo_slice.io.loading.LayerwiseModel`):
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
        return {
            "path": self.path,
            "fingerprint": self.ckpt.fingerprint(),
            "parameters": params,
            "weight_bytes": self.ckpt.total_bytes,
            "dtype": str(self.dtype).replace("torch.", ""),
            "layerwise": self.layerwise,
            "tokenizer": self.tokenizer.describe(),
            "experts_per_layer": [self.config.experts_in_layer(l) for l in range(self.config.num_hidden_layers)],
            "tokens": self.tokens,
            "seconds": round(self.seconds, 4),
            "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else None,
        }

    @staticmethod
    def _inputs(b: Batch) -> dict:
        return {"input_ids_BT": b.ids_BT, "position_ids_BT": b.pos_BT, "attention_mask": b.mask_BTT}

    @torch.no_grad()
    def run(self, batches: list[Batch], progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Log-probabilities of each batch's targets (one tensor [P] per batch)."""
        t0 = time.perf_counter()
        out: list[torch.Tensor] = []
        if not self.layerwise:
            for b in batches:
                x_BTD = self.model.hidden_states(**self._inputs(b))
                out.append(self._logprobs(self.model.head(x_BTD[b.pred_b, b.pred_t]), b.targets_P))
                if progress:
                    progress(b.n_units)
        else:
            xs = self.lw.hidden_states([self._inputs(b) for b in batches])
            for x_BTD, b in zip(xs, batches):
                out.append(self._logprobs(self.lw.head(x_BTD[b.pred_b, b.pred_t]), b.targets_P))
                if progress:
                    progress(b.n_units)
        self.seconds += time.perf_counter() - t0
        self.tokens += sum(b.n_tokens for b in batches)
        return out

    @staticmethod
    def _logprobs(logits_PV: torch.Tensor, targets_P: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits_PV.float(), -1).gather(-1, targets_P[:, None])[:, 0]
