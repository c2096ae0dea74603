"""Chat templates: a checkpoint's Jinja chat template, read and rendered as transformers renders it.

The template comes from `chat_template.jinja`, `chat_template.json` ({"chat_template": ...}) or the
`chat_template` key of `tokenizer_config.json` (a string, or a list of {"name", "template"} of which
"default" is used), read through io/safefiles.py (inside the folder, a regular file, strict JSON). It is
rendered in Jinja's immutable sandbox (as `transformers.PreTrainedTokenizerBase.apply_chat_template`
does): a template can format text but not reach Python objects, files or the network. The special
tokens the template refers to (bos_token, eos_token, ...) come from tokenizer_config.json.
"""

from __future__ import annotations

import os
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from emo_slice.errors import CheckpointError, DataError
from emo_slice.io.safefiles import folder_file, member_stat, parse_json_bytes

MAX_TEMPLATE_BYTES = 1_000_000
TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def _json(folder: Path, name: str) -> dict | None:
    if member_stat(folder, name) is None:
        return None
    path = folder_file(folder, name, "tokenizer file")
    raw = path.read_bytes()[: MAX_TEMPLATE_BYTES * 4]
    try:
        data = parse_json_bytes(raw)
    except ValueError as e:
        raise CheckpointError(f"{path} is corrupt ({e}); restore it from the original download") from None
    return data if isinstance(data, dict) else None


def _token_text(value) -> str:
    if isinstance(value, dict):  # an AddedToken written out: {"content": ...}
        value = value.get("content")
    return value if isinstance(value, str) else ""


def read_chat_template(folder: str | os.PathLike) -> tuple[str, dict] | None:
    """(template source, special tokens by name) of a checkpoint folder, or None when it has no template."""
    folder = Path(folder)
    config = _json(folder, "tokenizer_config.json") or {}
    template = None
    if member_stat(folder, "chat_template.jinja") is not None:
        template = folder_file(folder, "chat_template.jinja", "chat template").read_bytes()[:MAX_TEMPLATE_BYTES]
        template = template.decode("utf-8", errors="replace")
    else:
        template = (_json(folder, "chat_template.json") or {}).get("chat_template") or config.get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template.strip():
        return None
    return template, {k: _token_text(config.get(k)) for k in TOKEN_KEYS}


def render_chat(template: str, tokens: dict, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text, rendered by the template in Jinja's immutable sandbox."""

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **tokens
        )
    except TemplateError as e:
        raise DataError(f"the model's chat template refused a conversation: {str(e)[:200]}") from None
