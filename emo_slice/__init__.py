"""emo-slice: run Mixture-of-Experts language models on a fraction of their experts."""

__version__ = "0.1.0"

from emo_slice.build import random_checkpoint, save_model  # noqa: E402
from emo_slice.checkpoint import Checkpoint  # noqa: E402
from emo_slice.config import EmoConfig  # noqa: E402
from emo_slice.errors import EmoSliceError  # noqa: E402
from emo_slice.loading import LayerwiseModel, load_model  # noqa: E402
from emo_slice.model import EmoForCausalLM  # noqa: E402
from emo_slice.tokenizer import load_tokenizer  # noqa: E402

__all__ = ["__version__", "Checkpoint", "random_checkpoint", "save_model", "EmoConfig", "EmoSliceError", "EmoForCausalLM", "LayerwiseModel",
           "load_model", "load_tokenizer"]
