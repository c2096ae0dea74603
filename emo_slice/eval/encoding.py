"""Multiple-choice requests as token ids: lm-evaluation-harness's pair encoding (the default) or separate
tokenisation, and lm-eval's per-request left truncation.

A request is (context, continuation): the continuation is target_delimiter + choice (an item with
per-choice contexts gives each choice its own context; the continuation is then the same for all). Both
encodings first move the context's trailing whitespace to the front of the continuation.

- "lm-eval" (lm_eval/api/model.py `TemplateLM._encode_pair` / `loglikelihood`, v0.4.x): whole =
  encode(context + continuation), context_enc = encode(context), continuation_enc = whole[len(context_enc):];
  the model reads context_enc + continuation_enc. An empty context gives [EOS] as context and
  encode(continuation) (or, when that starts with EOS, its first token as context).
- "separate" (emo-slice before lm-eval exactness; a named option): context_enc = encode(context),
  continuation_enc = encode(continuation). Where the boundary falls inside a word the two differ.

Truncation (lm_eval/models/huggingface.py `_loglikelihood_tokens`): each request on its own keeps
(context_enc + continuation_enc)[-(max_length + 1):][:-1] as input and scores its last
len(continuation_enc) positions; a continuation longer than max_length is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from emo_slice.data.sources import MCItem
from emo_slice.errors import DataError, UsageError

ENCODINGS = ("lm-eval", "separate")


def check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise UsageError(f"`encoding={encoding!r}` is unknown; choose one of {', '.join(ENCODINGS)}")
    return encoding


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-evaluation-harness: trailing whitespace of the context belongs to the continuation."""
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


def _eos(tok) -> int:
    return tok.eos_token_id if tok.eos_token_id is not None else 0


def encode_pairs(tok, context: str, continuations: list[str], encoding: str = "lm-eval") -> tuple[list, list]:
    """(context ids, [continuation ids]) of one context with each continuation (the context ids are the same
    for every continuation in both encodings)."""
    eos = _eos(tok)
    if context == "" and encoding == "lm-eval":  # lm-eval's loglikelihood(): the prefix token as context,
        conts = tok.encode_batch(continuations)  # or the continuation's own first token when it is that token
        return [eos], [c[1:] if c and c[0] == eos else c for c in conts]
    pairs = [split_pair(context, c) for c in continuations]
    ctx_text = pairs[0][0]
    ctx = tok.encode(ctx_text)
    if encoding == "lm-eval":
        wholes = tok.encode_batch([ctx_text + p[1] for p in pairs])
        conts = [w[len(ctx) :] for w in wholes]
    else:
        conts = tok.encode_batch([p[1] for p in pairs])
    return (ctx or [eos]), conts  # a whitespace-only context: EOS (lm-eval would fail its assertion)


@dataclass
class Encoded:
    """An item's requests as token ids (untruncated), the scored texts and lm-eval's acc_norm lengths."""

    ctxs: list[list[int]]  # per choice; the same list object for every choice when they share the context
    conts: list[list[int]]
    texts: list[str]  # scored continuation texts (moved whitespace + target delimiter + choice)
    norms: list[int]  # lm-eval's len(choice) in characters (acc_norm's divisor)
    cut: list[bool]  # request c is cut from the left to fit max_length (+1, its last token is not input)

    @property
    def truncated(self) -> bool:
        return any(self.cut)

    @property
    def shared(self) -> bool:
        """Every choice is scored after the very same context tokens (a tree row can hold the item)."""
        return all(c is self.ctxs[0] or c == self.ctxs[0] for c in self.ctxs)

    @property
    def ctx(self) -> list[int]:
        return self.ctxs[0]


def encode_item(
    tok, item: MCItem, max_length: int, prefix: str = "", where: str = "", encoding: str = "lm-eval"
) -> Encoded:
    """The requests of `item` after the few-shot `prefix`, encoded with `encoding`, checked against max_length."""
    check_encoding(encoding)
    conts_text = [item.target_delimiter + c for c in item.choices]
    if item.contexts is None:
        ctx, conts = encode_pairs(tok, prefix + item.context, conts_text, encoding)
        ctxs = [ctx] * len(conts)
        texts = [split_pair(prefix + item.context, t)[1] for t in conts_text]
        norms = [len(c) for c in item.choices]
    else:  # lm-eval's multiple_input: doc_to_choice gives the contexts, so acc_norm divides by their length
        if len(item.contexts) != len(item.choices):
            raise DataError(f"{where}: {len(item.contexts)} contexts for {len(item.choices)} choices; give one each")
        ctxs, conts = [], []
        for c_text, t in zip(item.contexts, conts_text):
            c, (ids,) = encode_pairs(tok, prefix + c_text, [t], encoding)
            ctxs.append(c)
            conts.append(ids)
        texts = [split_pair(prefix + c, t)[1] for c, t in zip(item.contexts, conts_text)]
        norms = [len(c) for c in item.contexts]
    for c, ids in enumerate(conts):
        if not ids:
            raise DataError(
                f"{where}: choice {c} adds no tokens of its own after the context ({encoding} encoding); "
                "every choice needs some text"
            )
        if len(ids) > max_length:
            raise DataError(
                f"{where}: choice {c} is {len(ids)} tokens, longer than the model's context "
                f"({max_length}); raise --max-length or drop the item"
            )
    cut = [len(x) + len(y) > max_length + 1 for x, y in zip(ctxs, conts)]
    return Encoded(ctxs, conts, texts, norms, cut)
