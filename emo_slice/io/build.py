"""Making checkpoints: random ones from a preset (streamed, any size) and from an in-memory model.

`save_model` writes the tokenizer files the ecosystem loads (io/tokenizer.py `write_tokenizer_files`)
and, given a folder of remote code (`configuration_emo.py` + `modeling_emo.py`), copies it in and sets
config.json's `auto_map`; without one, config.json names no remote code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from emo_slice.artifacts import atomic_output_dir, parse_size
from emo_slice.errors import UsageError
from emo_slice.io.checkpoint import parse_dtype
from emo_slice.io.tokenizer import write_tokenizer_files
from emo_slice.io.writer import ShardWriter
from emo_slice.model.config import EmoConfig
from emo_slice.model.hf_names import hf_tensor_shapes
from emo_slice.model.modeling import EmoForCausalLM
from emo_slice.model.presets import preset

GENERATION_CONFIG = {"_from_model_config": True}
REMOTE_CODE = {"AutoConfig": "configuration_emo.EmoConfig", "AutoModelForCausalLM": "modeling_emo.EmoForCausalLM"}


def remote_code_files(folder: str | os.PathLike, flag: str = "--remote-code") -> list[Path]:
    """The remote-code files auto_map names (configuration_emo.py, modeling_emo.py) in folder; refuses a gap."""
    folder = Path(folder).expanduser()
    files = [folder / f"{ref.split('.')[0]}.py" for ref in REMOTE_CODE.values()]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise UsageError(
            f"{flag} {folder} lacks {', '.join(missing)}; give the folder holding AllenAI's "
            "configuration_emo.py and modeling_emo.py"
        )
    return files


def write_side_files(folder: Path, cfg: EmoConfig) -> None:
    cfg.save(folder / "config.json")
    gen = dict(GENERATION_CONFIG, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    if cfg.bos_token_id is not None:
        gen["bos_token_id"] = cfg.bos_token_id
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def random_checkpoint(
    out: str | os.PathLike,
    preset_or_config: str | EmoConfig = "tiny",
    *,
    seed: int = 0,
    std: float = 0.1,
    dtype: str = "float32",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write a random EMO checkpoint one tensor at a time (memory: one tensor), atomically."""
    cfg = preset(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    dt = parse_dtype(dtype)
    cfg.torch_dtype = str(dt).replace("torch.", "")
    max_bytes = parse_size(max_shard_size)
    with atomic_output_dir(out, overwrite=overwrite, flag="--out") as tmp:
        w = ShardWriter(tmp, max_bytes, {"created_by": "emo-slice init", "seed": seed})
        for i, (name, shape) in enumerate(hf_tensor_shapes(cfg).items()):

            def make(shape=shape, name=name, i=i):
                g = torch.Generator().manual_seed(seed * 1_000_003 + i)
                t = torch.randn(shape, generator=g)
                t = 1.0 + 0.1 * t if name.endswith("norm.weight") else t * std
                return t.to(dt)

            w.add(name, make, dtype=dt, shape=shape)
        w.finish()
        write_side_files(tmp, cfg)
    return Path(out)


def save_model(
    model: EmoForCausalLM,
    out: str | os.PathLike,
    *,
    max_shard_size: str | int = "5GB",
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
    tokenizer=None,
    metadata: dict | None = None,
    extra_files: dict[str, str] | None = None,
    remote_code: str | os.PathLike | None = None,
) -> Path:
    """Write an in-memory model as an EMO checkpoint folder (HF layout), atomically.

    tokenizer: written with tokenizer_config.json and special_tokens_map.json. remote_code: a folder with
    configuration_emo.py and modeling_emo.py, copied in and named by config.json's auto_map (without it,
    config.json has no auto_map: it never names files the folder does not hold)."""
    cfg = EmoConfig.from_dict(model.config.to_dict())
    dt = parse_dtype(dtype) or next(model.parameters()).dtype
    cfg.torch_dtype = str(dt).replace("torch.", "")
    cfg.output_router_logits = False
    code = remote_code_files(remote_code) if remote_code is not None else []
    cfg.extra.pop("auto_map", None)
    if code:
        cfg.extra["auto_map"] = dict(REMOTE_CODE)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        w = ShardWriter(tmp, parse_size(max_shard_size), metadata)
        for name, t in model.hf_state_dict():
            w.add(name, lambda t=t: t.detach().to(dt).contiguous(), dtype=dt, shape=tuple(t.shape))
        w.finish()
        write_side_files(tmp, cfg)
        if tokenizer is not None:
            write_tokenizer_files(tmp, tokenizer, cfg)
        for src in code:
            shutil.copy2(src, tmp / src.name)
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
    return Path(out)
