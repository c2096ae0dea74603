"""Generation speed: greedy decoding with the KV cache (`emo_slice.generate`) against a full forward pass
over the whole sequence at every step, on the same left-padded prompts of a random model. The greedy
tokens must be the same (asserted in float32; in bfloat16 the two paths round differently, so the first
step where they part, if any, is reported instead).

    python examples/bench_generate.py                                   (tiny model, CPU, float32)
    python examples/bench_generate.py --size release --device cuda --dtype bfloat16

--size tiny / small: the presets of that name; release: AllenAI's release width (hidden 2048, 128
experts, top 8 + shared, vocab 100352) with --layers decoder layers (default 4). tokens/s counts the
new tokens of every row; the prompt pass is included in both timings. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from emo_slice.model.devices import resolve_device
from emo_slice.model.generation import generate, left_pad
from emo_slice.model.modeling import EmoForCausalLM
from emo_slice.model.presets import preset

SIZES = {"tiny": ("tiny", None), "small": ("small", None), "release": ("emo-1b14b", 4)}


def build(size: str, layers: int | None, device: torch.device, dtype: torch.dtype, seed: int) -> EmoForCausalLM:
    """A random model made directly on the device in the compute dtype (matrices normal(0, 0.02), norms 1)."""
    name, default_layers = SIZES[size]
    n = layers or default_layers
    cfg = preset(name, **({"num_hidden_layers": n} if n else {}))
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = EmoForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model.eval()


@torch.no_grad()
def greedy_full_forward(model, ids_BT: torch.Tensor, mask_BT: torch.Tensor, n: int) -> torch.Tensor:
    """n greedy tokens [B, n], each from a forward pass over the whole (left-padded) sequence so far; only
    the last position goes through the output head."""
    new = []
    for _ in range(n):
        pos_BT = (mask_BT.cumsum(-1) - 1).clamp_min(0)
        x_BTD = model.hidden_states(ids_BT, position_ids_BT=pos_BT, attention_mask=mask_BT)
        tok_B = model.head(x_BTD[:, -1:])[:, 0].argmax(-1)
        new.append(tok_B)
        ids_BT = torch.cat([ids_BT, tok_B[:, None]], dim=1)
        mask_BT = torch.cat([mask_BT, torch.ones_like(mask_BT[:, :1])], dim=1)
    return torch.stack(new, dim=1)


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the preset's; release: 4)")
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--batch", type=int, default=4, help="prompts per batch")
    ap.add_argument("--prompt-len", type=int, default=128, help="the longest prompt (others down to half of it)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each path (the best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    model = build(args.size, args.layers, device, dtype, args.seed)
    cfg = model.config
    g = torch.Generator().manual_seed(args.seed)
    lens = torch.linspace(args.prompt_len // 2, args.prompt_len, args.batch).long().tolist()
    prompts = [torch.randint(2, cfg.vocab_size, (n,), generator=g).tolist() for n in lens]
    ids_BT, mask_BT = left_pad(prompts, cfg.pad_token_id or 0, device)
    T, n = ids_BT.shape[1], args.new_tokens

    generate(model, ids_BT[:, -8:], 2, attention_mask=mask_BT[:, -8:])  # warm-up (kernels, allocator)
    greedy_full_forward(model, ids_BT[:, -8:], mask_BT[:, -8:], 2)
    cached, nocache = [], []
    for _ in range(args.repeats):
        out, s = timed(lambda: generate(model, ids_BT, n, attention_mask=mask_BT), device)
        cached.append(s)
        ref, s = timed(lambda: greedy_full_forward(model, ids_BT, mask_BT, n), device)
        nocache.append(s)
    got = out[:, T:]
    equal = bool(torch.equal(got, ref))
    differ = (got != ref).any(0).nonzero()
    first_divergence = int(differ[0]) if len(differ) else None
    if args.dtype == "float32":
        assert equal, f"cache and full-forward greedy tokens differ from step {first_divergence}"
    new_tokens = args.batch * n
    fig = {
        "bench": "generate",
        "size": args.size,
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "experts": cfg.num_experts,
        "top_k": cfg.num_experts_per_tok,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "prompt_tokens": lens,
        "new_tokens_per_row": n,
        "kv_cache_tokens_per_s": round(new_tokens / min(cached), 1),
        "full_forward_tokens_per_s": round(new_tokens / min(nocache), 1),
        "speedup": round(min(nocache) / min(cached), 2),
        "greedy_tokens_equal": equal,
        "first_divergence": first_divergence,
        "torch": torch.__version__,
    }
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
