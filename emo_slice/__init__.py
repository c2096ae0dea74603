"""emo-slice: run Mixture-of-Experts language models on a fraction of their experts.

Pipeline: checkpoint (io/) -> model (model/) -> profile / select / extract (slicing/) -> eval (eval/);
pretrain (train/) writes checkpoints the rest reads. Each user workflow (workflows/) runs them over one
typed spec; the CLI (cli/) only calls a workflow. Layers import only downward (docs/architecture.md).

Shape legend, one for the whole package (a tensor's name ends with its shape, e.g. `x_BTD`, `w_EFD`):

    B  rows in a batch                      T  positions of the current input (queries)
    S  key positions (cached past + T)      N  tokens, B*T flattened
    D  hidden size                          F  expert hidden size
    E  experts in a layer (routed + shared, shared last)
    R  routed experts (E - shared)          K  experts chosen per token (routed top-k' + shared)
    M  token-expert pairs (N*K)             H  query heads,  Hkv  key/value heads,  Dh  head dim
    V  vocabulary                           L  layers
    G  document segments in a batch         P  scored positions (eval targets)

Counts that are not tensor dimensions (experts kept by a slice, global batch, ranks, windows) are
spelled out in words, never given one of these letters.

Importing the package is cheap (no torch): the names below load on first use.
"""

from emo_slice import _aliases

__version__ = "0.2.0"

_LAZY = {
    "Checkpoint": "emo_slice.io.checkpoint",
    "random_checkpoint": "emo_slice.io.build",
    "save_model": "emo_slice.io.build",
    "EmoConfig": "emo_slice.model.config",
    "EmoForCausalLM": "emo_slice.model.modeling",
    "KVCache": "emo_slice.model.context",
    "generate": "emo_slice.model.generation",
    "LayerwiseModel": "emo_slice.io.loading",
    "load_model": "emo_slice.io.loading",
    "load_tokenizer": "emo_slice.io.tokenizer",
    "EmoSliceError": "emo_slice.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'emo_slice' has no attribute {name!r}")


_aliases.install()  # modules moved in 0.2.0 keep their old import path for one release (DeprecationWarning)
