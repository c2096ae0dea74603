"""How to profile (`ProfileSettings`): calibration input, batching, memory bound, device, dtype, greedy slicing.

A frozen spec whose field docs are the `--help` of `emo-slice profile` (and of extract's and sweep's calibration
options). Torch-free: the command line reads it to build its options.
"""

from __future__ import annotations

from dataclasses import dataclass

from emo_slice.specs import DEVICE, DTYPE, INPUT, LAYERWISE, MAX_LENGTH, MAX_MEMORY, POOL, param

DEFAULT_MAX_TOKENS_IN_MEMORY = 262_144
EXAMPLES = (
    "Calibration input: a .txt file (one document), JSONL (--field), a Hugging Face dataset (saved folder or cached "
    "name), or with --shots a multiple-choice task file turned into a k-shot prompt with gold answers."
)


@dataclass(frozen=True)
class ProfileSettings:
    """How to profile: calibration input, batching, memory bound, compute dtype, and greedy slicing."""

    examples: str = param("", EXAMPLES, role=INPUT)
    field: str = param("text", "Field holding the text in JSONL records / datasets.")
    split: str | None = param(None, "Dataset split (default: test, validation or train).")
    shots: int | None = param(
        None,
        "Demonstrations (gold answers appended) in one k-shot calibration prompt: --examples is then read as a "
        "multiple-choice task.",
    )
    seed: int = param(0, "Random seed of the demonstrations draw (and of --method random with --greedy).")
    max_length: int | None = param(None, MAX_LENGTH)
    max_batch_tokens: int = param(1024, "Tokens (padded) per forward pass.")
    max_tokens_in_memory: int = param(
        DEFAULT_MAX_TOKENS_IN_MEMORY,
        "Calibration tokens whose activations are held at once: longer input runs in chunks of this many (the "
        "layers are read once per chunk; scores are the same). Memory about 2 x this x hidden_size x 4 bytes. "
        "--greedy needs every token at once and refuses longer input.",
    )
    dtype: str | None = param(None, DTYPE)
    device: str = param("auto", DEVICE)
    layerwise: bool = param(False, LAYERWISE)
    max_memory: int | None = param(None, MAX_MEMORY)
    greedy: bool = param(
        False,
        "The EMO paper's layer-by-layer selection: score layer l on the model whose earlier layers are already "
        "sliced to --keep by --method.",
    )
    keep: str | None = param(None, "Experts kept per layer (only with --greedy): a count like 16 or a share like 25%.")
    method: str = param(
        "mean-prob", "How experts are ranked (only with --greedy: how earlier layers are sliced before the next)."
    )
    pool: int | None = param(None, POOL + " Each calibration document (row) gets its own pool.")
