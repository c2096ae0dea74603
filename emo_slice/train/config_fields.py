"""TrainConfig: every setting of a pretraining run, typed and documented, with what follows from them.

The fields (data, model, optimisation, distribution, evaluation and checkpoints) and their defaults (the
`small` preset's training settings); the helpers that derive the architecture (`model_config`), the
document pools (`pool_range`, `eval_pool_size`) and the attention (`uses_doc_attention`); `validate`. How a
field's value is checked: train/config_checks.py. Presets and `--set key=value`: train/config.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from dataclasses import field as dc_field

from emo_slice.errors import UsageError
from emo_slice.io.build import remote_code_files
from emo_slice.model.config import EmoConfig
from emo_slice.model.presets import preset
from emo_slice.train.config_checks import check_fields
from emo_slice.train.init_from import init_config


@dataclass
class TrainConfig:
    """Pretraining run configuration (defaults: the `small` preset's training settings)."""

    # data / output -------------------------------------------------------------------------
    data: str = ""
    """Training text: .txt (one document), JSONL (one document per record) or a Hugging Face dataset."""
    out: str = ""
    """Run folder: checkpoints, token files, log.jsonl."""
    field: str = "text"
    """Field holding the text in JSONL records / datasets."""
    split: str | None = None
    """Dataset split to read (default: train, else the first)."""
    valid_data: str | None = None
    """Held-out text for evaluation; default: valid_share of the training documents."""
    valid_share: float = 0.02
    """Share of training documents held out for evaluation when valid_data is not given."""
    tokenizer: str = "auto"
    """'auto' (bytes if the vocab is 256, else train a byte-level BPE), 'bytes', 'train', or a model folder / tokenizer.json."""
    vocab_size: int | None = None
    """Vocabulary of a trained tokenizer (default: the preset's vocab_size)."""
    remote_code: str | None = None
    """Folder with configuration_emo.py and modeling_emo.py, copied into every checkpoint and named by its auto_map
    (default: none; config.json then names no remote code)."""
    data_workers: int | None = None
    """Processes that tokenise the corpus into token shards (default: CPUs - 1, at most 8; 0 = this process)."""

    # model -------------------------------------------------------------------------------------
    preset: str = "small"
    """Architecture preset: tiny, small or emo-1b14b."""
    model: dict = dc_field(default_factory=dict)
    """EmoConfig overrides (Hugging Face keys), e.g. {'hidden_size': 256}."""
    router: str = "emo"
    """'emo' (document pool) or 'standard' (the standard-MoE baseline: no pool, same everything else)."""
    pool_min: int | None = None
    """Smallest document pool P_min (default: 8/127 of the routed experts, at least k')."""
    pool_max: int | None = None
    """Largest document pool P_max (default: routed experts + 1, as 128 for 127 in the release)."""
    doc_attention: bool | None = None
    """Attend only within documents (default: on for emo, off for standard, as in the paper)."""
    init_std: float = 0.02
    """Standard deviation of the initial weights."""
    init_from: str | None = None
    """An EMO checkpoint folder (a release, or a slice) to start from: its architecture and weights, a fresh
    optimizer and schedule (fine-tuning); the architecture then cannot be set with --preset or --set."""

    # optimisation --------------------------------------------------------------------------------
    seq_len: int = 128
    """Tokens per training window: the trained context, written as max_position_embeddings unless
    `--set max_position_embeddings=N` says otherwise."""
    batch_size: int = 16
    """Rows per batch: here windows per optimizer step (the global batch), summed over ranks and micro-batches."""
    micro_batch_size: int | None = None
    """Windows per forward pass on one rank (default: batch_size / world size, no accumulation)."""
    steps: int = 300
    """Optimizer steps of the schedule."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Cosine schedule ends at this share of the peak."""
    warmup_steps: int = 30
    """Linear warmup steps."""
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 0.1
    """AdamW weight decay (0 on embeddings and norms)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    lb_weight: float = 0.1
    """Load-balancing loss weight (applied to the mean over layers)."""
    z_weight: float = 0.001
    """Router z-loss weight (applied to the mean over layers)."""
    lm_z_weight: float = 1e-5
    """LM-head z-loss weight."""
    lb_over_microbatches: bool = False
    """Count experts over all micro-batches of a step for LB (exact; costs one extra no-grad forward)."""
    dtype: str = "float32"
    """Compute dtype: float32, or bfloat16 (bf16 weights cast once per optimizer step over fp32 master weights;
    --set mixed_precision=autocast: torch.autocast instead)."""
    mixed_precision: str = "step"
    """With bfloat16: 'step' (bf16 weights cast once per optimizer step; FSDP2: MixedPrecisionPolicy with
    fp32 gradient reduction) or 'autocast' (torch.autocast over fp32 weights: casts in every micro-batch)."""
    seed: int = 0
    """Random seed of the weights, the data order and the pool draws."""

    # distribution / system -----------------------------------------------------------------------
    fsdp: bool = False
    """Shard parameters with FSDP2 fully_shard (under torchrun) instead of DDP."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu' or 'cuda'."""
    attention: str = "auto"
    """Document-masked attention: 'auto' (flex_attention on CUDA, else masked SDPA), 'flex' or 'sdpa'."""
    compile: bool = False
    """torch.compile each decoder layer's attention block and norms."""
    peak_tflops: float | None = None
    """Peak dense bf16 TFLOP/s of one device, for MFU (default: known for common GPUs; none on CPU)."""

    # evaluation / checkpoints / logging -----------------------------------------------------------
    eval_every: int = 100
    """Evaluate every N steps (0 = only at the end)."""
    eval_batches: int = 4
    """Validation batches per evaluation."""
    eval_pool: int | None = None
    """Fixed pool for evaluation (default: a quarter of the routed experts, as 32 of 128; 0 = none)."""
    save_every: int = 100
    """Checkpoint every N steps (0 = only at the end)."""
    keep_last: int = 2
    """Periodic checkpoints to keep (the final one is always kept)."""
    stop_after: int | None = None
    """Stop (with a checkpoint) after this step without changing the schedule; resume with --resume."""
    resume: bool = False
    """Continue the run in `out` from its latest checkpoint."""
    overwrite: bool = False
    """Start afresh in a non-empty `out`."""
    progress: bool = True
    """Show a progress bar on stderr."""
    log_every: int = 1
    """Write a log.jsonl line every N steps."""

    # derived helpers ------------------------------------------------------------------------------
    def model_config(self, vocab_size: int | None = None, eos: int | None = None, pad: int | None = None) -> EmoConfig:
        if self.init_from:  # the architecture of the checkpoint (init_from.py), not of the preset
            return init_config(self, eos, pad)

        over = dict(self.model)
        if vocab_size is not None and "vocab_size" not in over:
            over["vocab_size"] = vocab_size
        if eos is not None:
            over["eos_token_id"] = eos
        if pad is not None:
            over["pad_token_id"] = pad
        # the checkpoint declares the context it was trained for (eval and profile refuse longer windows)
        over.setdefault("max_position_embeddings", self.seq_len)
        if isinstance(over["max_position_embeddings"], int) and over["max_position_embeddings"] < self.seq_len:
            raise UsageError(
                f"--set max_position_embeddings={over['max_position_embeddings']} is below --seq-len {self.seq_len}: "
                "the model would train at positions its config says it does not have; leave it out (it defaults "
                "to --seq-len) or choose at least the sequence length"
            )
        return preset(self.preset, **over)

    def pool_range(self, cfg: EmoConfig) -> tuple[int, int]:
        """(P_min, P_max) for the routed experts of `cfg`, validated (P_min >= k' so top-k' never takes a masked expert)."""
        R = cfg.num_experts - cfg.num_shared_experts
        k = min(cfg.num_experts_per_tok - cfg.num_shared_experts, R)
        p_min = self.pool_min if self.pool_min is not None else max(k, round(8 * R / 127))
        p_max = self.pool_max if self.pool_max is not None else R + 1
        if p_min < k:
            raise UsageError(
                f"--set pool_min={p_min} is below the {k} routed experts each token takes; choose pool_min >= {k}"
            )
        if p_max < p_min:
            raise UsageError(f"--set pool_max={p_max} is below pool_min={p_min}; choose pool_max >= pool_min")
        return p_min, p_max

    def eval_pool_size(self, cfg: EmoConfig) -> int | None:
        R = cfg.num_experts - cfg.num_shared_experts
        k = min(cfg.num_experts_per_tok - cfg.num_shared_experts, R)
        if self.eval_pool == 0:
            return None
        p = self.eval_pool if self.eval_pool is not None else max(k, round(R * 32 / 128))
        if p < k:
            raise UsageError(f"--set eval_pool={p} is below the {k} routed experts each token takes; choose >= {k}")
        return p

    def uses_doc_attention(self) -> bool:
        return self.doc_attention if self.doc_attention is not None else self.router == "emo"

    def validate(self) -> None:
        if self.router not in ("emo", "standard"):
            raise UsageError(f"--router {self.router!r} is unknown; choose emo or standard")
        if self.dtype not in ("float32", "bfloat16"):
            raise UsageError(f"--dtype {self.dtype!r} is not supported; choose float32 or bfloat16")
        if self.mixed_precision not in ("step", "autocast"):
            raise UsageError(f"--set mixed_precision={self.mixed_precision!r} is unknown; choose step or autocast")
        if self.attention not in ("auto", "flex", "sdpa"):
            raise UsageError(f"--set attention={self.attention!r} is unknown; choose auto, flex or sdpa")
        check_fields(self)  # types and ranges of every field: nothing silently clamped or ignored
        if self.remote_code is not None:
            remote_code_files(self.remote_code)  # refuses a folder without both files before any training

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
