"""Building models from checkpoints: whole (`load_model`) or one layer at a time (`LayerwiseModel`), on a device.

Tensors are read one at a time with plain file reads straight into the parameters (no memory map), so
a checkpoint larger than memory runs through `LayerwiseModel`: one decoder layer's weights at a time,
the next layer read (and, on a GPU, copied) in a background thread while the current one runs.
`choose_placement` decides between the two: the whole model on the device when its weights fit in the
device's free memory (or in `max_memory`, the user's cap) with a margin, else layer streaming.

Weights are held at the checkpoint's stored dtype when it is narrower than the compute dtype (a bfloat16
checkpoint run in float32 on a CPU holds bfloat16) and cast where they are used (model/modeling.py), so
memory is what the checkpoint weighs, not twice that; the logits equal those of a float32 copy.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import torch
from torch.overrides import TorchFunctionMode

from emo_slice.errors import CheckpointError, UsageError
from emo_slice.io.checkpoint import Checkpoint, parse_dtype
from emo_slice.model.config import EmoConfig
from emo_slice.model.context import make_context
from emo_slice.model.hf_names import expected_hf_names, layer_tensors, model_tensors
from emo_slice.model.modeling import DecoderLayer, EmoForCausalLM, RMSNorm, cast_linear
from emo_slice.model.modeling import norm as make_norm

DEVICE, STREAMED = "device", "streamed"  # placements: the whole model on the device, or layer streaming
MARGIN_FRACTION, MARGIN_BYTES = 0.20, 1 << 30  # kept free besides the weights: activations, workspace


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _give_back_memory() -> None:
    """Return freed heap memory to the system (glibc): a layer freed while the prefetch thread allocates the
    next one otherwise stays in the process, and streaming would creep past two layers."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


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


class _NoInit(TorchFunctionMode):
    """Skip parameter initialisation while a module is built on the meta device: the weights come from the
    checkpoint, and a random init of a meta tensor runs torch's Python reference kernels, whose first use
    imports torch._dynamo (seconds). Thread-local, like every torch function mode."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init" or func in (
            torch.Tensor.normal_,
            torch.Tensor.uniform_,
        ):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _empty(module_fn: Callable[[], torch.nn.Module], dtype: torch.dtype, device="cpu") -> torch.nn.Module:
    """The module with uninitialised parameters of `dtype` on `device` (built on the meta device first)."""
    with torch.device("meta"), _NoInit():
        m = module_fn()
    return m.to(dtype).to_empty(device=device)


# ---- devices and placement ---------------------------------------------------------------------------


def default_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype: `dtype` when given, else bfloat16 on a CUDA GPU and float32 elsewhere."""
    return parse_dtype(dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)


def weight_dtype(stored: torch.dtype, compute: torch.dtype) -> torch.dtype:
    """The dtype weights are held at: the stored one where it is narrower than the compute dtype (cast where
    used), else the compute dtype (cast once, on loading)."""
    narrower = stored.is_floating_point and stored.itemsize < compute.itemsize
    return stored if narrower else compute


def weight_bytes(ckpt: Checkpoint, dtype: torch.dtype) -> int:
    """Bytes the model's weights take when run at the compute dtype (held at `weight_dtype`; a tied head
    counted once)."""
    return ckpt.param_counts()["total"] * weight_dtype(ckpt.stored_dtype, dtype).itemsize


def layer_bytes(ckpt: Checkpoint, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes of the largest decoder layer, bytes of the embedding, final norm and head) held for `dtype`."""
    size = weight_dtype(ckpt.stored_dtype, dtype).itemsize
    per_layer = [0] * ckpt.config.num_hidden_layers
    outer = 0
    for name in ckpt.names():
        n = math.prod(ckpt.info(name).shape)
        parts = name.split(".")
        if name.startswith("model.layers.") and parts[2].isdigit() and int(parts[2]) < len(per_layer):
            per_layer[int(parts[2])] += n * size
        else:
            outer += n * size
    return max(per_layer, default=0), outer


def free_memory(device: torch.device) -> int | None:
    """Free bytes on the device (None: unknown): CUDA's mem_get_info, the CPU's MemAvailable."""
    if device.type == "cuda":  # free, plus what torch's caching allocator holds but no tensor uses
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    if device.type == "mps":
        mps = getattr(torch, "mps", None)
        if mps is None or not hasattr(mps, "recommended_max_memory"):
            return None
        return mps.recommended_max_memory() - mps.current_allocated_memory()
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def choose_placement(
    ckpt: Checkpoint, dtype: torch.dtype, device: torch.device, layerwise: bool = False, max_memory: int | None = None
) -> dict:
    """{"placement": "device" | "streamed", "prefetch", "weight_bytes", "free_bytes"}: the whole model on the
    device when its weights plus a margin (20%, at least 1 GiB, for activations) fit in `max_memory` bytes when
    given, else in the device's free memory; otherwise (or with layerwise) one layer at a time, with the next
    layer read ahead when two layers, the embedding and the head fit (else without). A `max_memory` that
    cannot hold one layer, the embedding and the head plus 1 GiB: UsageError."""
    need, free = weight_bytes(ckpt, dtype), (max_memory if max_memory is not None else free_memory(device))
    fits = free is None or need + max(MARGIN_FRACTION * need, MARGIN_BYTES) <= free
    out = {"placement": STREAMED if layerwise or not fits else DEVICE, "weight_bytes": need, "free_bytes": free}
    layer, outer = layer_bytes(ckpt, dtype)
    if max_memory is not None and out["placement"] == STREAMED and layer + outer + MARGIN_BYTES > max_memory:
        least = layer + outer + MARGIN_BYTES
        raise UsageError(
            f"--max-memory {_gb(max_memory)} cannot hold one layer of {ckpt.path} ({_gb(layer)}) with its embedding "
            f"and head ({_gb(outer)}) and 1 GiB to work in; give at least --max-memory {math.ceil(least / 1e9 * 10) / 10}GB"
        )
    out["prefetch"] = free is None or out["placement"] == DEVICE or 2 * layer + outer + MARGIN_BYTES <= free
    return out


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


# ---- whole model, one layer --------------------------------------------------------------------------


def load_model(
    path_or_id: str | os.PathLike | Checkpoint,
    dtype: str | torch.dtype | None = None,
    device=None,
    *,
    stored_weights: bool = False,
) -> EmoForCausalLM:
    """Load a whole EMO checkpoint (local folder or Hub id) into an `EmoForCausalLM`, in eval mode.

    dtype: compute dtype ("float32", "bfloat16", ...); default the checkpoint's stored dtype.
    device: where the parameters live (default the CPU). Tensors are read one at a time, straight into
    the parameters on the CPU, or into a host tensor copied to the device.
    stored_weights: hold the weights at the stored dtype where it is narrower than `dtype` (`weight_dtype`),
    cast where used: a bfloat16 checkpoint run in float32 takes half the memory, with the same logits.
    """
    ckpt = _open(path_or_id)
    _check_names(ckpt)
    dt = parse_dtype(dtype) or ckpt.stored_dtype
    wdt = weight_dtype(ckpt.stored_dtype, dt) if stored_weights else dt
    dev = torch.device(device) if device is not None else torch.device("cpu")
    model = _empty(lambda: EmoForCausalLM(ckpt.config), wdt, dev)
    if ckpt.config.tie_word_embeddings:  # to_empty gives lm_head its own storage: tie it again
        model.lm_head.weight = model.model.embed_tokens.weight
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for ours, e, name in model_tensors(ckpt.config):
            target = params[ours].data if e is None else params[ours].data[e]
            if dev.type == "cpu":
                ckpt.read_into(name, target)
            else:
                target.copy_(ckpt.get(name))
    model.compute_dtype = dt
    return model.eval()


def load_layer(ckpt: Checkpoint, layer: int, dtype: torch.dtype, pin: bool = False) -> DecoderLayer:
    """One decoder layer with its weights at `dtype`, read from the checkpoint straight into its parameters
    (on the CPU; pin: in pinned memory, ready for an asynchronous copy to a GPU)."""
    mod = _empty(lambda: DecoderLayer(ckpt.config, layer), dtype)  # untouched pages: no memory until written
    if pin:
        for p in mod.parameters():
            p.data = torch.empty(p.shape, dtype=p.dtype, pin_memory=True)
    params = dict(mod.named_parameters())
    with torch.no_grad():
        for ours, e, name, _ in layer_tensors(ckpt.config, layer):  # the family's tensor names (model/hf_names.py)
            ckpt.read_into(name, params[ours].data if e is None else params[ours].data[e])
    return mod.eval()


def open_model(
    path_or_ckpt, dtype=None, device="cpu", *, layerwise: bool = False, max_memory: int | None = None
) -> LayerwiseModel:
    """A `LayerwiseModel` placed by `choose_placement`: resident when it fits (in max_memory bytes when
    given, else in the device's free memory), else streamed (with read-ahead when two layers fit)."""
    ckpt = _open(path_or_ckpt)
    dev = torch.device(device)
    dt = default_dtype(dtype, dev)
    place = choose_placement(ckpt, dt, dev, layerwise, max_memory)
    return LayerwiseModel(ckpt, dt, dev, resident=place["placement"] == DEVICE, prefetch=place["prefetch"])


# ---- layer by layer ------------------------------------------------------------------------------------


class LayerwiseModel:
    """Run a checkpoint layer by layer on a device: `hidden_states(batches)` pushes every batch through layer
    l before layer l+1 runs; its results equal the whole model's (the same `DecoderLayer.forward` runs).

    Streamed (the default): the final norm and the head stay on the device once used (the embedding too
    when the head is tied to it; otherwise it is read for each pass and dropped); decoder layer l+1 is read
    from the safetensors files by a background thread (into pinned memory and copied to the GPU with
    non_blocking=True on a side CUDA stream, ordered by an event) while layer l runs, so at most two layers
    are resident (one with prefetch=False). resident=True: the whole model is loaded on the device once and
    its layers run in the same loop (placement "device"). This is the only layer loop: profile, eval and
    generation use it. Weights are held at `weight_dtype(stored, dtype)` and computed in `dtype`.
    """

    def __init__(
        self,
        path_or_ckpt,
        dtype: str | torch.dtype | None = None,
        device=None,
        *,
        resident: bool = False,
        prefetch: bool = True,
    ):
        self.ckpt = _open(path_or_ckpt)
        _check_names(self.ckpt)
        self.config: EmoConfig = self.ckpt.config
        self.dtype = parse_dtype(dtype) or self.ckpt.stored_dtype
        self.weight_dtype = weight_dtype(self.ckpt.stored_dtype, self.dtype)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.prefetch = prefetch
        self.model = load_model(self.ckpt, self.dtype, self.device, stored_weights=True) if resident else None
        self._side = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None
        self._embed_w: torch.Tensor | None = None
        self._head: tuple[RMSNorm, torch.Tensor] | None = None

    @property
    def placement(self) -> str:
        return DEVICE if self.model is not None else STREAMED

    def _embedding(self) -> torch.Tensor:
        """The embedding on the device: kept when the head is tied to it, else read anew (the caller drops it)."""
        if self._embed_w is not None:
            return self._embed_w
        w = self.ckpt.get("model.embed_tokens.weight", self.weight_dtype).to(self.device)
        if self.config.tie_word_embeddings:
            self._embed_w = w
        return w

    def embed(self, input_ids_BT: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        input_ids_BT = input_ids_BT.to(self.device)
        if self.model is not None:
            return self.model.embed(input_ids_BT)
        w = self._embedding() if weight is None else weight
        return torch.nn.functional.embedding(input_ids_BT, w).to(self.dtype)

    def layer(self, l: int) -> DecoderLayer:
        """Decoder layer l on the device (read now, without prefetch)."""
        return self._ready(*self._fetch(l))

    def head(self, x_BTD: torch.Tensor) -> torch.Tensor:
        if self.model is not None:
            return self.model.head(x_BTD)
        if self._head is None:
            norm = _empty(lambda: make_norm(self.config, self.config.hidden_size), self.weight_dtype, self.device)
            with torch.no_grad():
                norm.weight.copy_(self.ckpt.get("model.norm.weight"))
            tied = self.config.tie_word_embeddings
            w = self._embedding() if tied else self.ckpt.get("lm_head.weight", self.weight_dtype).to(self.device)
            self._head = (norm, w)
        norm, w = self._head
        return cast_linear(norm(x_BTD), w)

    # ---- the stream of layers ----
    def _fetch(self, l: int) -> tuple[DecoderLayer, torch.cuda.Event | None]:
        """Layer l read from the files (in the prefetch thread): on a GPU copied asynchronously on the side
        stream, with the event that marks the copy done."""
        if self.device.type != "cuda":
            return load_layer(self.ckpt, l, self.weight_dtype), None
        host = load_layer(self.ckpt, l, self.weight_dtype, pin=True)
        with torch.cuda.stream(self._side):
            layer = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        return layer, done

    def _ready(self, layer: DecoderLayer, done) -> DecoderLayer:
        """The fetched layer, usable on the compute stream (which waits for its copy)."""
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            for t in layer.parameters():
                t.record_stream(stream)  # allocated on the side stream, used on this one
        elif self.device.type != "cpu":
            layer = layer.to(self.device)
        return layer

    def _layers(self) -> Iterator[tuple[int, DecoderLayer]]:
        """(l, layer) for every decoder layer; the next one is fetched while the caller runs this one.

        At most two layers are resident: the one yielded and the one being fetched (the caller drops its
        reference before asking for the next)."""
        L = self.config.num_hidden_layers
        if self.model is not None:
            yield from enumerate(self.model.model.layers)
            return
        if not self.prefetch:
            for l in range(L):
                yield l, self.layer(l)
                if self.device.type == "cpu":
                    _give_back_memory()
            return
        with ThreadPoolExecutor(1, thread_name_prefix="emo-slice-prefetch") as pool:
            pending = pool.submit(self._fetch, 0)
            for l in range(L):
                layer, done = pending.result()
                pending = pool.submit(self._fetch, l + 1) if l + 1 < L else None
                yield l, self._ready(layer, done)
                del layer  # the caller has dropped it too: freed now
                if self.device.type == "cpu":
                    _give_back_memory()

    @torch.no_grad()
    def hidden_states(
        self,
        batches: Iterable[torch.Tensor | dict],
        *,
        trace: Callable | None = None,
        expert_norms: bool = False,
        after_layer: Callable | None = None,
        progress: Callable[[int, int, float], None] | None = None,
        n_tokens: int | None = None,
    ) -> list[torch.Tensor]:
        """Final hidden states (before the norm) of every batch, computed layer by layer, on the device.

        batches: input_ids [B, T] tensors, or dicts of `make_context` inputs (input_ids_BT, position_ids_BT,
        attention_mask, document_ids_BT, cache, pool_size), on any device. Hooks, per layer: trace(batch
        index, LayerTrace) for every batch; then after_layer(l, layer) may return a replacement DecoderLayer
        (e.g. the layer sliced), through which the batches are run again, untraced, to give the next layer
        its input. progress(layers done, layers, tokens done) is called before the first layer and after
        each, tokens done = n_tokens (default all, padding included) times the share of layers done.
        """
        inputs = [self._on_device(b if isinstance(b, dict) else {"input_ids_BT": b}) for b in batches]
        w = self._embedding() if self.model is None else None  # read once for all batches
        xs = [self.embed(i["input_ids_BT"], w) for i in inputs]
        del w
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
        total = sum(i["input_ids_BT"].numel() for i in inputs) if n_tokens is None else n_tokens
        L = self.config.num_hidden_layers
        if progress is not None:
            progress(0, L, 0.0)
        for l, layer in self._layers():
            ys = [layer(x, ctx, l)[0] for x, ctx in zip(xs, ctxs)]
            replacement = after_layer(l, layer) if after_layer is not None else None
            if replacement is not None:
                ys = [replacement(x, ctx.without_trace(), l)[0] for x, ctx in zip(xs, ctxs)]
            xs = ys
            del layer, replacement
            if progress is not None:
                progress(l + 1, L, total * (l + 1) / max(L, 1))
        return xs

    def _on_device(self, inputs: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    @torch.no_grad()
    def forward(self, batches: Iterable[torch.Tensor | dict], **hooks) -> list[torch.Tensor]:
        """Logits of every batch (see hidden_states)."""
        return [self.head(x) for x in self.hidden_states(batches, **hooks)]


__all__ = [
    "open_model",
    "load_model",
    "load_layer",
    "LayerwiseModel",
    "choose_placement",
    "default_dtype",
    "free_memory",
    "weight_bytes",
    "weight_dtype",
    "layer_bytes",
    "DEVICE",
    "STREAMED",
]
