"""Shared fixtures and the command-line test helpers.

- `run_cli(*args)`: the real entry point (`python -m emo_slice`) in a subprocess; use it where the process
  boundary is what a test checks (exit codes of the console script, imports, stderr as a user sees it).
- `invoke(*args)`: the same command in-process through typer's CliRunner (stderr kept apart); faster, for
  everything else.
- `assert_one_line_error(proc, *needles)`: the CLI's error format: non-zero exit, one `error: ...` line on
  stderr holding every needle, no traceback, no box.

Both runners return an object with .returncode, .stdout and .stderr. Import them with
`from conftest import run_cli, invoke, assert_one_line_error`.
"""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = Path(__file__).parents[1] / "examples"
# Progress lines off a terminal start after a quiet 2 s; a loaded test machine can take that long on a tiny
# model, and the one-line error checks must not see them. Tests that want the lines lower it.
os.environ.setdefault("EMO_SLICE_PROGRESS_QUIET", "600")
BOX_CHARS = "╭╮╰╯│─"


def run_cli(*args, env_extra=None, cwd=None, timeout=None) -> subprocess.CompletedProcess:
    """`python -m emo_slice ARGS` in a subprocess (offline, wide terminal), output captured as text; timeout:
    seconds before it is killed (subprocess.TimeoutExpired: a hang)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "emo_slice", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def invoke(*args, env_extra=None) -> SimpleNamespace:
    """`emo-slice ARGS` in-process (typer CliRunner, stderr apart): .returncode, .stdout, .stderr, .exception."""
    from typer.testing import CliRunner

    from emo_slice.cli import app

    r = CliRunner(env={"COLUMNS": "200", **(env_extra or {})}).invoke(app, [str(a) for a in args])
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr, exception=r.exception)


def assert_one_line_error(proc, *needles, code: int | None = 2) -> str:
    """The CLI's error format: exit code (2 unless told), one `error: ...` line on stderr holding the needles."""
    assert proc.returncode != 0 if code is None else proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not any(c in proc.stderr for c in BOX_CHARS), proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def tree_state(folder) -> dict:
    """Every entry under folder: sha256 of a regular file, the target of a link, the kind of anything else
    (a FIFO or device is never opened)."""
    import hashlib
    import stat

    out = {}
    for root, dirs, files in os.walk(folder):
        for p in (os.path.join(root, n) for n in dirs + files):
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                out[os.path.relpath(p, folder)] = "-> " + os.readlink(p)
            elif stat.S_ISREG(mode):
                with open(p, "rb") as f:
                    out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[os.path.relpath(p, folder)] = f"mode {stat.S_IFMT(mode):o}"
    return out


def assert_refused(proc, folder, before: dict, *needles, code: int = 2) -> str:
    """One `error:` line holding the needles (exit 2, no traceback), and `folder` exactly as `before`
    (tree_state): nothing written, no pre-existing byte changed."""
    line = assert_one_line_error(proc, *needles, code=code)
    after = tree_state(folder)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"changed under {folder}: {changed[:10]}"
    return line


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random tiny EMO checkpoint (preset tiny), written by the tests themselves."""
    from emo_slice.io.build import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def stopped_run_dir(tmp_path_factory) -> Path:
    """A folder holding train.jsonl (60 word documents) and run/: a tiny run stopped after step 1 of 2, resumable
    (copy it before changing it)."""
    from emo_slice.train.trainer import pretrain

    base = tmp_path_factory.mktemp("stopped")
    corpus = word_corpus(base / "train.jsonl", 60)
    pretrain(tiny_train_config(corpus, base / "run", steps=2, batch_size=2, seq_len=16, stop_after=1))
    return base


def random_model(seed: int = 0, std: float = 0.2, **config):
    """A small random EmoForCausalLM in eval mode (8 routed + 1 shared experts, GQA); config keys override."""
    from emo_slice.model.config import EmoConfig
    from emo_slice.model.modeling import EmoForCausalLM, init_weights

    base = dict(
        hidden_size=32,
        intermediate_size=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=9,
        num_experts_per_tok=3,
        vocab_size=64,
    )
    return init_weights(EmoForCausalLM(EmoConfig(**{**base, **config})), std=std, seed=seed).eval()


def tiny_train_config(corpus, out, **kw):
    """A TrainConfig of the tiny preset on `corpus`, small enough for a test run; kw override the defaults."""
    from emo_slice.train.config import train_preset

    base = dict(
        data=str(corpus),
        out=str(out),
        seq_len=32,
        batch_size=4,
        steps=6,
        warmup_steps=2,
        eval_every=0,
        save_every=0,
        eval_batches=1,
        progress=False,
    )
    return train_preset("tiny", **{**base, **kw})


def train_log(out) -> list[dict]:
    """A run's log.jsonl without its timings (the records two equal runs share exactly)."""
    import json

    recs = [json.loads(ln) for ln in (Path(out) / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "step_s")} for r in recs]


FRUIT_AND_CARS = "apple banana cherry grape melon engine wheel brake motor gear".split()


def word_corpus(path, n_docs: int, seed: int = 0) -> Path:
    """A JSONL corpus of n_docs documents of 8-30 random words (FRUIT_AND_CARS) at `path`."""
    import json
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n_docs):
            f.write(
                json.dumps({"text": " ".join(rng.choice(FRUIT_AND_CARS) for _ in range(rng.randint(8, 30)))}) + "\n"
            )
    return Path(path)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a test's process group."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo(rank: int, world: int, port: int) -> None:
    """In a spawned test rank: the torchrun environment variables, one CPU thread, a gloo process group."""
    import torch
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo")


# ---- other families, built with transformers' own model classes ------------------------------------------


def _hf_impl() -> dict:
    """SDPA attention and, from transformers 5 (which fuses experts and picks a kernel), its own expert loop."""
    try:
        import transformers
    except ImportError:
        return {}
    major = int(transformers.__version__.split(".")[0])
    return dict(attn_implementation="sdpa", **({"experts_implementation": "eager"} if major >= 5 else {}))


HF_IMPL = _hf_impl()
FAMILY_CONFIGS = {  # tiny shapes; keys are each family's own config.json keys
    "olmoe": dict(intermediate_size=16, num_experts=8, num_experts_per_tok=2),
    "qwen3_moe": dict(
        moe_intermediate_size=16, intermediate_size=24, num_experts=8, num_experts_per_tok=3, head_dim=12
    ),
    "qwen2_moe": dict(
        moe_intermediate_size=16,
        intermediate_size=24,
        shared_expert_intermediate_size=20,
        num_experts=8,
        num_experts_per_tok=2,
    ),
    "mixtral": dict(intermediate_size=16, num_local_experts=6, num_experts_per_tok=2),
}


def hf_model(family: str, seed: int = 0, dtype: str = "float32", **overrides):
    """A random transformers model of `family` (SDPA attention, transformers' default, and the modelling file's
    own expert loop), weights drawn so routing and norms matter (std 0.15, norm weights around 1)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    base = dict(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=1,
        eos_token_id=0,
        bos_token_id=None,
    )
    cfg = AutoConfig.for_model(family, **{**base, **FAMILY_CONFIGS[family], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, **HF_IMPL)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.15 * noise)
    return model.to(getattr(torch, dtype)).eval()


def hf_checkpoint(out, family: str, seed: int = 0, dtype: str = "float32", **overrides):
    """`hf_model(...)` saved with save_pretrained at `out` (the per-expert layout users' checkpoints have)."""
    model = hf_model(family, seed, dtype, **overrides)
    model.save_pretrained(out)
    return Path(out)


def load_example(name: str):
    """The script examples/NAME.py as a module (its functions and main, without running it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
