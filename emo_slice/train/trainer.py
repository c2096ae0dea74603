"""Pretraining loop: EMO document-pool routing (or the standard-MoE baseline), one process or many.

Legend: B micro-batch windows, T window length, N tokens (B*T), V vocab, L layers, R routed experts,
G global batch (windows per optimizer step), W data-parallel ranks, A gradient-accumulation steps.

`pretrain(TrainConfig) -> Path` runs the whole thing: tokenise the corpus once, build the model, train
with AdamW (warmup + cosine to 10 % of peak, clipping, accumulation, optional bf16 autocast), evaluate
with a fixed pool and without one, checkpoint atomically in the Hugging Face EMO layout plus a
training-state file so `resume=True` continues exactly. Under `torchrun` it runs data parallel (DDP,
or FSDP2 `fully_shard` with fsdp=True; nccl on GPUs, gloo on CPU).

Batch layout: step s covers global samples [s*G, (s+1)*G); micro-batch m on rank r takes samples
s*G + (m*W + r)*B ... +B. Pool sizes are a hash of (seed, step, layer, global row, segment in row), so
one process and W processes draw the same pools for the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from emo_slice.train.corpus import TokenWindows, prepare_corpus
from emo_slice.errors import UsageError
from emo_slice.train.losses import (all_reduce_counts, document_entropy, expert_counts, load_imbalance, lm_z_loss,
                              moe_losses)
from emo_slice.model.modeling import EmoForCausalLM, init_weights
from emo_slice.model.routing import attention_documents, routing_segments
from emo_slice.train.config import TrainConfig

STATE_FILE = "training_state.pt"
PRIME = 2147483647


# ---- pool draws -------------------------------------------------------------------------------
def _mix(h: torch.Tensor, v) -> torch.Tensor:
    h = (h ^ v) % PRIME
    h = (h * 48271 + 11) % PRIME
    return h ^ (h >> 7)


def pool_draw(input_ids_BT: torch.Tensor, eos: int, p_min: int, p_max: int, seed: int, step: int, first_row: int):
    """A callable (layer, num_segments) -> P per segment for EmoForCausalLM(pool_size=...): uniform on
    [p_min, p_max], a deterministic hash of (seed, step, layer, global row, segment index within the row).

    Keyed by the layer index the model passes, not by call order: recomputing a layer (activation
    checkpointing) draws the same pools."""
    seg_BT = routing_segments(input_ids_BT, eos)
    B = seg_BT.shape[0]
    per_row_B = seg_BT[:, -1] - seg_BT[:, 0] + 1
    rows_B = torch.arange(B, device=seg_BT.device)
    row_G = torch.repeat_interleave(rows_B, per_row_B)
    seg_in_row_G = torch.arange(len(row_G), device=seg_BT.device) - torch.repeat_interleave(seg_BT[:, 0], per_row_B)
    base_G = _mix(_mix(torch.full_like(row_G, seed % PRIME), step), 0)
    base_G = _mix(_mix(base_G, row_G + first_row), seg_in_row_G)

    def sizes(layer: int, num_segments: int) -> torch.Tensor:
        assert num_segments == len(row_G)
        h_G = _mix(_mix(base_G, layer + 1), 7)
        return p_min + h_G % (p_max - p_min + 1)

    return sizes


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to cfg.lr, then cosine down to cfg.min_lr_ratio * cfg.lr at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# ---- distribution -----------------------------------------------------------------------------
def _init_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device, bool]:
    """(rank, world, device, we_initialised) from torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--set device=cuda but no GPU is visible; use device=cpu or auto")
    ours = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
        ours = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device, ours


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _mean_over_ranks(values: list[float], device) -> list[float]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


# ---- the trainer ------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        if not cfg.data or not cfg.out:
            raise UsageError("pretraining needs --data SRC and --out DIR")
        self.cfg = cfg
        self.rank, self.world, self.device, self._own_pg = _init_distributed(cfg)
        arch = cfg.model_config()  # validate everything that can be checked before touching the disk
        if cfg.router == "emo":
            cfg.pool_range(arch)
        cfg.eval_pool_size(arch)
        mb = cfg.micro_batch_size or max(1, cfg.batch_size // self.world)
        if cfg.batch_size % (mb * self.world):
            raise UsageError(f"--batch-size {cfg.batch_size} is not a multiple of micro-batch {mb} x {self.world} "
                             f"rank(s); choose a --micro-batch-size that divides {max(1, cfg.batch_size // self.world)}")
        self.mb, self.accum = mb, cfg.batch_size // (mb * self.world)
        self.out = Path(cfg.out).expanduser().absolute()
        self._prepare_out()
        self._prepare_data()
        self._build()

    # -- setup ------------------------------------------------------------------------------------
    def _prepare_out(self) -> None:
        cfg, out = self.cfg, self.out
        if self.rank == 0:
            if cfg.resume:
                if not (out / "latest").exists():
                    raise UsageError(f"--resume: {out} holds no checkpoint (no 'latest' file); start without --resume")
            elif out.exists() and any(out.iterdir()):
                if not cfg.overwrite:
                    raise UsageError(f"--out {out} already holds files; pass --resume to continue that run, "
                                     "--overwrite to start afresh, or choose another folder")
                if not (out / "train_config.json").exists():
                    raise UsageError(f"--out {out} is not a pretraining run folder; refusing to delete it with "
                                     "--overwrite; choose another folder")
                shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        _barrier()

    def _prepare_data(self) -> None:
        cfg = self.cfg
        base_vocab = cfg.model_config().vocab_size
        vocab = cfg.vocab_size or base_vocab
        if self.rank == 0:
            self.tok, self.meta = prepare_corpus(cfg, self.out / "data", vocab)
        _barrier()
        if self.rank != 0:
            self.tok, self.meta = prepare_corpus(cfg, self.out / "data", vocab)
        model_vocab = cfg.model.get("vocab_size", vocab)
        if self.tok.vocab_size > model_vocab:
            if "vocab_size" in cfg.model:
                raise UsageError(f"the tokenizer has {self.tok.vocab_size} tokens but --set vocab_size={model_vocab}; "
                                 f"choose vocab_size >= {self.tok.vocab_size}")
            model_vocab = -(-self.tok.vocab_size // 64) * 64
        self.mcfg = cfg.model_config(model_vocab, self.tok.eos_token_id, self.tok.pad_token_id)
        self.train_data = TokenWindows(self.out / "data" / "train.bin", cfg.seq_len, cfg.seed)
        self.valid_data = TokenWindows(self.out / "data" / "valid.bin", cfg.seq_len, cfg.seed, shuffle=False)
        R = self.mcfg.num_experts - self.mcfg.num_shared_experts
        self.R = R
        self.pool = cfg.pool_range(self.mcfg) if cfg.router == "emo" else None
        self.eval_pool = cfg.eval_pool_size(self.mcfg)
        self.doc_attn = cfg.uses_doc_attention()

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = init_weights(EmoForCausalLM(self.mcfg), cfg.init_std, cfg.seed).to(self.device)
        self.raw = model
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim < 2 or "embed_tokens" in name else decay).append(p)
        if cfg.fsdp and dist.is_initialized():
            from torch.distributed.fsdp import fully_shard

            for layer in model.model.layers:
                fully_shard(layer)
            fully_shard(model)
            self.model = model
        elif dist.is_initialized() and self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            self.model = model
        # parameters may be DTensors now (FSDP): collect groups again by identity of names
        params = dict(model.named_parameters())
        names_nd = {n for n, p in params.items() if p.ndim < 2 or "embed_tokens" in n}
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in params.items() if n not in names_nd], "weight_decay": cfg.weight_decay},
             {"params": [p for n, p in params.items() if n in names_nd], "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
        self.step = 0

    # -- one forward ------------------------------------------------------------------------------
    def _autocast(self):
        on = self.cfg.dtype == "bfloat16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    def _micro_ids(self, step: int, m: int) -> tuple[torch.Tensor, int]:
        first = step * self.cfg.batch_size + (m * self.world + self.rank) * self.mb
        return self.train_data.batch(first, self.mb).to(self.device), first

    def _pool_for(self, inp_BT, step: int, first_row: int):
        if self.pool is None:
            return None
        return pool_draw(inp_BT, self.mcfg.eos_token_id, self.pool[0], self.pool[1], self.cfg.seed, step, first_row)

    def _forward(self, module, inp_BT, pool):
        with self._autocast():
            docs_BT = attention_documents(inp_BT, self.mcfg.eos_token_id) if self.doc_attn else None
            return module(inp_BT, pool_size=pool, document_ids_BT=docs_BT, return_routing=True)

    @torch.no_grad()
    def _step_counts(self, step: int) -> torch.Tensor:
        """Expert counts of the whole step (all micro-batches, all ranks), from a no-grad forward."""
        total = None
        for m in range(self.accum):
            ids, first = self._micro_ids(step, m)
            inp = ids[:, :-1]
            out = self._forward(self.model, inp, self._pool_for(inp, step, first))
            c = torch.stack([expert_counts(r) for r in out["routing"]])
            total = c if total is None else total + c
        return all_reduce_counts(total)

    def train_step(self) -> dict:
        cfg, step = self.cfg, self.step
        t0 = time.perf_counter()
        lr = lr_at(cfg, step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        step_counts = self._step_counts(step) if cfg.lb_over_microbatches else None
        sums = torch.zeros(4, dtype=torch.float64)
        counts_all = None
        for m in range(self.accum):
            ids, first = self._micro_ids(step, m)
            inp, tgt = ids[:, :-1], ids[:, 1:]
            sync = contextlib.nullcontext()
            if hasattr(self.model, "no_sync") and m < self.accum - 1:  # DDP: reduce gradients once per step
                sync = self.model.no_sync()
            if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2: likewise
                self.model.set_requires_gradient_sync(m == self.accum - 1)
            with sync:
                out = self._forward(self.model, inp, self._pool_for(inp, step, first))
                logits = out["logits"].float().reshape(-1, self.mcfg.vocab_size)
                ce = F.cross_entropy(logits, tgt.reshape(-1))
                lmz = lm_z_loss(logits)
                counts_LR = torch.stack([expert_counts(r) for r in out["routing"]])
                lb, z = moe_losses(out["routing"], step_counts if step_counts is not None
                                   else all_reduce_counts(counts_LR))
                loss = ce + cfg.lm_z_weight * lmz + cfg.lb_weight * lb + cfg.z_weight * z
                (loss / self.accum).backward()
            sums += torch.tensor([ce.item(), lb.item(), z.item(), lmz.item()], dtype=torch.float64)
            counts_all = counts_LR if counts_all is None else counts_all + counts_LR
        params = [p for p in self.model.parameters() if p.grad is not None]
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        gn = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        ce_m, lb_m, z_m, lmz_m = _mean_over_ranks((sums / self.accum).tolist(), self.device)
        seg_N = routing_segments(inp, self.mcfg.eos_token_id).reshape(-1)
        counts_g = all_reduce_counts(counts_all)
        dt = time.perf_counter() - t0
        tokens = cfg.batch_size * cfg.seq_len
        return {"kind": "train", "step": self.step, "loss": ce_m,
                "total_loss": ce_m + cfg.lm_z_weight * lmz_m + cfg.lb_weight * lb_m + cfg.z_weight * z_m,
                "lb": lb_m, "router_z": z_m, "lm_z": lmz_m, "grad_norm": gn, "lr": lr,
                "tokens": self.step * tokens, "tokens_per_s": tokens / dt, "step_s": dt,
                "imbalance": [round(v, 4) for v in load_imbalance(counts_g)],
                "doc_entropy": [round(document_entropy(r, seg_N), 4) for r in out["routing"]]}

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation LM loss with the fixed evaluation pool and with no pool."""
        cfg = self.cfg
        n = self.valid_data.n_windows
        per_rank = -(-cfg.eval_batches // self.world)
        result = {"kind": "eval", "step": self.step}
        pools = [("no_pool", None)] + ([(f"pool_{self.eval_pool}", self.eval_pool)] if self.eval_pool else [])
        for key, pool in pools:
            tot = torch.zeros(2, dtype=torch.float64, device=self.device)
            for i in range(per_rank):
                b = self.rank + i * self.world
                ids = self.valid_data.batch((b * self.mb) % n, self.mb).to(self.device)
                out = self._forward(self.model, ids[:, :-1], pool)
                logits = out["logits"].float().reshape(-1, self.mcfg.vocab_size)
                if b < cfg.eval_batches:
                    tot[0] += F.cross_entropy(logits, ids[:, 1:].reshape(-1), reduction="sum").double()
                    tot[1] += logits.shape[0]
            if dist.is_initialized() and self.world > 1:
                dist.all_reduce(tot)
            result[f"val_loss_{key}"] = float(tot[0] / tot[1].clamp_min(1))
        return result

    # -- checkpoints --------------------------------------------------------------------------------
    def _full_states(self):
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=opts), get_optimizer_state_dict(self.model, self.optimizer, options=opts)

    def save(self, name: str) -> Path:
        """Write out/<name> (HF EMO layout + training state) atomically and point out/latest at it."""
        from emo_slice.artifacts import provenance
        from emo_slice.io.build import save_model

        model_sd, optim_sd = self._full_states()
        final = self.out / name
        if self.rank == 0:
            with torch.device("meta"):
                export = EmoForCausalLM(self.mcfg)
            export = export.to_empty(device="cpu")
            export.load_state_dict({k: v.float() for k, v in model_sd.items()})
            partial = self.out / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            prov = provenance(created_by="emo-slice pretrain", step=self.step, router=self.cfg.router)
            save_model(export, partial, dtype=torch.float32, overwrite=True, tokenizer=self.tok, metadata=prov,
                       extra_files={"train_config.json": json.dumps(self.cfg.to_dict(), indent=2) + "\n",
                                    "provenance.json": json.dumps({**prov, "data": self.meta}, indent=2) + "\n"})
            state = {"step": self.step, "optimizer": optim_sd, "samples_seen": self.step * self.cfg.batch_size,
                     "rng": torch.get_rng_state(),
                     "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                     "config": self.cfg.to_dict(), "world_size": self.world}
            torch.save(state, partial / STATE_FILE)
            if final.exists():
                old = self.out / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(partial, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(partial, final)
            tmp = self.out / "latest.tmp"
            tmp.write_text(name + "\n")
            os.replace(tmp, self.out / "latest")
            self._prune(name)
        _barrier()
        return final

    def _prune(self, keep_name: str) -> None:
        steps = sorted(p for p in self.out.glob("step-*") if p.is_dir())
        for p in steps[: max(0, len(steps) - self.cfg.keep_last)]:
            if p.name != keep_name:
                shutil.rmtree(p, ignore_errors=True)

    def load_latest(self) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        from emo_slice.io.loading import load_model

        folder = self.out / (self.out / "latest").read_text().strip()
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
        full = load_model(folder, dtype=torch.float32).state_dict()
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, full, options=opts)
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=opts)
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])

    # -- the loop -----------------------------------------------------------------------------------
    def _log(self, rec: dict) -> None:
        if self.rank == 0:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    def _trim_log(self) -> None:
        log = self.out / "log.jsonl"
        if self.rank == 0 and log.exists():
            keep = [ln for ln in log.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= self.step]
            log.write_text("".join(ln + "\n" for ln in keep))

    def run(self) -> Path:
        cfg = self.cfg
        if cfg.resume:
            self.load_latest()
            self._trim_log()
        stop = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
        progress = _progress(cfg.progress and self.rank == 0)
        task = progress.add_task("pretrain", total=cfg.steps, completed=self.step, loss=float("nan"), tps=0.0)
        last = None
        try:
            with progress:
                while self.step < stop:
                    rec = self.train_step()
                    if self.step % cfg.log_every == 0 or self.step == stop:
                        self._log(rec)
                    progress.update(task, completed=self.step, loss=rec["loss"], tps=rec["tokens_per_s"])
                    if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                        self._log(self.evaluate())
                    if self.step < cfg.steps and (self.step == stop or (cfg.save_every and self.step % cfg.save_every == 0)):
                        last = self.save(f"step-{self.step:06d}")
            if self.step >= cfg.steps:
                self._log(self.evaluate())
                last = self.save("final")
        finally:
            if self._own_pg and dist.is_initialized():
                dist.destroy_process_group()
        return last if last is not None else self.out / (self.out / "latest").read_text().strip()


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]pretrain"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled, transient=False)


def pretrain(config: TrainConfig) -> Path:
    """Run (or resume) a pretraining run; returns the folder of the last checkpoint written
    (`<out>/final` when the schedule completes), loadable with emo_slice.load_model."""
    return Trainer(config).run()
