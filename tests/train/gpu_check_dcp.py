"""By hand on a GPU (not collected by pytest): sharded checkpoints at release width, one JSON line of figures.

    python tests/train/gpu_check_dcp.py cuda 2048 33 /tmp/dcp-check     # ~0.3B parameters, 2 layers, d_model 2048
    python tests/train/gpu_check_dcp.py cpu 256 9 /tmp/dcp-check         # the same on a CPU, small

Trains 4 steps uninterrupted, then 2 + resume 2 (bf16 autocast, the release preset's settings at 2 layers,
byte vocabulary), compares the two runs, then times one checkpoint save and one resume-load and reports the
checkpoint's size and the process's peak host memory before and after the save.
"""

import json
import os
import random
import resource
import sys
import time

import torch

from emo_slice.io.loading import load_model
from emo_slice.train.config import train_preset
from emo_slice.train.trainer import Trainer, pretrain


def main(device: str, width: int, experts: int, root: str) -> dict:
    rng = random.Random(0)
    os.makedirs(root, exist_ok=True)
    corpus = f"{root}/corpus.jsonl"
    words = "ab cd ef gh ij kl mn op".split()
    with open(corpus, "w") as f:
        for _ in range(3000):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(20, 300)))}) + "\n")
    model = dict(
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=width // 128,
        num_key_value_heads=width // 128,
        intermediate_size=width // 2,
        num_experts=experts,
        num_experts_per_tok=5,
        vocab_size=256,
        eos_token_id=0,
        pad_token_id=1,
    )

    def cfg(out, **kw):
        return train_preset(
            "emo-1b14b", data=corpus, out=f"{root}/{out}", model=model, tokenizer="bytes", seq_len=512,
            batch_size=8, micro_batch_size=4, steps=4, warmup_steps=1, eval_every=0, save_every=0, eval_batches=1,
            progress=False, device=device, pool_min=4, pool_max=experts, eval_pool=8, **kw,
        )  # fmt: skip

    def log(out):
        skip = ("tokens_per_s", "step_s", "mfu")
        return [{k: v for k, v in json.loads(x).items() if k not in skip} for x in open(f"{root}/{out}/log.jsonl")]

    pretrain(cfg("full", overwrite=True))
    pretrain(cfg("cut", stop_after=2, overwrite=True))
    pretrain(cfg("cut", resume=True))
    a, b = load_model(f"{root}/full/final").state_dict(), load_model(f"{root}/cut/final").state_dict()
    t = Trainer(cfg("save", overwrite=True))
    t.train_step()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    path = t.save("step-000001")
    save_s = time.time() - t0
    t0 = time.time()
    Trainer(cfg("save", resume=True))
    load_s = time.time() - t0

    def size(d):
        return sum(os.path.getsize(os.path.join(w, f)) for w, _, fs in os.walk(d) for f in fs)

    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "params_M": round(sum(p.numel() for p in t.raw.parameters()) / 1e6, 1),
        "resume_log_equal": log("full") == log("cut"),
        "resume_max_weight_diff": max((a[k] - b[k]).abs().max().item() for k in a),
        "save_s": round(save_s, 2),
        "resume_load_s": round(load_s, 2),
        "checkpoint_GB": round(size(path) / 1e9, 2),
        "sharded_state_GB": round(size(path / "training_state") / 1e9, 2),
        "peak_rss_GB_before_save": round(rss0 / 2**20, 2),
        "peak_rss_GB_after_save_and_load": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
