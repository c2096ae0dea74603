"""Building models from checkpoints: whole (`load_model`) or one layer at a time (`LayerwiseModel`).

Tensors are read one at a time with plain file reads straight into the parameters (no memory map), so
a checkpoint larger than memory runs through `LayerwiseModel`: one decoder layer's weights at a time.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Iterable

import torch

from emo_slice.errors import CheckpointError
from emo_slice.io.checkpoint import Checkpoint, parse_dtype
from emo_slice.model.config import EmoConfig
from emo_slice.model.context import make_context
from emo_slice.model.hf_names import expected_hf_names, hf_to_stacked_view
from emo_slice.model.modeling import DecoderLayer, EmoForCausalLM, RMSNorm


def _open(path_or_ckpt) -> Checkpoint:
    return path_or_ckpt if isinstance(path_or_ckpt, Checkpoint) else Checkpoint(path_or_ckpt)


def _check_names(ckpt: Checkpoint) -> None:
    want = expected_hf_names(ckpt.config)
    missing = [n for n in want if n not in ckpt]
    if missing:
        raise CheckpointError(
            f"{ckpt.path} lacks {len(missing)} tensors that config.json implies (first: {missing[0]}); "
            "the checkpoint is incomplete or config.json belongs to another model"
        )


def _empty(module_fn: Callable[[], torch.nn.Module], dtype: torch.dtype) -> torch.nn.Module:
    with torch.device("meta"):
        m = module_fn()
    return m.to_empty(device="cpu").to(dtype)


def load_model(path_or_id: str | os.PathLike | Checkpoint, dtype: str | torch.dtype | None = None) -> EmoForCausalLM:
    """Load a whole EMO checkpoint (local folder or Hub id) into an `EmoForCausalLM`, in eval mode.

    dtype: compute dtype ("float32", "bfloat16", ...); default the checkpoint's stored dtype.
    Tensors are read one at a time, straight into the parameters.
    """
    ckpt = _open(path_or_id)
    _check_names(ckpt)
    dt = parse_dtype(dtype) or ckpt.stored_dtype
    model = _empty(lambda: EmoForCausalLM(ckpt.config), dt)
    if ckpt.config.tie_word_embeddings:  # to_empty gives lm_head its own storage: tie it again
        model.lm_head.weight = model.model.embed_tokens.weight
    for name in expected_hf_names(ckpt.config):
        target = hf_to_stacked_view(model, name)
        ckpt.read_into(name, target)
    model.source = ckpt  # type: ignore[attr-defined]
    return model.eval()


def load_layer(ckpt: Checkpoint, layer: int, dtype: torch.dtype) -> DecoderLayer:
    """One decoder layer with its weights, read from the checkpoint straight into its parameters."""
    mod = _empty(lambda: DecoderLayer(ckpt.config, layer), dtype)
    p = f"model.layers.{layer}."
    kinds = {"mlp.w_gate_EFD": "gate", "mlp.w_up_EFD": "up", "mlp.w_down_EDF": "down"}
    with torch.no_grad():
        for name, param in mod.named_parameters():
            if name in kinds:
                for e in range(param.shape[0]):
                    ckpt.read_into(f"{p}mlp.experts.{e}.{kinds[name]}_proj.weight", param.data[e])
            else:
                ckpt.read_into(p + name, param.data)
    return mod.eval()


class LayerwiseModel:
    """Run a checkpoint layer by layer, holding one decoder layer's weights at a time.

    The embedding, each `DecoderLayer` and the head are read from the checkpoint only while they run,
    then released: peak memory is about one layer plus the activations. `hidden_states(batches)` pushes
    every batch through layer l before layer l+1 is read; its results equal the whole model's (the same
    `DecoderLayer.forward` runs). This is the only streaming loop: profile and eval use it.
    """

    def __init__(self, path_or_ckpt, dtype: str | torch.dtype | None = None):
        self.ckpt = _open(path_or_ckpt)
        _check_names(self.ckpt)
        self.config: EmoConfig = self.ckpt.config
        self.dtype = parse_dtype(dtype) or self.ckpt.stored_dtype

    def embed(self, input_ids_BT: torch.Tensor) -> torch.Tensor:
        w = self.ckpt.get("model.embed_tokens.weight", self.dtype)
        return torch.nn.functional.embedding(input_ids_BT, w)

    def layer(self, l: int) -> DecoderLayer:
        return load_layer(self.ckpt, l, self.dtype)

    def head(self, x_BTD: torch.Tensor) -> torch.Tensor:
        norm = RMSNorm(self.config.hidden_size, self.config.rms_norm_eps).to(self.dtype)
        with torch.no_grad():
            norm.weight.copy_(self.ckpt.get("model.norm.weight"))
        name = "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"
        return torch.nn.functional.linear(norm(x_BTD), self.ckpt.get(name, self.dtype))

    @torch.no_grad()
    def hidden_states(
        self,
        batches: Iterable[torch.Tensor | dict],
        *,
        trace: Callable | None = None,
        expert_norms: bool = False,
        after_layer: Callable | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[torch.Tensor]:
        """Final hidden states (before the norm) of every batch, computed layer by layer.

        batches: input_ids [B, T] tensors, or dicts of `make_context` inputs (input_ids_BT, position_ids_BT,
        attention_mask, document_ids_BT, pool_size). Hooks, per layer: trace(batch index, LayerTrace) for
        every batch; then after_layer(l, layer) may return a replacement DecoderLayer (e.g. the layer
        sliced), through which the batches are run again, untraced, to give the next layer its input.
        """
        inputs = [b if isinstance(b, dict) else {"input_ids_BT": b} for b in batches]
        xs = [self.embed(i["input_ids_BT"]) for i in inputs]
        ctxs = [
            make_context(
                self.config,
                dtype=self.dtype,
                expert_norms=expert_norms,
                **i,
                trace=None if trace is None else functools.partial(trace, b),
            )
            for b, i in enumerate(inputs)
        ]
        for l in range(self.config.num_hidden_layers):
            layer = self.layer(l)
            ys = [layer(x, ctx, l)[0] for x, ctx in zip(xs, ctxs)]
            replacement = after_layer(l, layer) if after_layer is not None else None
            if replacement is not None:
                ys = [replacement(x, ctx.without_trace(), l)[0] for x, ctx in zip(xs, ctxs)]
            xs = ys
            del layer, replacement
            if progress is not None:
                progress(l)
        return xs

    @torch.no_grad()
    def forward(self, batches: Iterable[torch.Tensor | dict], **hooks) -> list[torch.Tensor]:
        """Logits of every batch (see hidden_states)."""
        return [self.head(x) for x in self.hidden_states(batches, **hooks)]


__all__ = ["load_model", "load_layer", "LayerwiseModel"]
