"""Mixed precision for pretraining: bf16 compute, fp32 master weights, the weights cast once per step.

`TrainConfig.dtype` = float32: everything in float32, nothing here does anything.
`dtype` = bfloat16 with `mixed_precision`:
- "step" (default): in one process or under DDP, a bf16 copy of the model (`Precision.module`) runs every
  forward and backward. It is refreshed from the fp32 master weights once per optimizer step (one
  foreach copy), not cast again in every micro-batch and layer as autocast does. Each bf16 gradient is
  added into the master's fp32 `.grad` as soon as backward produces it (a post-accumulate-grad hook), so
  accumulation over micro-batches is in fp32; over ranks the fp32 gradients are averaged once per step
  (one all-reduce of a flat buffer: reduce in fp32). Under FSDP2 the same is FSDP's own
  `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`, set in `distributed.wrap_model`.
  The residual stream is bf16 here (as under FSDP2's policy), fp32 under autocast.
- "autocast": `torch.autocast` over the fp32 weights (the earlier behaviour, kept for comparison).

`compile=True` compiles each decoder layer's attention block and norms (`torch.compile`); the MoE block
(data-dependent shapes: pools, grouped matmuls) stays eager.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from emo_slice.train.distributed import gradient_sync, is_parallel, sum_over_ranks


class Precision:
    """Which module runs the forward, under which autocast, and how its gradients reach the master weights.

    master: the fp32 model the optimizer updates (unwrapped); wrapped: what `wrap_model` made of it
    (DDP / FSDP2 / the master itself). `forward_module()` is the module to call; `grads_ready()` after the
    last backward of a step; `weights_changed()` after every optimizer step or load."""

    def __init__(self, master: nn.Module, wrapped: nn.Module, *, dtype: str, mode: str, fsdp: bool, compile: bool):
        self.master, self.wrapped = master, wrapped
        self.cast_once = dtype == "bfloat16" and mode == "step" and not fsdp
        self.autocast_on = dtype == "bfloat16" and mode == "autocast"
        self.module = None
        if self.cast_once:
            self.module = _bf16_copy(master)
            self._pairs = list(zip(master.parameters(), self.module.parameters()))  # tied weights appear once
            for p_master, p_bf16 in self._pairs:
                if p_bf16.requires_grad:  # a frozen parameter (fine-tuning a part) has no gradient
                    p_bf16.register_post_accumulate_grad_hook(_into_master(p_master))
        self._stale = True
        if compile:
            compile_layers(self.module if self.cast_once else master)

    def forward_module(self) -> nn.Module:
        """The module to call for this forward: the bf16 copy (refreshed if the weights changed since), or
        the wrapped model."""
        if not self.cast_once:
            return self.wrapped
        if self._stale:
            with torch.no_grad():
                bf16, fp32 = [p for _, p in self._pairs], [p for p, _ in self._pairs]
                torch._foreach_copy_(bf16, fp32)  # fp32 -> bf16: the one cast of the weights per step
            self._stale = False
        return self.module

    def autocast(self, device: torch.device):
        if not self.autocast_on:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def gradient_sync(self, sync: bool):
        """Context for one micro-batch's backward: DDP / FSDP2 reduce only on the last one (`sync`)."""
        return contextlib.nullcontext() if self.cast_once else gradient_sync(self.wrapped, sync)

    def grads_ready(self) -> None:
        """After the last backward of a step: average the fp32 master gradients over ranks (cast-once mode;
        DDP and FSDP2 reduce on their own)."""
        if not (self.cast_once and is_parallel()):
            return
        params = [p for p in self.master.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:  # every rank must reduce the same buffer: a parameter no token used gets zeros
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch._utils._flatten_dense_tensors(grads)
        sum_over_ranks(flat).div_(torch.distributed.get_world_size())
        for g, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)

    def weights_changed(self) -> None:
        self._stale = True


def _bf16_copy(master: nn.Module) -> nn.Module:
    """The module with bf16 parameters, made without a transient fp32 copy of the weights (the memo hands
    deepcopy a bf16 parameter for each fp32 one; tied weights stay tied)."""
    memo = {
        id(p): nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=p.requires_grad) for p in master.parameters()
    }
    return copy.deepcopy(master, memo).to(torch.bfloat16)  # .to: any floating buffer


def _into_master(p_master: nn.Parameter):
    def hook(p_bf16: torch.Tensor) -> None:
        g = p_bf16.grad
        if p_master.grad is None:
            p_master.grad = g.float()
        else:
            p_master.grad.add_(g)
        p_bf16.grad = None

    return hook


def compile_layers(model: nn.Module) -> None:
    """torch.compile each decoder layer's attention block and norms in place (the MoE block stays eager)."""
    for layer in model.model.layers:
        for sub in (layer.pre_attention_layernorm, layer.self_attn, layer.pre_feedforward_layernorm):
            sub.compile(dynamic=False)
    model.model.norm.compile(dynamic=False)


def grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to max_norm (<= 0: no clipping); the norm before clipping as a 0-d
    tensor on the device (no host sync)."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
