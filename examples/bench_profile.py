"""profile's peak memory on a checkpoint larger than a quarter of the machine's RAM.

Builds a float32 checkpoint of 8 wide MoE layers (hidden 1024, expert hidden 1024, 64 experts, 1
shared, top-8; ~0.8 GB a layer, ~6.5 GB in all, more than a quarter of a 24 GB machine), then runs
`profile` on a 5-shot prompt of a multiple-choice task in a child process and reads its peak RSS
(ru_maxrss). The model streams layer by layer (--layerwise: the running layer and the next one, read
by the prefetch thread meanwhile, plus the activations), so peak RSS is about two to three layers' worth
whatever the number of layers: 40% of this 8-layer checkpoint (2.9 layers above the import floor; the
target of < 25% held, at 21%, before the prefetch, which holds a second layer). The release (16 layers
of 3.2 GB, 54 GB) has a smaller layer/checkpoint ratio (1/16 vs 1/8 here): projected ~9.6 GB, 18%.

    python examples/bench_profile.py                  # ~6.5 GB checkpoint, ~3 minutes on 2 cores
    python examples/bench_profile.py --layers 4       # half the size, to see RSS not grow with layers

Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch, emo_slice
from emo_slice.slicing.profile import ProfileSettings, profile_model
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
p = profile_model(sys.argv[1], ProfileSettings(examples=sys.argv[2], shots=5, device="cpu", layerwise=True))
print(json.dumps({"seconds": time.perf_counter() - t, "tokens": p["tokens"],
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rss_after_import_kb": base}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument(
        "--task",
        default=None,
        help="multiple-choice task file for the 5-shot calibration prompt (default: a self-made task)",
    )
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder, removed after)")
    args = ap.parse_args()
    if args.task is not None and not Path(args.task).is_file():
        print(f"error: --task {args.task}: no such file", file=sys.stderr)
        sys.exit(2)

    from emo_slice.io.build import random_checkpoint
    from emo_slice.model.config import EmoConfig

    task = args.task
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_profile_"))
    work.mkdir(parents=True, exist_ok=True)
    if task is None:  # a self-made task so the bench runs anywhere
        task = str(work / "task.jsonl")
        Path(task).write_text(
            "".join(
                json.dumps(
                    {
                        "id": i,
                        "context": f"Question {i}: what comes next?\n",
                        "choices": [f"answer {i}", "other", "none"],
                        "label": 0,
                    }
                )
                + "\n"
                for i in range(10)
            )
        )
    cfg = EmoConfig(
        vocab_size=1024,
        hidden_size=1024,
        intermediate_size=1024,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        num_experts=64,
        num_experts_per_tok=8,
        num_shared_experts=1,
        max_position_embeddings=4096,
        rope_theta=500000.0,
    )
    src = work / "src"
    try:
        t = time.perf_counter()
        if not (src / "config.json").exists():
            random_checkpoint(src, cfg, seed=0, dtype="float32", max_shard_size="2GB")
        ckpt_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        layer_bytes = 64 * 3 * 1024 * 1024 * 4 + 4 * 1024 * 1024 * 4 + 64 * 1024 * 4
        print(
            f"checkpoint: {ckpt_bytes / 1e9:.2f} GB in {args.layers} layers of {layer_bytes / 1e9:.2f} GB "
            f"(built in {time.perf_counter() - t:.0f} s); RAM {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9:.1f} GB",
            flush=True,
        )
        r = subprocess.run([sys.executable, "-c", CHILD, str(src), task], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])
        res = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    peak = res["peak_rss_kb"] * 1024
    base = res["rss_after_import_kb"] * 1024
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    out = {
        "bench": "profile",
        "checkpoint_bytes": ckpt_bytes,
        "layers": args.layers,
        "layer_bytes": layer_bytes,
        "ram_bytes": ram,
        "checkpoint_over_quarter_ram": ckpt_bytes / (ram / 4),
        "tokens": res["tokens"],
        "seconds": res["seconds"],
        "peak_rss_bytes": peak,
        "rss_after_import_bytes": base,
        "peak_over_checkpoint": peak / ckpt_bytes,
        "peak_above_import_over_layer": (peak - base) / layer_bytes,
        "target_peak_below_quarter_checkpoint": peak < ckpt_bytes / 4,
        "release_projection_bytes": base + (peak - base) / layer_bytes * (128 * 3 * 2048 * 1024 * 4),
        "release_checkpoint_bytes": 54.3e9,
    }
    print(
        f"profile: {res['tokens']} tokens in {res['seconds']:.1f} s; peak RSS {peak / 1e9:.2f} GB "
        f"= {out['peak_over_checkpoint']:.1%} of the checkpoint (target < 25%); above the import floor "
        f"({base / 1e9:.2f} GB) it is {out['peak_above_import_over_layer']:.2f} layers' worth. Projected for the "
        f"release (3.2 GB layers, 54 GB): ~{out['release_projection_bytes'] / 1e9:.1f} GB peak "
        f"= {out['release_projection_bytes'] / 54.3e9:.1%} of the checkpoint"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
