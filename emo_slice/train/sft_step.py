"""One optimizer step of supervised fine-tuning: examples -> padded micro-batches -> answer-only loss.

`SFTData` holds the encoded examples (sft_data.py) and their order: epoch e visits them in a permutation
seeded by (seed, e); optimizer step s covers the global examples [s * batch_size, (s + 1) * batch_size) of
that endless sequence and the micro-batch m on rank r takes the B = micro-batch examples starting at
s * batch_size + (m * world_size + r) * B, as pretraining lays out its windows. A micro-batch is right padded
to its longest example; padded and prompt positions have the target IGNORE.

The loss (`masked_ce_sum`) is the cross-entropy of the trained targets only, summed; a step divides it by the
number of trained targets in the whole global batch (known from the data on every rank, no communication),
so every answer token weighs the same however the examples fall into micro-batches and ranks (the loss
Hugging Face's Trainer computes with num_items_in_batch). Only the cross-entropy: no router auxiliary
losses (the checkpoints EMO fine-tunes have output_router_logits false). Routing is the reference
inference routing (no document pool), attention plain causal: each row holds one example.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from emo_slice.train.distributed import sum_over_ranks
from emo_slice.train.optim import set_lr
from emo_slice.train.precision import Precision, grad_norm
from emo_slice.train.sft_data import IGNORE


class SFTData:
    """Encoded examples [(ids, trained)], visited in seeded per-epoch permutations."""

    def __init__(self, encoded: list[tuple[list[int], list[bool]]], seed: int, pad_id: int):
        self.encoded, self.seed, self.pad_id = encoded, seed, pad_id
        self._orders: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.encoded)

    def index(self, i: int) -> int:
        """The example at global position i of the endless, epoch-wise shuffled sequence."""
        n = len(self.encoded)
        epoch = i // n
        if epoch not in self._orders:
            order = list(range(n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._orders = {epoch: order}  # one epoch's order kept at a time
        return self._orders[epoch][i % n]

    def targets(self, first: int, count: int) -> int:
        """Trained targets of the examples at global positions [first, first + count)."""
        return sum(sum(self.encoded[self.index(i)][1][1:]) for i in range(first, first + count))

    def batch(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs [B, T], targets [B, T]) of the examples at global positions [first, first + count)."""
        return collate([self.encoded[self.index(i)] for i in range(first, first + count)], self.pad_id)

    def position(self, samples: int) -> dict:
        n = len(self.encoded)
        return {"epoch": samples // n, "example": samples % n, "samples": samples, "examples": n}


def collate(examples: list[tuple[list[int], list[bool]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs ids[:-1] and targets ids[1:] (IGNORE where not trained, and on padding)."""
    T = max(len(ids) - 1 for ids, _ in examples)
    inp = torch.full((len(examples), T), pad_id, dtype=torch.long)
    tgt = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for b, (ids, trained) in enumerate(examples):
        n = len(ids) - 1
        inp[b, :n] = torch.tensor(ids[:-1])
        tgt[b, :n] = torch.tensor([t if k else IGNORE for t, k in zip(ids[1:], trained[1:])])
    return inp, tgt


def masked_ce_sum(logits_BTV: torch.Tensor, tgt_BT: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy (float32) of the positions whose target is not IGNORE."""
    V = logits_BTV.shape[-1]
    return F.cross_entropy(logits_BTV.float().reshape(-1, V), tgt_BT.reshape(-1), ignore_index=IGNORE, reduction="sum")


def _is_fsdp(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


class SFTStep:
    """Forward, backward and optimizer step of fine-tuning (raw: the fp32 model; model: what trains)."""

    def __init__(self, cfg, raw, model, optimizer, device: torch.device, world: int = 1):
        self.cfg, self.raw, self.model, self.optimizer, self.device, self.world = (
            cfg,
            raw,
            model,
            optimizer,
            device,
            world,
        )
        self.precision = Precision(
            raw, model, dtype=cfg.dtype, mode=cfg.mixed_precision, fsdp=_is_fsdp(model), compile=cfg.compile
        )

    def logits(self, inp_BT: torch.Tensor) -> torch.Tensor:
        module = self.precision.forward_module()
        with self.precision.autocast(self.device):
            return module(inp_BT.to(self.device))

    def run(self, lr: float, micro: list[tuple[torch.Tensor, torch.Tensor]], n_targets: int, check=None) -> dict:
        """One optimizer step over this rank's micro-batches; n_targets: trained targets of the global batch.
        `check(figures)` runs before the optimizer step (raise to stop). Returns {loss, grad_norm, targets}."""
        set_lr(self.optimizer, lr)
        total = torch.zeros(1, dtype=torch.float32, device=self.device)
        for m, (inp_BT, tgt_BT) in enumerate(micro):
            with self.precision.gradient_sync(m == len(micro) - 1):
                ce = masked_ce_sum(self.logits(inp_BT), tgt_BT.to(self.device))
                (ce * (self.world / n_targets)).backward()
            total += ce.detach()
        self.precision.grads_ready()
        norm = grad_norm(self.raw, self.cfg.grad_clip)
        loss_sum, norm_value = torch.cat([sum_over_ranks(total), norm.reshape(1).float()]).tolist()
        figures = {"loss": loss_sum / n_targets, "grad_norm": norm_value, "targets": n_targets}
        if check is not None:
            check(figures)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.weights_changed()
        return figures
