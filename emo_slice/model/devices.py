"""Devices: which one a run uses (`resolve_device`), checked before anything is read.

Placement (whole model on the device when it fits, else streamed layer by layer) is decided where the
checkpoint's size is known: `emo_slice.io.loading.choose_placement`.
"""

from __future__ import annotations

import torch

from emo_slice.errors import UsageError


def resolve_device(name: str = "auto"):
    """'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:N' or 'mps' -> torch.device, checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return (
            torch.device("mps")
            if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
            else torch.device("cpu")
        )
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"`device={name!r}` is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"`device={name!r}` is not supported; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"`device={name}`: no such GPU is visible; use `device=cpu` (or auto)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("`device=mps`: Metal is not available here; use `device=cpu` (or auto)")
    return device
