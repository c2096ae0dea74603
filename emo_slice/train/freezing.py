"""Which parameters fine-tuning trains (`--train PART`), the rest frozen and never given to the optimizer.

The parts, as AllenAI's EMO fine-tuning names them (`src/hf_training/finetune.py` freeze_mode):
- `routed`: the routed experts (in a slice: the kept ones) only;
- `routed+shared`: and the shared experts;
- `routed+shared+router`: and the routers;
- `all` (EMO's default, freeze_mode "none", what its launchers run): every parameter.
Attention, norms, embeddings, the output head and a dense layer's MLP learn only with `all`; a shared expert
kept apart from the routed ones (Qwen2-MoE's gated shared MLP and its gate) is part of "shared".

One layer's experts are one stacked parameter per projection (routed first, shared last). When routed experts
learn and shared ones do not (`routed` on a model with shared experts), `split_shared` makes each stacked
parameter two, routed [R, ...] and shared [S, ...], joined in the forward pass; the model's state_dict (and so
every checkpoint written) still holds the stacked tensor, and loading a state_dict splits it again.
"""

from __future__ import annotations

import torch
from torch import nn

from emo_slice.errors import UsageError
from emo_slice.model.modeling import MoE

PARTS = ("routed", "routed+shared", "routed+shared+router", "all")
STACKED = ("w_gate_EFD", "w_up_EFD", "w_down_EDF")


class SplitExperts(MoE):
    """An MoE whose stacked expert parameters are held as routed and shared halves (see the module docstring)."""

    def _halves(self, name: str) -> tuple[nn.Parameter, nn.Parameter]:
        return self._parameters[name + "_routed"], self._parameters[name + "_shared"]

    def _joined(self, name: str) -> torch.Tensor:
        return torch.cat(self._halves(name))

    w_gate_EFD = property(lambda self: self._joined("w_gate_EFD"))
    w_up_EFD = property(lambda self: self._joined("w_up_EFD"))
    w_down_EDF = property(lambda self: self._joined("w_down_EDF"))


def _joined_state(module, state_dict, prefix, local_metadata):
    for name in STACKED:
        routed, shared = state_dict.pop(prefix + name + "_routed"), state_dict.pop(prefix + name + "_shared")
        state_dict[prefix + name] = torch.cat([routed, shared])


def _split_state(module, state_dict, prefix, *args):
    R = module.n_experts - module.n_shared
    for name in STACKED:
        if prefix + name in state_dict:
            t = state_dict.pop(prefix + name)
            state_dict[prefix + name + "_routed"], state_dict[prefix + name + "_shared"] = t[:R], t[R:]


def split_shared(mlp: MoE) -> SplitExperts:
    """Turn mlp (in place) into a SplitExperts holding the same values."""
    R = mlp.n_experts - mlp.n_shared
    with torch.no_grad():
        for name in STACKED:
            p = mlp._parameters.pop(name)
            mlp.register_parameter(name + "_routed", nn.Parameter(p[:R].clone(), requires_grad=p.requires_grad))
            mlp.register_parameter(name + "_shared", nn.Parameter(p[R:].clone(), requires_grad=p.requires_grad))
            del p
    mlp.__class__ = SplitExperts
    mlp._register_state_dict_hook(_joined_state)
    mlp._register_load_state_dict_pre_hook(_split_state, with_module=True)
    return mlp


def trained_names(model: nn.Module, part: str) -> list[str]:
    """Set requires_grad on every parameter of `model` for `part` (splitting stacked experts when routed and
    shared experts differ); returns the names of the parameters that learn."""
    if part not in PARTS:
        raise UsageError(f"--train {part!r} is unknown; choose one of {', '.join(PARTS)}")
    moes = [layer.mlp for layer in model.model.layers if isinstance(layer.mlp, MoE)]  # a dense layer has none
    if part == "routed" and any(mlp.n_shared for mlp in moes):
        for mlp in moes:
            split_shared(mlp)
    for name, p in model.named_parameters():
        p.requires_grad_(_learns(name, part))
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _learns(name: str, part: str) -> bool:
    if part == "all":
        return True
    if ".mlp.shared_expert" in name:  # Qwen2-MoE's gated shared expert (its MLP and its gate), kept apart
        return part != "routed"
    leaf = name.rsplit(".", 1)[-1]
    if ".mlp." in name and leaf.startswith(STACKED):
        return not leaf.endswith("_shared") or part != "routed"
    return name.endswith(".mlp.gate.weight") and part == "routed+shared+router"
