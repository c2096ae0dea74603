"""MFU: model FLOPs per token against a hand count and against torch's FLOP counter; device peaks."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from emo_slice.model.modeling import EmoForCausalLM, init_weights
from emo_slice.model.presets import preset
from emo_slice.train import mfu as M


def test_flops_per_token_equals_a_hand_count_of_the_tiny_model():
    cfg = preset("tiny")  # V 256, D 64, F 32, 2 layers, 4 heads of 16 (2 kv heads), 9 experts, top 3 (2 + shared)
    T = 32
    q, k, v, o = 64 * 64, 64 * 32, 64 * 32, 64 * 64
    router = 64 * 9
    experts = 3 * (64 * 32 + 64 * 32 + 32 * 64)  # 3 experts a token runs: gate, up, down
    head = 64 * 256  # the embedding lookup is no matmul
    params = 2 * (q + k + v + o + router + experts) + head
    assert M.matmul_params_per_token(cfg) == params == 78976
    scores_and_values = 2 * (2 * 4 * 16 * T)  # per token and layer, forward: QK^T and AV over all T keys
    full = 3 * (2 * params + 2 * scores_and_values)  # forward + backward = 3 x forward
    assert M.flops_per_token(cfg, T) == full == 523008
    assert M.flops_per_token(cfg, T, "causal") == 3 * (2 * params + 2 * 2 * (2 * 4 * 16) * (T + 1) / 2)
    with pytest.raises(ValueError, match="full or causal"):
        M.flops_per_token(cfg, T, "sliding")


def test_flops_per_token_equals_torch_flop_counter_on_a_training_step():
    """Count every matmul FLOP of a real forward + backward (experts as plain matmuls, attention in the math
    kernel, which computes all T x T scores: the "full" convention)."""
    cfg = preset("tiny", num_experts_per_tok=4)
    model = init_weights(EmoForCausalLM(cfg), seed=0)
    model.set_expert_impl("loop")
    B, T = 2, 24
    ids = torch.randint(2, 256, (B, T), generator=torch.Generator().manual_seed(0))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids).float().logsumexp(-1).sum().backward()
    assert counter.get_total_flops() == B * T * M.flops_per_token(cfg, T)


def test_device_peaks(monkeypatch):
    assert M.device_peak_tflops("cpu") is None  # no default on CPUs
    assert M.device_peak_tflops("cpu", 2.5) == 2.5
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, peak in [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GeForce RTX 4090", 165.0),
        ("Some Future GPU", None),
    ]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None, n=name: n)
        assert M.device_peak_tflops("cuda") == peak, name
    assert M.mfu(1000.0, 5e8, None) is None
    assert M.mfu(100_000.0, 2e9, 989.0) == pytest.approx(100_000 * 2e9 / 989e12)
    assert M.mfu(100_000.0, 2e9, 989.0, devices=2) == pytest.approx(100_000 * 2e9 / 989e12 / 2)
