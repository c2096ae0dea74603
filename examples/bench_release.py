"""The release on a laptop: every command on the release's shape, with wall time and peak memory, beside the
two physical limits measured on the same machine in the same run.

Writes a random checkpoint of the release's exact shape (emo-1b14b: 16 layers, 128 experts, hidden 2048,
vocab 100,352, bfloat16: 27 GB on disk; --layers N keeps N layers for a quick run) or takes a real one
(--checkpoint), then runs, each as its own process (wall time, peak RSS from the kernel):
info, profile (--shots 5 examples of the demo corpus's code task), extract --keep 16 (12.5%), eval of the
slice against the streamed full model (--limit items), generate with the slice, export of the slice (GGUF
q8_0). The limits: reading the checkpoint's bytes from disk (its cold read rate, measured on its own file)
and the matmul rate (float32 on a CPU, bfloat16 on a GPU; measured here) for the FLOPs of each pass. With
llama-cpp-python installed, llama.cpp's prompt processing of the same slice (GGUF f32 and q8_0) runs beside
emo-slice's forward on the same tokens (said when it is not installed; it is not a dependency).

    python examples/bench_release.py --layers 2                    # quick: 2 layers (~4 GB on disk)
    nice python examples/bench_release.py --work /big/disk/dir      # the full release shape (27 GB + slice)
    python examples/bench_release.py --checkpoint ./Emo_1b14b_1T    # a real checkpoint
    python examples/bench_release.py --device cuda
    python examples/bench_release.py --layers 2 --steps profile --layerwise   # profile alone, streamed

A checkpoint that fits in memory is loaded whole; --layerwise streams profile's layers as the release's are on
a laptop (at most two layers in memory whatever the depth, so 2 layers measure the release's peak).

Prints a table (markdown) and, as its last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

EMO = [sys.executable, "-m", "emo_slice"]
HERE = Path(__file__).resolve().parent


def run_step(name: str, argv: list[str], log: Path) -> dict:
    """One command as its own process: wall seconds and peak RSS (the kernel's ru_maxrss of that process)."""
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(map(str, argv))}\n".encode())
        f.flush()
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
        p = subprocess.Popen([str(a) for a in argv], stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{name} failed (exit {p.returncode}); see {log}")
    return {"step": name, "wall_s": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2)}


def disk_read_rate(folder: Path, most: int = 2 * 10**9) -> float:
    """Bytes/s of a cold read of (up to `most` bytes of) the checkpoint's largest file, its page cache dropped
    first (posix_fadvise DONTNEED)."""
    shard = max(folder.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    fd = os.open(shard, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        buf, done, t0 = bytearray(64 << 20), 0, time.perf_counter()
        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            while done < most:
                n = f.readinto(buf)
                if not n:
                    break
                done += n
        rate = done / (time.perf_counter() - t0)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return rate


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_timer(device: str, rows: int = 512, d: int = 2048, f: int = 2048):
    """(flops, run): one dense matmul at release width, [rows, d] x [d, f], in the device's compute dtype (float32
    on a CPU, bfloat16 on a GPU); run(n) times n of them and returns the seconds."""
    dt = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a, b = torch.randn(rows, d, device=device, dtype=dt), torch.randn(d, f, device=device, dtype=dt)

    def run(n: int) -> float:
        _sync(device)
        t = time.perf_counter()
        for _ in range(n):
            a @ b
        _sync(device)
        return time.perf_counter() - t

    return 2.0 * rows * d * f, run


def matmul_rate(device: str, warm_s: float = 2.0, reps: int = 5) -> float:
    """FLOP/s of the device's own dense matmul (`matmul_timer`) after warm_s seconds of warming up (a CPU's
    first second runs at about half the rate: a cold start measured 92 GFLOP/s, the same machine warm 164),
    the best of reps runs of about 0.2 s each."""
    flops, run = matmul_timer(device)
    start = time.perf_counter()
    while time.perf_counter() - start < warm_s:
        run(4)
    n = max(1, round(0.2 / max(run(4) / 4, 1e-9)))
    return max(flops * n / run(n) for _ in range(reps))


def active_flops_per_token(cfg) -> float:
    """2 x the weights one token multiplies in the decoder layers (attention, router, its K experts)."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    attn = D * cfg.num_attention_heads * cfg.head_dim * 2 + D * cfg.num_key_value_heads * cfg.head_dim * 2
    per_layer = [
        attn + D * cfg.experts_in_layer(l) + cfg.num_experts_per_tok * 3 * D * F for l in range(cfg.num_hidden_layers)
    ]
    return 2.0 * sum(per_layer)


def causal_attention_flops(cfg, n_tokens: int) -> float:
    """The attention's own products over one causal sequence of n_tokens: query t scores t + 1 keys and mixes
    t + 1 values (2 x (t + 1) x head_dim FLOPs each), every head of every layer."""
    return 2.0 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * n_tokens * (n_tokens + 1)


def with_limits(rec: dict, read_bytes: float, flops: float, disk: float, mm: float) -> dict:
    """The step's floor: the slower of reading its bytes and multiplying its FLOPs; the share of it reached."""
    disk_s, mm_s = read_bytes / disk, flops / mm
    limit = max(disk_s, mm_s)
    bound = "disk" if disk_s >= mm_s else "matmul"
    return rec | {
        "read_gb": round(read_bytes / 1e9, 2),
        "gflop": round(flops / 1e9, 1),
        "limit_s": round(limit, 2),
        "bound": bound,
        "share_of_limit": round(limit / rec["wall_s"], 3),
    }


def write_checkpoint(out: Path, layers: int, log: Path) -> dict:
    """The release-shaped random checkpoint (bfloat16), written as `emo-slice init` writes one but with each
    tensor cut from a shared pool of random values at a random offset (a 27 GB checkpoint in the time its
    bytes take to write, not the minutes 13.5 billion normal draws take on a laptop)."""
    code = (
        f"import sys; sys.argv = ['x', {str(out)!r}, '{layers}']; from bench_release import fast_random; fast_random()"
    )
    return run_step("init (random, bf16)", [sys.executable, "-c", code], log)


def fast_random() -> None:
    """(In a child process) write sys.argv[1]: preset emo-1b14b with sys.argv[2] layers, bfloat16."""
    from emo_slice.artifacts import atomic_output_dir
    from emo_slice.io.build import write_side_files
    from emo_slice.io.writer import ShardWriter
    from emo_slice.model.hf_names import hf_tensor_shapes
    from emo_slice.model.presets import preset

    cfg = preset("emo-1b14b", num_hidden_layers=int(sys.argv[2]))
    cfg.torch_dtype = "bfloat16"
    g = torch.Generator().manual_seed(0)
    pool = (torch.randn(1 << 26, generator=g) * 0.02).bfloat16()
    with atomic_output_dir(sys.argv[1], flag="OUT") as tmp:
        w = ShardWriter(tmp, 5 * 10**9, {"created_by": "examples/bench_release.py"})
        for name, shape in hf_tensor_shapes(cfg).items():

            def make(shape=shape, name=name):
                n = math.prod(shape)
                if name.endswith("norm.weight"):
                    return torch.ones(shape, dtype=torch.bfloat16)
                reps = -(-n // pool.numel())
                start = int(torch.randint(0, pool.numel(), (1,), generator=g))
                return pool.roll(-start).repeat(reps)[:n].view(shape) if reps > 1 else _cut(pool, start, n, shape)

            w.add(name, make, dtype=torch.bfloat16, shape=shape)
        w.finish()
        write_side_files(tmp, cfg)


def _cut(pool: torch.Tensor, start: int, n: int, shape) -> torch.Tensor:
    end = start + n
    if end <= pool.numel():
        return pool[start:end].view(shape)
    return torch.cat([pool[start:], pool[: end - pool.numel()]]).view(shape)


STEPS = ("info", "profile", "extract", "eval", "generate", "export", "forward")


def parse_steps(text: str) -> list[str]:
    steps = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad or not steps:
        raise SystemExit(f"error: --steps {text!r}: choose from {', '.join(STEPS)} (comma-separated)")
    return steps


def parse_counts(text: str) -> list[int]:
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts or not all(t.isdigit() and 0 < int(t) <= 100_000 for t in parts):
        raise SystemExit(f"error: --forward-tokens {text!r}: give token counts from 1 to 100000, comma-separated")
    return [int(t) for t in parts]


def check_args(args) -> None:
    """Refuse what cannot run before anything is written: counts below 1, a --work that is a file, a --checkpoint
    that is not one, a CUDA device this torch cannot see, a forward-only run without --work's slice."""
    for name, least in (("layers", 1), ("keep", 1), ("shots", 0), ("limit", 1), ("max_new_tokens", 1), ("rounds", 1)):
        value = getattr(args, name)
        if not least <= value <= 100_000:
            raise SystemExit(f"error: --{name.replace('_', '-')} {value}: give a whole number from {least} to 100000")
    if args.work is not None and args.work.exists() and not args.work.is_dir():
        raise SystemExit(f"error: --work {args.work} is not a folder: give a folder (it is made when missing)")
    if args.checkpoint is not None:
        from emo_slice.errors import EmoSliceError
        from emo_slice.io.checkpoint import Checkpoint

        try:
            Checkpoint(args.checkpoint)
        except EmoSliceError as e:
            raise SystemExit(f"error: --checkpoint: {e}") from None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device}: this torch sees no CUDA GPU; run with --device cpu")
    if args.forward_only and (args.work is None or not (args.work / "slice16" / "config.json").is_file()):
        raise SystemExit(
            "error: --forward-only runs on --work's slice (DIR/slice16): run with --work DIR --steps profile,extract first"
        )


def pipeline(args, ckpt: Path, work: Path, log: Path, disk: float, mm: float) -> list[dict]:
    """info, profile, extract, eval, generate, export (those in args.steps): each a process, timed, with its
    limit. A step whose input an earlier step writes (the profile, the slice) takes it from --work."""
    from emo_slice.io.checkpoint import Checkpoint

    full = Checkpoint(ckpt)
    fpt = active_flops_per_token(full.config)
    dev, mem = ["--device", args.device], (["--max-memory", args.max_memory] if args.max_memory else [])
    stream = ["--layerwise"] if args.layerwise else []
    data, prof, sl = work / "data", work / "code.profile.json", work / "slice16"
    if not data.exists():
        subprocess.run([*EMO, "demo-data", data, "--chars-per-domain", "60000"], check=True, capture_output=True)
    task = data / "tasks" / "code.jsonl"
    steps = [run_step("info", [*EMO, "info", ckpt], log)] if "info" in args.steps else []
    if "profile" in args.steps:
        steps.append(profile_step(ckpt, task, prof, args, [*dev, *mem, *stream], log, full.total_bytes, fpt, disk, mm))
    needs = [(step, prof if step == "extract" else sl) for step in ("extract", "eval", "generate", "export")]
    made = {prof: "profile" in args.steps, sl: "extract" in args.steps}
    missing = [f"{step} needs {f}" for step, f in needs if step in args.steps and not f.exists() and not made[f]]
    if missing:
        raise SystemExit(f"error: {'; '.join(missing)}: run those steps first, with the same --work")
    if "extract" in args.steps:
        steps.append(
            run_step(
                f"extract --keep {args.keep}",
                [*EMO, "extract", ckpt, "--keep", str(args.keep), "--profile", prof, "--out", sl, "--overwrite"],
                log,
            )
        )
    if not sl.exists():
        return steps
    return steps + slice_steps(args, ckpt, task, sl, work, [*dev, *mem], log, full.total_bytes, fpt, disk, mm)


def profile_step(ckpt, task, prof, args, opts, log, full_bytes, fpt, disk, mm) -> dict:
    rec = run_step(
        "profile",
        [
            *EMO,
            "profile",
            ckpt,
            "--examples",
            task,
            "--shots",
            str(args.shots),
            "--out",
            prof,
            "--overwrite",
            *opts,
        ],
        log,
    )
    saved = json.loads(prof.read_text())
    placement = saved["settings"]["placement"]
    rec |= {"step": f"profile ({placement})", "tokens": saved["tokens"], "placement": placement}
    return with_limits(rec, full_bytes, fpt * saved["tokens"], disk, mm)


def slice_steps(args, ckpt, task, sl, work, opts, log, full_bytes, fpt, disk, mm) -> list[dict]:
    """eval (the slice against the full model), generate and export of the slice: those in args.steps."""
    from emo_slice.io.checkpoint import Checkpoint

    slice_bytes, steps = Checkpoint(sl).total_bytes, []
    if "eval" in args.steps:
        res = work / "eval.json"
        argv = [*EMO, "eval", sl, "--against", ckpt, "--task", task, "--limit", str(args.limit), "--out", res]
        rec = run_step("eval slice --against full", [*argv, "--overwrite", *opts], log)
        models = json.loads(res.read_text())["models"]
        tokens = sum(m["tokens"] for m in models.values())
        placement = {k: m["placement"] for k, m in models.items()}
        rec |= {"tokens": tokens, "placement": placement}
        steps.append(with_limits(rec, full_bytes + slice_bytes, fpt * tokens, disk, mm))
    if "generate" in args.steps:
        argv = [*EMO, "generate", sl, "--prompt", "def fibonacci(n):", "--max-new-tokens", str(args.max_new_tokens)]
        rec = run_step(f"generate slice ({args.max_new_tokens} new tokens)", [*argv, *opts], log)
        steps.append(with_limits(rec, slice_bytes, fpt * (8 + args.max_new_tokens), disk, mm))
    if "export" in args.steps:
        gguf = work / "slice16.q8_0.gguf"
        argv = [*EMO, "export", sl, "--format", "gguf", "--outtype", "q8_0", "--out", gguf, "--overwrite"]
        steps.append(with_limits(run_step("export slice (GGUF q8_0)", argv, log), slice_bytes, 0.0, disk, mm))
    return steps


def forward_side_by_side(sl: Path, work: Path, token_counts: list[int], device: str, rounds: int) -> list[dict]:
    """emo-slice's forward of the slice on each count of tokens (resident, stored-dtype weights, the device's
    compute dtype) as a share of the matmul limit, and llama.cpp's prompt processing of the same tokens from GGUF
    f32 and q8_0. The share is taken round by round: each round times the matmul for as many FLOPs as the
    forward, then the forward, and divides the two rates (a machine shared with others drifts by 10-20% from
    second to second: two figures taken a minute apart would measure the drift); the median of the rounds is
    the figure. The forward's FLOPs: the weights each token multiplies (attention projections, router, its K
    experts) and the causal attention's own products."""
    from emo_slice.io.loading import LayerwiseModel, default_dtype

    lw = LayerwiseModel(sl, default_dtype(None, torch.device(device)), device, resident=True)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, lw.config.vocab_size, (1, max(token_counts)), generator=gen)
    matmul_rate(device, reps=1)  # warm
    outs = [_forward_share(lw, ids[:, :n], device, rounds) for n in token_counts]
    del lw
    try:
        import llama_cpp
    except ImportError:
        return [out | {"llama_cpp": "not installed (pip install llama-cpp-python to compare)"} for out in outs]
    for outtype in ("f32", "q8_0"):
        gguf = work / f"slice16.{outtype}.gguf"
        if not gguf.exists():
            subprocess.run(
                [*EMO, "export", sl, "--format", "gguf", "--outtype", outtype, "--out", gguf],
                check=True,
                capture_output=True,
            )
        n_max = max(token_counts)
        llm = llama_cpp.Llama(
            str(gguf), n_ctx=n_max + 8, n_batch=n_max, n_threads=torch.get_num_threads(), verbose=False
        )
        for out, n in zip(outs, token_counts):
            best = math.inf
            for _ in range(2):
                llm.reset()
                t = time.perf_counter()
                llm.eval(ids[0, :n].tolist())
                best = min(best, time.perf_counter() - t)
            out[f"llama_cpp_{outtype}_tok_s"] = round(n / best, 1)
            out["llama_cpp"] = llama_cpp.__version__
        del llm
    return outs


def _forward_share(lw, ids, device: str, rounds: int) -> dict:
    """One count of tokens through the resident model: best tok/s and the median share of the matmul limit."""
    n_tokens = ids.shape[1]
    flops = active_flops_per_token(lw.config) * n_tokens + causal_attention_flops(lw.config, n_tokens)
    mm_flops, mm_run = matmul_timer(device)
    lw.hidden_states([ids])  # warm: the first pass allocates what the others reuse
    reps = max(1, round(flops / mm_flops))
    shares, best = [], math.inf
    for _ in range(rounds):
        mm = mm_flops * reps / mm_run(reps)
        _sync(device)
        t = time.perf_counter()
        lw.hidden_states([ids])
        _sync(device)
        dt = time.perf_counter() - t
        best = min(best, dt)
        shares.append(flops / dt / mm)
    shares.sort()
    return {
        "tokens": n_tokens,
        "gflop": round(flops / 1e9, 1),
        "emo_slice_tok_s": round(n_tokens / best, 1),
        "dtype": str(lw.dtype)[6:],
        "weight_dtype": str(lw.weight_dtype)[6:],
        "rounds": rounds,
        "emo_slice_share_of_matmul": round(shares[len(shares) // 2], 3),
        "share_min_max": [round(shares[0], 3), round(shares[-1], 3)],
    }


def table(steps: list[dict]) -> str:
    rows = ["| step | wall | peak memory | limit (bound) | share of the limit |", "|---|---|---|---|---|"]
    for s in steps:
        lim = f"{s['limit_s']:.1f} s ({s['bound']})" if "limit_s" in s else "-"
        share = f"{s['share_of_limit']:.0%}" if "share_of_limit" in s else "-"
        rows.append(f"| {s['step']} | {s['wall_s']:.1f} s | {s['peak_rss_gb']:.2f} GB | {lim} | {share} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="a real checkpoint (default: write a random release-shaped one)")
    ap.add_argument("--layers", type=int, default=16, help="layers of the random checkpoint (16: the release)")
    ap.add_argument("--work", type=Path, help="where checkpoints and outputs go (default: a temporary folder)")
    ap.add_argument("--keep", type=int, default=16, help="experts per layer in the slice (16 of 128: 12.5%%)")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--limit", type=int, default=10, help="eval items")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--max-memory", help="passed to every command that runs a model (e.g. 6GB)")
    ap.add_argument(
        "--forward-tokens",
        default="512,1024,2048",
        help="tokens of the side-by-side forward, comma-separated (1,024: profile's batches; 2,048: a 5-shot prompt)",
    )
    ap.add_argument("--rounds", type=int, default=7, help="rounds of the side-by-side forward (the median share)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    ap.add_argument("--forward-only", action="store_true", help="only the side-by-side forward (--work's slice)")
    ap.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"the steps to run, comma-separated (default all: {','.join(STEPS)}); the inputs of a step left out "
        "(the profile, the slice) are taken from --work",
    )
    ap.add_argument(
        "--layerwise",
        action="store_true",
        help="stream profile's layers even when the checkpoint fits in memory (as the release's are on a laptop)",
    )
    args = ap.parse_args()
    args.steps = ["forward"] if args.forward_only else parse_steps(args.steps)
    counts = parse_counts(args.forward_tokens)
    check_args(args)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-release-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    steps, ckpt = [], args.checkpoint
    if ckpt is None:
        ckpt = work / f"release-{args.layers}l"
        if not (ckpt / "config.json").exists():
            steps.append(write_checkpoint(ckpt, args.layers, log))
    disk, mm = disk_read_rate(ckpt), matmul_rate(args.device)
    print(f"limits: disk read {disk / 1e9:.2f} GB/s, matmul {mm / 1e9:.1f} GFLOP/s", flush=True)
    if args.steps != ["forward"]:
        steps += pipeline(args, ckpt, work, log, disk, mm)
    forward = None
    if "forward" in args.steps:
        if not (work / "slice16" / "config.json").exists():
            raise SystemExit(f"error: the forward needs the slice {work / 'slice16'}: add extract to --steps")
        forward = forward_side_by_side(work / "slice16", work, counts, args.device, args.rounds)
    print(table(steps))
    for f in forward or []:
        print(f"forward of {f['tokens']} tokens through the slice: {f}")
    figures = {
        "benchmark": "release",
        "checkpoint": str(ckpt),
        "layers": json.loads((ckpt / "config.json").read_text())["num_hidden_layers"],
        "checkpoint_gb": round(sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) / 1e9, 2),
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg()[0],
        "disk_read_gb_s": round(disk / 1e9, 3),
        "matmul_gflop_s": round(mm / 1e9, 1),
        "steps": steps,
        "forward": forward,
        "work": str(work),
    }
    if args.work is None and args.checkpoint is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
