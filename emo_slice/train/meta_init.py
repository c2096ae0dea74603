"""FSDP2 without a whole model on any rank: build on the meta device, shard, allocate the shards, fill them.

Today's single-process and DDP path builds the whole `EmoForCausalLM` in fp32 on every rank, then wraps it.
Under FSDP2 that is the full model per rank before sharding (56 GB at 14B parameters), so `build_sharded`
does what torchtitan does instead: the model is built on the meta device (no storage), `fully_shard`ed by the
caller's `shard` (distributed.wrap_model), given empty shards with `to_empty`, and filled one parameter at a
time: the full tensor is made on the CPU (peak: one parameter), and this rank's slice of it (FSDP2's
Shard(0) split: `torch.chunk`, trailing ranks possibly empty) is copied into the DTensor's local shard.

Fills: `fill_random` gives exactly `init_weights(EmoForCausalLM(cfg), std, seed)` (it runs `init_weights`
itself, on one full tensor at a time: same generator, same draw order, same values); `fill_full_tensors`
takes any `(name, full tensor) -> None` writer (init_from.py reads a checkpoint with it).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from emo_slice.io.loading import _NoInit
from emo_slice.model.config import EmoConfig
from emo_slice.model.modeling import EmoForCausalLM, init_weights


def build_sharded(
    mcfg: EmoConfig, shard: Callable[[nn.Module], nn.Module], device: torch.device, fill: Callable[[nn.Module], None]
) -> nn.Module:
    """The model of `mcfg`, sharded by `shard` while its parameters are on the meta device, then allocated on
    `device` (each rank its shards only) and filled by `fill(model)` (fill_random, or a checkpoint reader)."""
    with torch.device("meta"), _NoInit():
        model = EmoForCausalLM(mcfg)
    model = shard(model)
    model.to_empty(device=device)
    if any(True for _ in model.buffers()):  # the model computes RoPE per forward; a buffer would need recomputing
        raise RuntimeError("EmoForCausalLM now has buffers: build_sharded must recompute them after to_empty")
    if mcfg.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight:
        raise RuntimeError("to_empty untied lm_head.weight from embed_tokens.weight under FSDP2")
    with torch.no_grad():
        fill(model)
    return model


def local_part(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's part of `full` for `param` (a DTensor sharded by FSDP2, or a plain tensor: all of it).

    Each Shard(d) placement splits as DTensor and FSDP2 do: `torch.chunk` over the mesh dimension's ranks, a
    rank past the last chunk holding an empty slice (FSDP2's padding lives beyond the local tensor's view)."""
    from torch.distributed.tensor import Replicate, Shard

    mesh, placements = getattr(param, "device_mesh", None), getattr(param, "placements", ())
    part = full
    for mesh_dim, placement in enumerate(placements):
        if type(placement) is Replicate:
            continue
        if type(placement) is not Shard:  # e.g. _StridedShard: not what fully_shard gives here
            raise NotImplementedError(f"cannot fill a parameter placed as {placement}")
        chunks = torch.chunk(part, mesh.size(mesh_dim), dim=placement.dim)
        i = mesh.get_local_rank(mesh_dim)
        part = chunks[i] if i < len(chunks) else part.narrow(placement.dim, 0, 0)
    return part


def copy_shard(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this rank's part of `full` (the whole parameter, on the CPU) into `param`'s local storage."""
    local = param.to_local() if hasattr(param, "to_local") else param
    part = local_part(full, param)
    if part.shape != local.shape:
        raise RuntimeError(f"shard of shape {tuple(part.shape)} does not fit the local tensor {tuple(local.shape)}")
    local.copy_(part)


def _full_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, an empty full-size CPU tensor) per parameter in named_parameters order; once the consumer has
    filled one and asks for the next, the filled tensor's shard goes into the model and the tensor is freed."""
    for name, p in model.named_parameters():
        full = torch.empty(p.shape, dtype=p.dtype)
        yield name, full
        copy_shard(p, full)


class _OneAtATime:
    """Stands in for the model where only `named_parameters()` is read: full tensors, one alive at a time."""

    def __init__(self, model: nn.Module):
        self.model = model

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return _full_tensors(self.model)


def fill_random(std: float, seed: int | None) -> Callable[[nn.Module], None]:
    """A fill giving exactly init_weights(model, std, seed)'s weights: init_weights itself runs over full
    tensors one parameter at a time (the same seeded generator draws them in the same order)."""
    return lambda model: init_weights(_OneAtATime(model), std, seed)  # type: ignore[arg-type]


def fill_full_tensors(write: Callable[[str, torch.Tensor], None]) -> Callable[[nn.Module], None]:
    """A fill that calls write(name, full) for each parameter (full: an empty CPU tensor of its whole shape)."""

    def fill(model: nn.Module) -> None:
        for name, full in _full_tensors(model):
            write(name, full)

    return fill
