"""`--init-from CKPT`: continue or fine-tune an existing EMO checkpoint (a release, or a slice with fewer
experts) with a fresh optimizer and schedule.

The architecture is the checkpoint's config.json (a slice keeps its expert counts, per layer too), so
`--preset` and architecture `--set` keys are refused; the tokenizer defaults to the checkpoint's. Pools
(pool_min/pool_max/eval_pool defaults) scale to the checkpoint's routed experts as for any config. The
model's context (max_position_embeddings) is the checkpoint's, raised to --seq-len if that is longer.
Under FSDP2 (`init_shards_from`) each rank reads one tensor at a time and keeps only its shard of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from emo_slice.errors import UsageError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import load_model
from emo_slice.io.tokenizer import load_tokenizer
from emo_slice.model.config import EmoConfig
from emo_slice.model.hf_names import stacked_to_hf
from emo_slice.train.meta_init import fill_full_tensors


def init_checkpoint(cfg):
    """The Checkpoint that --init-from names, opened and checked (config, tensor shapes)."""
    if cfg.model:
        keys = ", ".join(sorted(cfg.model))
        raise UsageError(
            f"--init-from {cfg.init_from}: the architecture comes from the checkpoint, so --set {keys} cannot "
            "change it; drop those settings (training settings such as lr stay free)"
        )
    return Checkpoint(cfg.init_from)


def init_config(cfg, eos: int | None = None, pad: int | None = None) -> EmoConfig:
    """The checkpoint's EmoConfig with the tokenizer's special ids and a context of at least --seq-len."""
    mcfg = EmoConfig.from_dict(init_checkpoint(cfg).config.to_dict())
    if eos is not None:
        mcfg.eos_token_id = eos
    if pad is not None:
        mcfg.pad_token_id = pad
    mcfg.max_position_embeddings = max(mcfg.max_position_embeddings or 0, cfg.seq_len)
    mcfg.output_router_logits = False
    return mcfg


def init_tokenizer_spec(cfg) -> str:
    """--tokenizer for a run started from a checkpoint: the one given, else the checkpoint's own."""
    if cfg.tokenizer != "auto":
        return cfg.tokenizer
    path = init_checkpoint(cfg).path
    return "bytes" if load_tokenizer(path).kind == "byte-level" else str(path)


def init_weights_from(cfg, mcfg: EmoConfig) -> torch.nn.Module:
    """The checkpoint's weights in float32 (training keeps fp32 master weights), config `mcfg`: the whole model,
    for one process or DDP (FSDP2 runs use `init_shards_from`)."""
    model = load_model(Path(init_checkpoint(cfg).path), dtype=torch.float32)  # one copy of the weights
    model.config = mcfg  # the layers are the checkpoint's; only the model-level config (ids, context) is read
    return model


def init_shards_from(cfg, mcfg: EmoConfig) -> Callable[[torch.nn.Module], None]:
    """A fill for meta_init.build_sharded: the checkpoint's weights, read one parameter at a time (a stacked
    expert parameter from its per-expert tensors) as float32 into a CPU tensor whose shard this rank keeps.
    The model ends in eval mode, as `init_weights_from` leaves it."""
    ckpt = init_checkpoint(cfg)  # opened and checked: every tensor config.json implies, with its shape

    def write(name: str, full: torch.Tensor) -> None:
        for hf_name, part in stacked_to_hf({name: full}, mcfg):  # views of `full`: read straight into them
            ckpt.read_into(hf_name, part)

    fill = fill_full_tensors(write)

    def fill_eval(model: torch.nn.Module) -> None:
        fill(model)
        model.eval()

    return fill_eval
