"""Pretraining loop: EMO document-pool routing (or the standard-MoE baseline), one process or many.

`pretrain(TrainConfig) -> Path` runs the whole thing: tokenise the corpus once (corpus.py), build the
model, train with AdamW (optim.py: warmup + cosine to 10 % of peak, clipping), gradient accumulation and
optional bf16 autocast, evaluate with a fixed pool and without one, checkpoint atomically
(checkpointing.py) so `resume=True` continues exactly. Under `torchrun` it runs data parallel
(distributed.py: DDP, or FSDP2 `fully_shard` with fsdp=True; nccl on GPUs, gloo on CPU).

Batch layout: optimizer step s covers the global samples [s * batch_size, (s + 1) * batch_size); the
micro-batch m on rank r takes the B = micro_batch_size samples starting at
s * batch_size + (m * world_size + r) * B. Pool sizes (pools.py) are a hash of (seed, step, layer, global
row, segment in row), so one process and any number of ranks draw the same pools for the same global batch.

Shape letters: see the legend in `emo_slice/__init__.py`; a training window holds T + 1 tokens (inputs
are its first T, targets its last T).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from emo_slice.data.sources import token_id_bound
from emo_slice.errors import UsageError
from emo_slice.model.modeling import EmoForCausalLM, init_weights
from emo_slice.model.routing import attention_documents, routing_segments
from emo_slice.train.checkpointing import (
    STATE_FILE,
    discard_run,
    latest_checkpoint,
    load_checkpoint,
    prepare_run_folder,
    save_checkpoint,
)
from emo_slice.train.config import TrainConfig
from emo_slice.train.corpus import TokenWindows, prepare_corpus
from emo_slice.train.distributed import (
    barrier,
    gradient_sync,
    init_distributed,
    mean_over_ranks,
    shutdown,
    sum_over_ranks,
    wrap_model,
)
from emo_slice.train.losses import (
    all_reduce_counts,
    document_entropy,
    expert_counts,
    lm_z_loss,
    load_imbalance,
    moe_losses,
)
from emo_slice.train.optim import build_optimizer, clip_gradients, lr_at, set_lr
from emo_slice.train.pools import pool_draw
from emo_slice.train.runlog import append_record, progress_bar, trim_log

__all__ = ["Trainer", "pretrain", "lr_at", "pool_draw", "STATE_FILE"]


class Trainer:
    """One pretraining run. Attributes read by callers: cfg, rank, world, device, mcfg (EmoConfig), meta
    (corpus facts), pool ((pool_min, pool_max) or None), mb (micro-batch rows), accum (micro-batches per
    step and rank), out (run folder), raw (the unwrapped model), model (what trains: DDP / FSDP2 / raw), step."""

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        if not cfg.data or not cfg.out:
            raise UsageError("pretraining needs --data SRC and --out DIR")
        self.cfg = cfg
        self.rank, self.world, self.device, self._own_pg = init_distributed(cfg.device)
        arch = cfg.model_config()  # validate everything that can be checked before touching the disk
        if cfg.router == "emo":
            cfg.pool_range(arch)
        cfg.eval_pool_size(arch)
        mb = cfg.micro_batch_size or max(1, cfg.batch_size // self.world)
        if cfg.batch_size % (mb * self.world):
            raise UsageError(
                f"--batch-size {cfg.batch_size} is not a multiple of micro-batch {mb} x {self.world} "
                f"rank(s); choose a --micro-batch-size that divides {max(1, cfg.batch_size // self.world)}"
            )
        self.mb, self.accum = mb, cfg.batch_size // (mb * self.world)
        self.out = Path(cfg.out).expanduser().absolute()
        self._found = prepare_run_folder(cfg, self.out) if self.rank == 0 else None
        barrier()
        self.resume_from = latest_checkpoint(self.out) if cfg.resume else None
        with self._discard_on_error():
            self._prepare_data()
            self._build()

    @contextlib.contextmanager
    def _discard_on_error(self):
        """A fresh run that fails (bad data or tokenizer, divergence) before its first checkpoint leaves nothing
        behind, so a rerun starts cleanly. Ctrl-C keeps the set-up (the CLI says how to go on)."""
        try:
            yield
        except Exception:
            if self.rank == 0:
                discard_run(self.out, self._found)
            raise

    # -- setup ------------------------------------------------------------------------------------
    def _prepare_data(self) -> None:
        """Token files (rank 0 writes them, the others then read them), the model config, the windows."""
        cfg = self.cfg
        vocab = cfg.vocab_size or cfg.model_config().vocab_size
        if self.rank == 0:
            self.tok, self.meta = prepare_corpus(cfg, self.out / "data", vocab)
        barrier()
        if self.rank != 0:
            self.tok, self.meta = prepare_corpus(cfg, self.out / "data", vocab)
        model_vocab = cfg.model.get("vocab_size", vocab)
        need = token_id_bound(self.tok)  # one more than the largest id the tokenizer gives
        if need > model_vocab:
            if "vocab_size" in cfg.model:
                raise UsageError(
                    f"the tokenizer gives token ids up to {need - 1} but --set vocab_size={model_vocab}; "
                    f"choose vocab_size >= {need}"
                )
            model_vocab = -(-need // 64) * 64
        self.mcfg = cfg.model_config(model_vocab, self.tok.eos_token_id, self.tok.pad_token_id)
        self.train_data = TokenWindows(self.out / "data" / "train.bin", cfg.seq_len, cfg.seed)
        self.valid_data = TokenWindows(self.out / "data" / "valid.bin", cfg.seq_len, cfg.seed, shuffle=False)
        self.pool = cfg.pool_range(self.mcfg) if cfg.router == "emo" else None
        self.eval_pool = cfg.eval_pool_size(self.mcfg)
        self.doc_attn = cfg.uses_doc_attention()

    def _build(self) -> None:
        torch.manual_seed(self.cfg.seed)
        self.raw = init_weights(EmoForCausalLM(self.mcfg), self.cfg.init_std, self.cfg.seed).to(self.device)
        self.model = wrap_model(self.raw, fsdp=self.cfg.fsdp, device=self.device)
        self.optimizer = build_optimizer(self.raw, self.cfg)  # after wrapping: FSDP2 parameters are DTensors
        self.step = 0

    # -- one forward ------------------------------------------------------------------------------
    def _micro_ids(self, step: int, m: int) -> tuple[torch.Tensor, int]:
        """Micro-batch m of `step` on this rank: windows [B, T+1] and the global index of its first row."""
        first = step * self.cfg.batch_size + (m * self.world + self.rank) * self.mb
        return self.train_data.batch(first, self.mb).to(self.device), first

    def _pool_for(self, inp_BT: torch.Tensor, step: int, first_row: int):
        if self.pool is None:
            return None
        return pool_draw(inp_BT, self.mcfg.eos_token_id, self.pool[0], self.pool[1], self.cfg.seed, step, first_row)

    def _forward(self, inp_BT: torch.Tensor, pool) -> dict:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.dtype == "bfloat16"):
            docs_BT = attention_documents(inp_BT, self.mcfg.eos_token_id) if self.doc_attn else None
            return self.model(inp_BT, pool_size=pool, document_ids_BT=docs_BT, return_routing=True)

    # -- training -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _step_counts(self, step: int) -> torch.Tensor:
        """Expert counts [L, R] of the whole step (all micro-batches, all ranks), from a no-grad forward."""
        total_LR = None
        for m in range(self.accum):
            ids, first = self._micro_ids(step, m)
            inp_BT = ids[:, :-1]
            out = self._forward(inp_BT, self._pool_for(inp_BT, step, first))
            counts_LR = torch.stack([expert_counts(r) for r in out["routing"]])
            total_LR = counts_LR if total_LR is None else total_LR + counts_LR
        return all_reduce_counts(total_LR)

    def _micro_step(self, step: int, m: int, step_counts_LR: torch.Tensor | None):
        """Forward and backward of micro-batch m (loss / accum; gradients reduced over ranks on the last).

        Returns (inputs [B, T], routings, [ce, lb, router z, lm z] as floats, this micro-batch's counts [L, R]).
        """
        cfg = self.cfg
        ids, first = self._micro_ids(step, m)
        inp_BT, tgt_BT = ids[:, :-1], ids[:, 1:]
        with gradient_sync(self.model, m == self.accum - 1):
            out = self._forward(inp_BT, self._pool_for(inp_BT, step, first))
            logits_NV = out["logits"].float().reshape(-1, self.mcfg.vocab_size)
            ce = F.cross_entropy(logits_NV, tgt_BT.reshape(-1))
            lmz = lm_z_loss(logits_NV)
            counts_LR = torch.stack([expert_counts(r) for r in out["routing"]])
            lb, z = moe_losses(
                out["routing"], step_counts_LR if step_counts_LR is not None else all_reduce_counts(counts_LR)
            )
            loss = ce + cfg.lm_z_weight * lmz + cfg.lb_weight * lb + cfg.z_weight * z
            (loss / self.accum).backward()
        return inp_BT, out["routing"], [ce.item(), lb.item(), z.item(), lmz.item()], counts_LR

    def train_step(self) -> dict:
        """One optimizer step over the global batch; returns its log record (kind 'train')."""
        cfg, step = self.cfg, self.step
        t0 = time.perf_counter()
        lr = lr_at(cfg, step)
        set_lr(self.optimizer, lr)
        step_counts_LR = self._step_counts(step) if cfg.lb_over_microbatches else None
        sums = torch.zeros(4, dtype=torch.float64)
        counts_LR = None
        for m in range(self.accum):
            inp_BT, routings, losses, c_LR = self._micro_step(step, m, step_counts_LR)
            sums += torch.tensor(losses, dtype=torch.float64)
            counts_LR = c_LR if counts_LR is None else counts_LR + c_LR
        grad_norm = clip_gradients(self.model, cfg.grad_clip)
        ce, lb, z, lmz = mean_over_ranks((sums / self.accum).tolist(), self.device)
        total = ce + cfg.lm_z_weight * lmz + cfg.lb_weight * lb + cfg.z_weight * z
        self._check_finite(step + 1, ce, total, grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        seg_N = routing_segments(inp_BT, self.mcfg.eos_token_id).reshape(-1)  # the last micro-batch's
        imbalance = load_imbalance(all_reduce_counts(counts_LR))
        dt = time.perf_counter() - t0
        tokens = cfg.batch_size * cfg.seq_len
        return {
            "kind": "train",
            "step": self.step,
            "loss": ce,
            "total_loss": ce + cfg.lm_z_weight * lmz + cfg.lb_weight * lb + cfg.z_weight * z,
            "lb": lb,
            "router_z": z,
            "lm_z": lmz,
            "grad_norm": grad_norm,
            "lr": lr,
            "tokens": self.step * tokens,
            "tokens_per_s": tokens / dt,
            "step_s": dt,
            "imbalance": [round(v, 4) for v in imbalance],
            "doc_entropy": [round(document_entropy(r, seg_N), 4) for r in routings],
        }

    def _check_finite(self, step: int, loss: float, total: float, grad_norm: float) -> None:
        """Stop a diverged run before its optimizer step writes NaN into the weights (every rank sees the same
        reduced values, so every rank stops)."""
        if all(math.isfinite(v) for v in (loss, total, grad_norm)):
            return
        raise UsageError(
            f"training diverged at step {step}: loss {loss:.4g}, total loss {total:.4g}, gradient norm "
            f"{grad_norm:.4g} (not finite); nothing of this step was saved; lower --lr (now {self.cfg.lr:g}) "
            "or raise --set warmup_steps" + self._last_good()
        )

    def _last_good(self) -> str:
        latest = self.out / "latest"
        if not latest.is_file():
            return ""
        return f"; the last good checkpoint is {self.out / latest.read_text().strip()} (continue it with --resume)"

    def _check_weights(self) -> None:
        """Refuse to save weights that are not finite (a collective: every rank checks its shard)."""
        bad = torch.zeros(1, device=self.device)
        for p in self.raw.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            bad += (~torch.isfinite(local)).any().float()
        if float(sum_over_ranks(bad)) > 0:
            raise UsageError(
                f"training diverged by step {self.step}: the weights hold NaN or inf, so nothing was saved; "
                f"lower --lr (now {self.cfg.lr:g})" + self._last_good()
            )

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation LM loss with the fixed evaluation pool and with no pool (kind 'eval')."""
        cfg = self.cfg
        n = self.valid_data.n_windows
        per_rank = -(-cfg.eval_batches // self.world)
        result = {"kind": "eval", "step": self.step}
        pools = [("no_pool", None)] + ([(f"pool_{self.eval_pool}", self.eval_pool)] if self.eval_pool else [])
        for key, pool in pools:
            tot = torch.zeros(2, dtype=torch.float64, device=self.device)  # summed CE, tokens
            for i in range(per_rank):
                b = self.rank + i * self.world
                ids = self.valid_data.batch((b * self.mb) % n, self.mb).to(self.device)
                out = self._forward(ids[:, :-1], pool)
                logits_NV = out["logits"].float().reshape(-1, self.mcfg.vocab_size)
                if b < cfg.eval_batches:  # every rank runs per_rank forwards (FSDP2 forwards are collective)
                    tot[0] += F.cross_entropy(logits_NV, ids[:, 1:].reshape(-1), reduction="sum").double()
                    tot[1] += logits_NV.shape[0]
            sum_over_ranks(tot)
            result[f"val_loss_{key}"] = float(tot[0] / tot[1].clamp_min(1))
        return result

    # -- checkpoints --------------------------------------------------------------------------------
    def save(self, name: str) -> Path:
        """Write out/<name> (HF EMO layout + training state) atomically and point out/latest at it."""
        self._check_weights()
        return save_checkpoint(
            self.out,
            name,
            self.model,
            self.optimizer,
            step=self.step,
            cfg=self.cfg,
            mcfg=self.mcfg,
            rank=self.rank,
            world=self.world,
            tokenizer=self.tok,
            data_meta=self.meta,
        )

    def load_latest(self) -> None:
        """Continue from the checkpoint out/latest names (weights, optimizer, RNG, step)."""
        self.step = load_checkpoint(self.resume_from or latest_checkpoint(self.out), self.model, self.optimizer)

    # -- the loop -----------------------------------------------------------------------------------
    def _log(self, rec: dict) -> None:
        if self.rank == 0:
            append_record(self.out, rec)

    def run(self) -> Path:
        """Train to the end of the schedule (or stop_after); returns the last checkpoint written."""
        cfg = self.cfg
        if cfg.resume:
            self.load_latest()
            if self.rank == 0:
                trim_log(self.out, self.step)
        stop = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
        progress = progress_bar(cfg.progress and self.rank == 0)
        task = progress.add_task("pretrain", total=cfg.steps, completed=self.step, loss=float("nan"), tps=0.0)
        last = None
        try:
            with progress, self._discard_on_error():
                while self.step < stop:
                    rec = self.train_step()
                    if self.step % cfg.log_every == 0 or self.step == stop:
                        self._log(rec)
                    progress.update(task, completed=self.step, loss=rec["loss"], tps=rec["tokens_per_s"])
                    if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                        self._log(self.evaluate())
                    if self.step < cfg.steps and (
                        self.step == stop or (cfg.save_every and self.step % cfg.save_every == 0)
                    ):
                        last = self.save(f"step-{self.step:06d}")
            if self.step >= cfg.steps:
                self._log(self.evaluate())
                last = self.save("final")
        finally:
            shutdown(self._own_pg)
        return last if last is not None else latest_checkpoint(self.out)


def pretrain(config: TrainConfig) -> Path:
    """Run (or resume) a pretraining run; returns the folder of the last checkpoint written
    (`<out>/final` when the schedule completes), loadable with emo_slice.load_model."""
    return Trainer(config).run()
