"""Torch features newer than the floor in pyproject.toml (torch >= 2.6), each probed, with a fallback.

What sets the floor, feature by feature (the first torch that has it):
  torch.distributed.fsdp.fully_shard (FSDP2, public)             2.6   pretrain --fsdp
  F.scaled_dot_product_attention(enable_gqa=...)                  2.5   attention
  torch.nn.attention.flex_attention                              2.5   document attention (SDPA fallback)
  torch.distributed.fsdp.FSDPModule / MixedPrecisionPolicy        2.6   pretrain --fsdp
  torch.get_autocast_dtype / is_autocast_enabled(device_type)    2.4   mixed precision
  torch.distributed.checkpoint: StorageMeta, save/load(no_dist)  2.4   sharded training state
  torch.distributed.checkpoint.state_dict (get/set_state_dict)   2.2   sharded training state
  torch.compiler.is_compiling                                     2.3   compiled attention
Newer, used only where it works:
  torch._grouped_mm   2.8: CUDA sm90 bfloat16 only (NotImplementedError on the CPU); 2.9: any CUDA sm80+ and
                      the CPU, float32/float16 too, with 16-byte aligned strides.
`grouped_mm_works(device, dtype)` tries it once per (device, dtype) on a small aligned problem and keeps
the answer; where it is missing or fails, the MoE runs one matmul per expert (`expert_mix`'s "loop"),
which gives the same numbers (tests/model/test_devices.py forces it).
"""

from __future__ import annotations

import functools

import torch


def grouped_mm_works(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether torch._grouped_mm runs here for this device and dtype (probed once, then cached)."""
    device = torch.device(device)
    return hasattr(torch, "_grouped_mm") and _probe(device.type, device.index, dtype)


@functools.lru_cache(maxsize=None)
def _probe(device_type: str, index: int | None, dtype: torch.dtype) -> bool:
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    try:
        x_MD = torch.ones(8, 16, dtype=dtype, device=device)
        w_EFD = torch.ones(2, 16, 16, dtype=dtype, device=device)
        offs_E = torch.tensor([4, 8], dtype=torch.int32, device=device)
        out = torch._grouped_mm(x_MD, w_EFD.transpose(-2, -1), offs=offs_E)
        return bool((out.float() == 16.0).all())
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False


__all__ = ["grouped_mm_works"]
