"""extract at release width: time and peak RSS of emo-slice's streaming surgery, against `cp` of the
same kept bytes (the physical limit) and the naive way (load the whole state dict, select, save).

The synthetic checkpoint has the release's layer shape (hidden 2048, expert hidden 1024, 128 experts
with 1 shared, top-8, float32 as released) and a small vocabulary, so each layer weighs 3.2 GB; two
layers make a 6.5 GB checkpoint. Every contender runs in its own child process, which reports its own
peak RSS (ru_maxrss) and, for emo-slice, the RSS right after `import torch, emo_slice` (the floor any
Python tool with torch pays). Reads come from the page cache (the checkpoint was just written); every
contender's time includes a final `sync`, so writes are timed to the disk, and pending writes are
flushed before each one starts.

    python examples/bench_extract.py                 # 2 layers (6.5 GB), ~3 minutes on 2 cores
    python examples/bench_extract.py --layers 1      # 3.2 GB, faster

Last line: one JSON object with the figures and ratios.
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

CHILD_EXTRACT = r"""
import json, os, resource, sys, time
import torch, emo_slice
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.slicing.extract import extract
from emo_slice.slicing.select import plan_slice
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
src, out, keep = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.perf_counter()
ck = Checkpoint(src)
extract(ck, plan_slice(ck, keep, method="random", seed=0), out)
os.sync()
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "rss_after_import_kb": base}))
"""

CHILD_NAIVE = r"""
import json, os, resource, sys, time, re
import torch
from safetensors.torch import load_file, save_file
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.slicing.select import plan_slice
src, out, keep = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.perf_counter()
ck = Checkpoint(src)
kept = plan_slice(ck, keep, method="random", seed=0).kept
state = {}
for f in sorted({i.file for i in ck.infos.values()}):
    # the whole model in memory, as from_pretrained + save_pretrained pruning scripts hold it
    state.update({k: v.clone() for k, v in load_file(f).items()})
new = {}
for name, t_ in state.items():
    m = re.match(r"model\.layers\.(\d+)\.mlp\.(experts\.(\d+)\.|gate\.weight)", name)
    if m and m.group(3) is not None:
        l, e = int(m.group(1)), int(m.group(3))
        if e in kept[l]:
            new[name.replace(f"experts.{e}.", f"experts.{kept[l].index(e)}.")] = t_
    elif m:
        new[name] = t_[kept[int(m.group(1))]].contiguous()
    else:
        new[name] = t_
save_file(new, out + "/model.safetensors", metadata={"format": "pt"})
os.sync()
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def child(code: str, *args) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"child failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--keep", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder, removed after)")
    args = ap.parse_args()

    from emo_slice.io.build import random_checkpoint
    from emo_slice.model.config import EmoConfig

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_extract_"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "src"
    cfg = EmoConfig(
        vocab_size=1024,
        hidden_size=2048,
        intermediate_size=1024,
        num_hidden_layers=args.layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        num_experts=128,
        num_experts_per_tok=8,
        num_shared_experts=1,
        max_position_embeddings=4096,
        rope_theta=500000.0,
    )
    try:
        t = time.perf_counter()
        if not (src / "config.json").exists():
            random_checkpoint(src, cfg, seed=0, dtype="float32", max_shard_size="2GB")
        src_bytes = weight_bytes(src)
        print(
            f"checkpoint: {src_bytes / 1e9:.2f} GB, {args.layers} layers of release width "
            f"(built in {time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        rows = []
        for K in args.keep:
            out = work / f"slice-{K}"
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            ex = child(CHILD_EXTRACT, src, out, K)
            kept_bytes = weight_bytes(out)
            cp_dir = work / f"cp-{K}"
            shutil.rmtree(cp_dir, ignore_errors=True)
            cp_dir.mkdir()
            os.sync()
            t = time.perf_counter()
            subprocess.run(["cp", *map(str, sorted(out.glob("*.safetensors"))), str(cp_dir)], check=True)
            os.sync()
            cp_s = time.perf_counter() - t
            naive_out = work / f"naive-{K}"
            shutil.rmtree(naive_out, ignore_errors=True)
            naive_out.mkdir()
            os.sync()
            nv = child(CHILD_NAIVE, src, naive_out, K)
            row = {
                "keep": K,
                "kept_bytes": kept_bytes,
                "extract_s": ex["seconds"],
                "extract_GBps": kept_bytes / ex["seconds"] / 1e9,
                "extract_peak_rss_MB": ex["peak_rss_kb"] / 1024,
                "rss_after_import_MB": ex["rss_after_import_kb"] / 1024,
                "extract_rss_above_import_MB": (ex["peak_rss_kb"] - ex["rss_after_import_kb"]) / 1024,
                "cp_s": cp_s,
                "cp_GBps": kept_bytes / cp_s / 1e9,
                "naive_s": nv["seconds"],
                "naive_peak_rss_MB": nv["peak_rss_kb"] / 1024,
            }
            row["throughput_vs_cp"] = row["extract_GBps"] / row["cp_GBps"]
            row["naive_time_over_extract"] = row["naive_s"] / row["extract_s"]
            row["naive_rss_over_extract"] = row["naive_peak_rss_MB"] / row["extract_peak_rss_MB"]
            rows.append(row)
            for d in (out, cp_dir, naive_out):
                shutil.rmtree(d, ignore_errors=True)
            print(
                f"K={K:3d}: kept {kept_bytes / 1e9:.2f} GB | extract {row['extract_s']:.2f} s "
                f"({row['extract_GBps']:.2f} GB/s, peak RSS {row['extract_peak_rss_MB']:.0f} MB, of which "
                f"{row['rss_after_import_MB']:.0f} MB is importing torch) | cp {row['cp_s']:.2f} s "
                f"({row['cp_GBps']:.2f} GB/s) | naive {row['naive_s']:.2f} s, peak RSS "
                f"{row['naive_peak_rss_MB']:.0f} MB | extract/cp throughput {row['throughput_vs_cp']:.2f}x, "
                f"naive/extract time {row['naive_time_over_extract']:.1f}x, RSS {row['naive_rss_over_extract']:.1f}x",
                flush=True,
            )
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "bench": "extract",
                "checkpoint_bytes": src_bytes,
                "layers": args.layers,
                "shape": {"hidden": 2048, "expert_hidden": 1024, "experts": 128, "dtype": "float32"},
                "cpus": os.cpu_count(),
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
