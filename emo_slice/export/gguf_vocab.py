"""The tokenizer of a checkpoint as llama.cpp's `gpt2` (byte-level BPE) vocabulary for a GGUF file.

What llama.cpp reads (src/llama-vocab.cpp, `tokenizer_model == "gpt2"`): `tokenizer.ggml.tokens` (one per
embedding row, byte-level strings as in tokenizer.json), `token_type` (1 normal, 3 control, 4
user-defined, 5 unused), `merges` ("a b" strings; the key is required), and `tokenizer.ggml.pre`, which
picks its pre-tokenizer regex. Only pre-tokenizers llama.cpp reproduces are accepted:
- `ByteLevel(use_regex=true)` (GPT-2's regex; what emo-slice's own BPE training uses) -> "gpt-2";
- `Split(cl100k / llama3 regex)` + `ByteLevel(use_regex=false)` (AllenAI's dolma2 tokenizer) -> "dbrx",
  whose regex in llama-vocab.cpp is llama3's.
Rows beyond the tokenizer (a padded vocab) become `[PAD{i}]` unused tokens, as convert_hf_to_gguf.py does.
A byte-level model (token id = byte) gets the 256 byte-level characters in byte order and no merges
(see `BYTE_MERGES`).
"""

from __future__ import annotations

from dataclasses import dataclass

from emo_slice.errors import UsageError
from emo_slice.safejson import parse_json

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
CL100K_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
# GGUF arrays cannot be empty (gguf-py refuses them) and llama.cpp requires the merges key: one merge of two
# two-character strings, which never occur as symbols of a merge-free byte vocabulary, so it never fires
BYTE_MERGES = ["\u0100\u0100 \u0100\u0100"]


@dataclass
class GGUFVocab:
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what ByteLevel pre-tokenizers and llama.cpp's gpt2 vocab use)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def byte_vocab(vocab_size: int) -> GGUFVocab:
    chars = bytes_to_unicode()
    tokens = [chars[b] for b in range(256)] + [f"[PAD{i}]" for i in range(256, vocab_size)]
    return GGUFVocab("gpt-2", tokens, [NORMAL] * 256 + [UNUSED] * (vocab_size - 256), list(BYTE_MERGES))


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre_tokenizer it reproduces; UsageError for any other."""
    if (
        isinstance(pre, dict)
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space", False)
    ):
        return "gpt-2"
    if isinstance(pre, dict) and pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 2:
        split, byte_level = pre["pretokenizers"]
        keeps_matches = (split.get("behavior"), bool(split.get("invert"))) in (("Removed", True), ("Isolated", False))
        if (
            split.get("type") == "Split"
            and split.get("pattern") == {"Regex": CL100K_REGEX}
            and keeps_matches
            and byte_level.get("type") == "ByteLevel"
            and not byte_level.get("use_regex", True)
            and not byte_level.get("add_prefix_space", False)
        ):
            return "dbrx"
    raise UsageError(
        "tokenizer.json's pre-tokenizer is neither GPT-2's byte-level regex nor the cl100k split, the "
        "ones llama.cpp reproduces; export --format qwen2-moe instead, or convert that folder with "
        "llama.cpp's convert_hf_to_gguf.py"
    )


def hf_vocab(data: dict, vocab_size: int) -> GGUFVocab:
    """A byte-level BPE tokenizer.json (parsed) as llama.cpp's gpt2 vocabulary of vocab_size rows."""
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or data.get("normalizer") is not None:
        raise UsageError(
            "tokenizer.json is not a byte-level BPE without normalizer (the kind llama.cpp's gpt2 "
            "vocabulary holds); export --format qwen2-moe instead"
        )
    pre = pre_tokenizer_name(data.get("pre_tokenizer"))
    by_id: dict[int, tuple[str, int]] = {i: (t, NORMAL) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens") or []:
        by_id[added["id"]] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    if by_id and max(by_id) >= vocab_size:
        raise UsageError(
            f"the tokenizer has token id {max(by_id)} but the model has {vocab_size} embedding rows; "
            "the tokenizer does not belong to this model"
        )
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return GGUFVocab(pre, tokens, types, merges or list(BYTE_MERGES))


def gguf_vocab(tokenizer, vocab_size: int) -> GGUFVocab:
    """The vocabulary of an emo-slice Tokenizer (io/tokenizer.py) for a model with vocab_size rows."""
    if tokenizer.kind == "byte-level":
        if vocab_size < 256:
            raise UsageError(
                f"the model has {vocab_size} embedding rows, fewer than the 256 byte tokens; "
                "it cannot be a byte-level model"
            )
        return byte_vocab(vocab_size)
    return hf_vocab(parse_json(tokenizer.backend.to_str()), vocab_size)
