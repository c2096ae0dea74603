"""Supervised fine-tuning of an EMO checkpoint (a slice, typically) on task items, on the pretraining machinery.

`FinetuneTrainer(FinetuneConfig).run()`: the tasks' training items (sft_data.py) with a seeded share held out,
the model's weights in float32 with the part `--train` names learning (freezing.py; the frozen parameters
are never given to AdamW), answer-only loss (sft_step.py). From pretraining it reuses the devices and process
group (distributed.py: DDP, or FSDP2 under torchrun), bf16 (precision.py), the run folder, atomic
checkpoints with sharded training state and exact resume (checkpointing.py), the divergence stop, the
progress bar and log.jsonl (runlog.py). Before the first step it writes `step-000000` (the weights it starts
from, as a model folder: before/after is `emo-slice eval RUN/final --against RUN/step-000000`) and scores
the held-out items; again every `--eval-every` steps and at the end (log.jsonl records of kind "eval":
val_loss = answer-only cross-entropy per trained token, val_acc per multiple-choice task).

Every checkpoint holds the model's own config.json (float32), tokenizer and side files, its slice.json when
it is a slice (so `emo-slice merge` finds the experts' ids) and finetune.json (base model, tasks, part).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from emo_slice.artifacts import _swap_in, _write_marker, provenance, remove
from emo_slice.data.sources import check_tokenizer_fits
from emo_slice.errors import DataError, UsageError
from emo_slice.io.chat import read_chat_template
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import load_model
from emo_slice.io.tokenizer import load_tokenizer
from emo_slice.model.config import EmoConfig
from emo_slice.model.hf_names import stacked_to_hf
from emo_slice.slicing.extract import MANIFEST, copied_files
from emo_slice.train.checkpointing import (
    INITIAL,
    export_hf,
    latest_checkpoint,
    load_checkpoint,
    prepare_run_folder,
    record_checkpoint,
    save_checkpoint,
)
from emo_slice.train.distributed import barrier, fsdp_active, init_distributed, shutdown, wrap_model
from emo_slice.train.finetune_config import FinetuneConfig
from emo_slice.train.finetune_eval import evaluate_heldout
from emo_slice.train.freezing import trained_names
from emo_slice.train.meta_init import build_sharded, fill_full_tensors
from emo_slice.train.optim import build_optimizer, lr_at
from emo_slice.train.runlog import append_record, progress_bar, trim_log
from emo_slice.train.sft_data import encode_segments, fit, load_sft_task, split_heldout
from emo_slice.train.sft_step import SFTData, SFTStep
from emo_slice.train.trainer import Trainer

FINETUNE_FILE = "finetune.json"


def _check_out(out: Path, model: Path) -> None:
    """The run folder is never the model, inside it, or around it."""
    o, m = out.resolve(), model.resolve()
    if o == m or m in o.parents or o in m.parents:
        where = "is" if o == m else "is inside" if m in o.parents else "contains"
        raise UsageError(
            f"--out {out} {where} the model {model}; inputs are never modified, choose a folder outside it"
        )


class FinetuneTrainer(Trainer):
    """One fine-tuning run (see the module docstring). Attributes as Trainer's, plus ckpt (the model opened),
    tasks (what each --task gave), held (held-out (task, example) pairs), data (SFTData)."""

    def __init__(self, cfg: FinetuneConfig):
        cfg.validate()
        self.cfg = cfg
        self.rank, self.world, self.device, self._own_pg = init_distributed(cfg.device)
        self.ckpt = Checkpoint(cfg.model)
        self.out = Path(cfg.out).expanduser().absolute()
        _check_out(self.out, self.ckpt.path)
        self._load_data()  # every task read and encoded before anything is written
        mb = cfg.micro_batch_size or max(1, cfg.batch_size // self.world)
        if cfg.batch_size % (mb * self.world):
            raise UsageError(
                f"--batch-size {cfg.batch_size} is not a multiple of micro-batch {mb} x {self.world} rank(s); "
                f"choose a --micro-batch-size that divides {max(1, cfg.batch_size // self.world)}"
            )
        self.mb, self.accum = mb, cfg.batch_size // (mb * self.world)
        self._found = prepare_run_folder(cfg, self.out) if self.rank == 0 else None
        barrier()
        self.resume_from = latest_checkpoint(self.out) if cfg.resume else None
        with self._discard_on_error():
            self._build()
        if cfg.resume:
            self.load_latest()

    # -- setup ------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        cfg, ckpt = self.cfg, self.ckpt
        self.mcfg = EmoConfig.from_dict(ckpt.config.to_dict())
        self.mcfg.output_router_logits = False
        if cfg.fsdp and cfg.train == "routed" and self.mcfg.num_shared_experts and self.mcfg.moe_layers():
            raise UsageError(
                "--train routed keeps the shared experts frozen inside the stacked expert tensors, which --fsdp "
                "does not shard; use --train routed+shared, or data parallel without --fsdp"
            )
        self.tok = load_tokenizer(ckpt.path)
        check_tokenizer_fits(self.tok, self.mcfg.vocab_size, cfg.model)
        context = self.mcfg.max_position_embeddings
        self.seq_len = cfg.seq_len or context
        if self.seq_len > context:
            raise UsageError(f"--seq-len {self.seq_len} is more than {cfg.model}'s context ({context}); choose less")
        template = read_chat_template(ckpt.path)
        self.tasks = [load_sft_task(spec, cfg.split, template) for spec in cfg.tasks]
        train, self.held = [], []
        for t in self.tasks:
            tr, he = split_heldout(t.examples, cfg.valid_share, cfg.seed)
            train += tr
            self.held += [(t.name, e) for e in he]
        encoded = [fit(*encode_segments(self.tok, e.segments), self.seq_len) for e in train]
        self.dropped = sum(x is None for x in encoded)
        encoded = [x for x in encoded if x is not None]
        if not encoded:
            raise DataError(
                f"every training example is longer than --seq-len {self.seq_len} in its answer alone; raise --seq-len"
            )
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id or 0
        self.data = SFTData(encoded, cfg.seed, pad)
        cfg.resolve_schedule(len(encoded))

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        bf16_shards = cfg.dtype == "bfloat16" and cfg.mixed_precision == "step"
        param_dtype = torch.bfloat16 if bf16_shards else None

        def wrap(model):
            self.trained = trained_names(model, cfg.train)  # before sharding: FSDP2 sees what is frozen
            return wrap_model(model, fsdp=cfg.fsdp, device=self.device, param_dtype=param_dtype)

        if fsdp_active(cfg.fsdp):
            self.raw = self.model = build_sharded(self.mcfg, wrap, self.device, self._fill)
        else:
            self.raw = load_model(self.ckpt, dtype=torch.float32).to(self.device)
            self.raw.config = self.mcfg
            self.model = wrap(self.raw)
        self.optimizer = build_optimizer(self.raw, cfg)  # the parameters that learn, and only those
        self.runner = SFTStep(cfg, self.raw, self.model, self.optimizer, self.device, self.world)
        self.step = 0

    def _fill(self, model) -> None:
        """Under FSDP2: each parameter read whole from the checkpoint, this rank keeping its shard."""

        def write(name: str, full: torch.Tensor) -> None:
            for hf_name, part in stacked_to_hf({name: full}, self.mcfg):
                self.ckpt.read_into(hf_name, part)

        fill_full_tensors(write)(model)
        model.eval()

    # -- training -----------------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, step = self.cfg, self.step
        t0 = time.perf_counter()
        lr = lr_at(cfg, step)
        first = step * cfg.batch_size
        micro = [self.data.batch(first + (m * self.world + self.rank) * self.mb, self.mb) for m in range(self.accum)]
        n_targets = self.data.targets(first, cfg.batch_size)
        check = lambda f: self._check_finite(step + 1, f["loss"], f["loss"], f["grad_norm"])  # noqa: E731
        f = self.runner.run(lr, micro, n_targets, check)
        self.step += 1
        dt = time.perf_counter() - t0
        tokens = sum(int((inp != self.data.pad_id).sum()) for inp, _ in micro) * self.world
        return {"kind": "train", "step": self.step, **f, "lr": lr, "examples": self.step * cfg.batch_size} | {
            "epoch": round(self.step * cfg.batch_size / len(self.data), 3),
            "tokens_per_s": tokens / dt,
            "step_s": dt,
        }

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The held-out items scored by the model as it is now (kind 'eval')."""
        held = self.held[: self.cfg.eval_items]
        return {"kind": "eval", "step": self.step, **evaluate_heldout(self, held)}

    # -- checkpoints --------------------------------------------------------------------------------
    def side_files(self) -> dict[str, bytes]:
        """What every checkpoint holds besides weights and training state: the model's own config.json (float32),
        tokenizer and side files, its slice.json, and finetune.json."""
        config = self.ckpt.side_json("config.json") or self.mcfg.to_dict()
        config["torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"] = "float32"
        files = {p.name: p.read_bytes() for p in copied_files(self.ckpt.path)}
        files["config.json"] = (json.dumps(config, indent=2) + "\n").encode()
        slice_record = self.ckpt.side_json(MANIFEST)
        if slice_record is not None:
            files[MANIFEST] = (json.dumps(slice_record, indent=1) + "\n").encode()
        files[FINETUNE_FILE] = (json.dumps(self.record(), indent=1) + "\n").encode()
        return files

    def record(self) -> dict:
        return {
            "format": "emo-slice-finetune",
            "base": {"path": str(self.ckpt.path.resolve()), "fingerprint": self.ckpt.fingerprint()},
            "step": self.step,
            "train": self.cfg.train,
            "trained_parameters": len(self.trained),
            "tasks": [{"spec": t.spec, "name": t.name, "kind": t.kind, "items": len(t.examples)} for t in self.tasks],
            "examples": {"train": len(self.data), "held_out": len(self.held), "too_long": self.dropped},
            "seq_len": self.seq_len,
            "provenance": provenance(),
        }

    def save(self, name: str) -> Path:
        self._check_weights()
        samples = self.step * self.cfg.batch_size
        manifest = {
            "step": self.step,
            "samples_seen": samples,
            "world_size": self.world,
            "data_position": self.data.position(samples),
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
            command="finetune",
            side=self.side_files() if self.rank == 0 else None,
        )

    def save_initial(self) -> Path:
        """out/step-000000: the weights training starts from, as a model folder (no training state: a run is
        resumed from its later checkpoints only). A collective under FSDP2 (the export gathers)."""
        final, tmp = self.out / INITIAL, self.out / f".{INITIAL}.saving"
        if self.rank == 0:
            remove(tmp)
            tmp.mkdir(parents=True)
        barrier()
        prov = provenance(created_by="emo-slice finetune", step=0)
        export_hf(
            tmp,
            self.model.module if hasattr(self.model, "no_sync") else self.model,
            self.mcfg,
            write=self.rank == 0,
            metadata=prov,
        )
        if self.rank == 0:
            for name, data in self.side_files().items():
                (tmp / name).write_bytes(data)
            _write_marker(tmp)
            record_checkpoint(self.out, INITIAL)  # the run's own: --overwrite and resume know it, pruning keeps it
            _swap_in(tmp, final, self.out / f".{INITIAL}.old")
        barrier()
        return final

    def load_latest(self) -> None:
        folder = self.resume_from or latest_checkpoint(self.out)
        manifest = load_checkpoint(folder, self.model, self.optimizer, self.rank)
        self.step = manifest["step"]
        saved, now = manifest.get("data_position") or {}, self.data.position(self.step * self.cfg.batch_size)
        if saved != now:
            raise DataError(
                f"{folder} was trained on {saved.get('examples')} examples but the tasks now give {len(self.data)}: "
                "the tasks or the tokenizer changed; resume with the same tasks, or start a new run"
            )

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
        last = None
        try:
            with progress_bar(cfg.progress and self.rank == 0, "finetune") as bar, self._discard_on_error():
                task = bar.add_task(
                    "finetune", total=cfg.steps, completed=self.step, loss=float("nan"), tps=0.0, mfu=""
                )
                if self.step == 0:
                    self._log(self.evaluate())
                    self.save_initial()
                while self.step < stop:
                    rec = self.train_step()
                    if self.step % cfg.log_every == 0 or self.step == stop:
                        self._log(rec)
                    bar.update(task, completed=self.step, loss=rec["loss"], tps=rec["tokens_per_s"])
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


def finetune(cfg: FinetuneConfig) -> Path:
    """Run (or resume) a fine-tuning run; returns its last checkpoint (`<out>/final` when the schedule completes)."""
    return FinetuneTrainer(cfg).run()
