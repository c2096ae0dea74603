"""Data parallelism: process group set-up from torchrun's variables, collectives, DDP / FSDP2 wrapping.

Everything here is a no-op in a single process (no process group), so the trainer has one code path.
nccl on GPUs, gloo on CPU. A process group the caller opened (tests, notebooks) is used and left open.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from emo_slice.errors import UsageError


def init_distributed(device: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we opened the process group) from torchrun's environment.

    device: 'auto' (cuda if visible), 'cpu' or 'cuda'. Each rank takes the GPU of its LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
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
        return rank, world, torch.device("cuda", local), ours
    return rank, world, torch.device("cpu"), ours


def shutdown(ours: bool) -> None:
    """Close the process group if init_distributed opened it."""
    if ours and dist.is_initialized():
        dist.destroy_process_group()


def is_parallel() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks, in place (no-op in one process)."""
    if is_parallel():
        dist.all_reduce(t)
    return t


def fsdp_active(fsdp: bool) -> bool:
    """Whether wrap_model shards with FSDP2: fsdp asked for, under a process group."""
    return fsdp and dist.is_initialized()


def wrap_model(
    model: torch.nn.Module, *, fsdp: bool, device: torch.device, param_dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """The module to train: FSDP2 `fully_shard` per decoder layer and the whole model (in place, with
    fsdp=True under a process group), DDP over several ranks, else `model` itself. param_dtype (FSDP2 only):
    compute in that dtype, gathered once per forward from the fp32 shards, gradients reduced in fp32."""
    if fsdp_active(fsdp):  # `model` may be on the meta device (meta_init.build_sharded allocates it after)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
        kw = {"mp_policy": mp} if mp is not None else {}
        for layer in model.model.layers:
            fully_shard(layer, **kw)
        fully_shard(model, **kw)
        return model
    if is_parallel():
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def gradient_sync(model: torch.nn.Module, sync: bool):
    """Context for one micro-batch's backward: gradients are reduced over ranks only when `sync`
    (the last micro-batch of a step), for DDP (no_sync) and FSDP2 (set_requires_gradient_sync)."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    if hasattr(model, "no_sync") and not sync:
        return model.no_sync()
    return contextlib.nullcontext()
