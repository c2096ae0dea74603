"""Scoring the held-out items during fine-tuning, on the model in memory.

- val_loss: the answer-only cross-entropy per trained token of every held-out example (the training loss on
  items never trained on);
- val_acc / val_bpb_gold per multiple-choice task: the held-out items ranked exactly as `emo-slice eval` ranks
  them (eval/scoring.py's rows, batches and lm-eval metrics) through `ModelRunner`, which stands in for eval's
  checkpoint Runner with the model being trained.
Every rank computes the same figures (under FSDP2 the forwards are collective).
"""

from __future__ import annotations

import torch

from emo_slice.eval.scoring import evaluate_mc
from emo_slice.train.sft_data import encode_segments, fit
from emo_slice.train.sft_step import collate, masked_ce_sum


class ModelRunner:
    """The model being trained, as eval's scoring functions call a Runner (run(batches) -> log-probabilities)."""

    def __init__(self, trainer):
        self.trainer, self.config, self.tokenizer = trainer, trainer.mcfg, trainer.tok
        self.path, self.pool = f"{trainer.out} (step {trainer.step})", None

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def run(self, batches, progress=None) -> list[torch.Tensor]:
        step, dev, out = self.trainer.runner, self.trainer.device, []
        for b in batches:
            module = step.precision.forward_module()
            pos = b.pos_BT.to(dev) if b.pos_BT is not None else None
            mask = b.mask_BTT.to(dev) if b.mask_BTT is not None else None
            with step.precision.autocast(dev):
                logits = module(b.ids_BT.to(dev), position_ids_BT=pos, attention_mask=mask)
            logits_PV = logits[b.pred_b.to(dev), b.pred_t.to(dev)].float()
            lp = torch.log_softmax(logits_PV, -1).gather(-1, b.targets_P.to(dev)[:, None])[:, 0]
            out.append(lp.cpu())
            if progress:
                progress(b.n_units)
        return out


@torch.no_grad()
def _val_loss(trainer, examples) -> tuple[float | None, int]:
    encoded = [fit(*encode_segments(trainer.tok, e.segments), trainer.seq_len) for e in examples]
    encoded = [x for x in encoded if x is not None]
    total, n = 0.0, 0
    for s in range(0, len(encoded), trainer.mb):
        inp, tgt = collate(encoded[s : s + trainer.mb], trainer.data.pad_id)
        total += float(masked_ce_sum(trainer.runner.logits(inp), tgt.to(trainer.device)))
        n += int((tgt != -100).sum())
    return (total / n if n else None), n


def evaluate_heldout(trainer, held: list) -> dict:
    """{val_loss, val_targets, val_items, val_acc {task: acc}, val_bpb_gold {task: bits per byte of the gold}}."""
    if not held:
        return {"val_items": 0}
    loss, n = _val_loss(trainer, [e for _, e in held])
    rec = {"val_loss": loss, "val_targets": n, "val_items": len(held), "val_acc": {}, "val_bpb_gold": {}}
    runner = ModelRunner(trainer)
    for task in dict.fromkeys(name for name, _ in held):
        items = [e.item for name, e in held if name == task and e.item is not None]
        if items:
            m = evaluate_mc(runner, items, max_length=trainer.seq_len, batch_size=trainer.mb, task=task).metrics
            rec["val_acc"][task] = m["acc,none"]
            rec["val_bpb_gold"][task] = m.get("bits_per_byte_gold")
    return rec
