"""emo-slice: run Mixture-of-Experts language models on a fraction of their experts."""

__version__ = "0.1.0"

from emo_slice.io.build import random_checkpoint, save_model  # noqa: E402
from emo_slice.io.checkpoint import Checkpoint  # noqa: E402
from emo_slice.model.config import EmoConfig  # noqa: E402
from emo_slice.errors import EmoSliceError  # noqa: E402
from emo_slice.io.loading import LayerwiseModel, load_model  # noqa: E402
from emo_slice.model.modeling import EmoForCausalLM  # noqa: E402
from emo_slice.io.tokenizer import load_tokenizer  # noqa: E402

__all__ = ["__version__", "Checkpoint", "random_checkpoint", "save_model", "EmoConfig", "EmoSliceError", "EmoForCausalLM", "LayerwiseModel",
           "load_model", "load_tokenizer"]
