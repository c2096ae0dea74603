"""Pretraining loop: EMO document-pool routing (or the standard-MoE baseline), one process or many.

`pretrain(TrainConfig) -> Path` runs the whole thing: tokenise the corpus once (corpus.py), build the
model, train with AdamW (optim.py: warmup + cosine to 10 % of peak, clipping), gradient accumulation and
optional bf16 autocast, evaluate with a fixed pool and without one, checkpoint atomically
(checkpointing.py) so `resume=True` continues exactly. Under `torchrun` it runs data parallel
(distributed.py: DDP, or FSDP2 `fully_shard` with fsdp=True; nccl on GPUs, gloo on CPU). Under FSDP2 the
model is built on the meta device and each rank allocates and fills only its shards (meta_init.py).

Batch layout: optimizer step s covers the global samples [s * batch_size, (s + 1) * batch_size); the
micro-batch m on rank r takes the B = micro_batch_size samples starting at
s * batch_size + (m * world_size + r) * B. Pool sizes (pools.py) are a hash of (seed, step, layer, global
row, segment in row), so one process and any number of ranks draw the same pools for the same global batch.

Shape letters: see the legend in `emo_slice/__init__.py`; a training window holds T + 1 tokens (inputs
are its first T, targets its last T).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from emo_slice.data.sources import token_id_bound
from emo_slice.errors import UsageError
from emo_slice.model.modeling import EmoForCausalLM, init_weights
from emo_slice.train.checkpointing import (
    STATE_FILE,
    discard_run,
    latest_checkpoint,
    load_checkpoint,
    prepare_run_folder,
    record_resume,
    save_checkpoint,
)
from emo_slice.train.config import TrainConfig, check_run
from emo_slice.train.corpus import (
    TokenWindows,
    check_position,
    clear_stale,
    corpus_key,
    data_workers,
    prepare_corpus,
    wait_for_corpus,
)
from emo_slice.train.distributed import (
    barrier,
    fsdp_active,
    init_distributed,
    shutdown,
    sum_over_ranks,
    wrap_model,
)
from emo_slice.train.init_from import init_shards_from, init_tokenizer_spec, init_weights_from
from emo_slice.train.meta_init import build_sharded, fill_random
from emo_slice.train.mfu import device_peak_tflops, flops_per_token, mfu
from emo_slice.train.optim import build_optimizer, lr_at
from emo_slice.train.pools import pool_draw
from emo_slice.train.runlog import append_record, mfu_text, progress_bar, trim_log
from emo_slice.train.step import StepRunner

__all__ = ["Trainer", "pretrain", "lr_at", "pool_draw", "STATE_FILE"]


class Trainer:
    """One pretraining run. Attributes read by callers: cfg, rank, world, device, mcfg (EmoConfig), meta
    (corpus facts), pool ((pool_min, pool_max) or None), mb (micro-batch rows), accum (micro-batches per
    step and rank), out (run folder), raw (the unwrapped model), model (what trains: DDP / FSDP2 / raw), step."""

    def __init__(self, cfg: TrainConfig):
        if not cfg.data or not cfg.out:
            raise UsageError("pretraining needs --data SRC and --out DIR")
        self.cfg = cfg
        self.rank, self.world, self.device, self._own_pg = init_distributed(cfg.device)
        mb = check_run(cfg, self.world)  # everything that can be checked before touching the disk
        self.mb, self.accum = mb, cfg.batch_size // (mb * self.world)
        self.out = Path(cfg.out).expanduser().absolute()
        self._found = prepare_run_folder(cfg, self.out) if self.rank == 0 else None
        barrier()
        self.resume_from = latest_checkpoint(self.out) if cfg.resume else None
        with self._discard_on_error():
            self._prepare_data()
            self._build()
        if cfg.resume:  # weights, optimizer, RNG, step: a damaged checkpoint stops here, before any training
            self.load_latest()
            self._micro_ids(self.step, 0)  # the first windows read: token ids checked against the vocabulary
            if self.rank == 0:
                record_resume(cfg, self.out)

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
        """Token shards (rank 0 streams the corpus into them with worker processes; the other ranks hold nothing
        and wait on its done-marker), the model config, the windows."""
        cfg, data = self.cfg, self.out / "data"
        if cfg.init_from:
            cfg.tokenizer = init_tokenizer_spec(cfg)
        vocab = cfg.vocab_size or cfg.model_config().vocab_size
        if self.rank == 0:
            data.mkdir(parents=True, exist_ok=True)
            clear_stale(data, corpus_key(cfg, vocab))
        barrier()
        if self.rank == 0:
            self.tok, self.meta = prepare_corpus(cfg, data, vocab, data_workers(cfg))
        else:
            self.tok, self.meta = wait_for_corpus(cfg, data, vocab)
        model_vocab = cfg.model_config().vocab_size if cfg.init_from else cfg.model.get("vocab_size", vocab)
        need = token_id_bound(self.tok)  # one more than the largest id the tokenizer gives
        if need > model_vocab:
            if "vocab_size" in cfg.model or cfg.init_from:
                fix = "use the checkpoint's tokenizer (leave --tokenizer out)" if cfg.init_from else ""
                raise UsageError(
                    f"the tokenizer gives token ids up to {need - 1} but the model's vocab_size is {model_vocab}; "
                    + (fix or f"choose vocab_size >= {need}")
                )
            model_vocab = -(-need // 64) * 64
        self.mcfg = cfg.model_config(model_vocab, self.tok.eos_token_id, self.tok.pad_token_id)
        vocab = self.mcfg.vocab_size  # every window read is checked against it (token files edited after tokenising)
        self.train_data = TokenWindows(data / "train", cfg.seq_len, cfg.seed, vocab_size=vocab)
        self.valid_data = TokenWindows(data / "valid", cfg.seq_len, cfg.seed, shuffle=False, vocab_size=vocab)
        self.pool = cfg.pool_range(self.mcfg) if cfg.router == "emo" else None
        self.eval_pool = cfg.eval_pool_size(self.mcfg)
        self.doc_attn = cfg.uses_doc_attention()

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        from_ckpt = cfg.init_from and not cfg.resume  # its weights; a fresh optimizer and schedule
        bf16_shards = cfg.dtype == "bfloat16" and cfg.mixed_precision == "step"
        wrap = functools.partial(  # FSDP2: bf16 compute, fp32 reduce (precision.py)
            wrap_model, fsdp=cfg.fsdp, device=self.device, param_dtype=torch.bfloat16 if bf16_shards else None
        )
        if fsdp_active(cfg.fsdp):  # built on the meta device, sharded, then each rank fills only its shards
            fill = init_shards_from(cfg, self.mcfg) if from_ckpt else fill_random(cfg.init_std, cfg.seed)
            self.raw = self.model = build_sharded(self.mcfg, wrap, self.device, fill)
        else:
            if from_ckpt:
                self.raw = init_weights_from(cfg, self.mcfg).to(self.device)
            else:
                self.raw = init_weights(EmoForCausalLM(self.mcfg), cfg.init_std, cfg.seed).to(self.device)
            self.model = wrap(self.raw)
        self.optimizer = build_optimizer(self.raw, self.cfg)  # after wrapping: FSDP2 parameters are DTensors
        self.runner = StepRunner(self.cfg, self.raw, self.model, self.optimizer, self.device, self.pool, self.world)
        self.flops_per_token = flops_per_token(self.mcfg, self.cfg.seq_len)
        self.peak_tflops = device_peak_tflops(self.device, self.cfg.peak_tflops)
        self.step = 0

    # -- one forward ------------------------------------------------------------------------------
    def _micro_ids(self, step: int, m: int) -> tuple[torch.Tensor, int]:
        """Micro-batch m of `step` on this rank: windows [B, T+1] on the CPU and the global index of its first row."""
        first = step * self.cfg.batch_size + (m * self.world + self.rank) * self.mb
        return self.train_data.batch(first, self.mb), first

    def _forward(self, inp_BT: torch.Tensor, pool) -> dict:
        return self.runner.forward(inp_BT, pool)

    # -- training -----------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimizer step over the global batch (step.py: one host sync); returns its log record ('train')."""
        cfg, step = self.cfg, self.step
        t0 = time.perf_counter()
        lr = lr_at(cfg, step)
        windows = [self._micro_ids(step, m) for m in range(self.accum)]
        check = lambda f: self._check_finite(step + 1, f["ce"], f["total_loss"], f["grad_norm"])  # noqa: E731
        f = self.runner.run(step, lr, windows, check)
        self.step += 1
        dt = time.perf_counter() - t0
        tokens = cfg.batch_size * cfg.seq_len
        rec = {
            "kind": "train",
            "step": self.step,
            "loss": f["ce"],
            "total_loss": f["total_loss"],
            "lb": f["lb"],
            "router_z": f["router_z"],
            "lm_z": f["lm_z"],
            "grad_norm": f["grad_norm"],
            "lr": lr,
            "tokens": self.step * tokens,
            "tokens_per_s": tokens / dt,
            "step_s": dt,
            "imbalance": [round(v, 4) for v in f["imbalance"]],
            "doc_entropy": [round(v, 4) for v in f["doc_entropy"]],
        }
        util = mfu(tokens / dt, self.flops_per_token, self.peak_tflops, self.world)
        if util is not None:  # only with a known peak (not on CPUs unless --set peak_tflops=...)
            rec["mfu"] = round(util, 4)
        return rec

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
        samples = self.step * self.cfg.batch_size
        manifest = {
            "step": self.step,
            "samples_seen": samples,
            "world_size": self.world,
            "data_position": self.train_data.position(samples),
            "data": self.meta,
        }
        return save_checkpoint(
            self.out,
            name,
            self.model,
            self.optimizer,
            rank=self.rank,
            cfg=self.cfg,
            mcfg=self.mcfg,
            tokenizer=self.tok,
            manifest=manifest,
        )

    def load_latest(self) -> None:
        """Continue from the checkpoint out/latest names (weights, optimizer, RNG, step, data position), saved
        on any number of ranks."""
        folder = self.resume_from or latest_checkpoint(self.out)
        manifest = load_checkpoint(folder, self.model, self.optimizer, self.rank)
        self.step = manifest["step"]
        check_position(folder, manifest.get("data_position"), self.train_data.position(self.step * self.cfg.batch_size))

    # -- the loop -----------------------------------------------------------------------------------
    def _log(self, rec: dict) -> None:
        if self.rank == 0:
            append_record(self.out, rec)

    def run(self) -> Path:
        """Train to the end of the schedule (or stop_after); returns the last checkpoint written."""
        cfg = self.cfg
        if cfg.resume and self.rank == 0:
            trim_log(self.out, self.step)
        stop = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
        progress = progress_bar(cfg.progress and self.rank == 0)
        task = progress.add_task("pretrain", total=cfg.steps, completed=self.step, loss=float("nan"), tps=0.0, mfu="")
        last = None
        try:
            with progress, self._discard_on_error():
                while self.step < stop:
                    rec = self.train_step()
                    if self.step % cfg.log_every == 0 or self.step == stop:
                        self._log(rec)
                    progress.update(
                        task, completed=self.step, loss=rec["loss"], tps=rec["tokens_per_s"], mfu=mfu_text(rec)
                    )
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
