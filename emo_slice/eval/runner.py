"""Running a checkpoint to score rows: whole in memory, or one layer at a time from the checkpoint."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from emo_slice.eval.requests import Batch
from emo_slice.model.modeling import rope_cos_sin


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
