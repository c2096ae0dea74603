"""Capturing router logits: the streamed capture equals each document run alone through the whole model."""

import json

import numpy as np
import pytest
import torch

from emo_slice.analysis.capture import CaptureSettings, capture, layer_columns, read_documents
from emo_slice.errors import DataError, UsageError

TEXTS = [
    ("def f(x):\n    return x + 1\n" * 3, "code"),
    ("The quick brown fox jumps over the lazy dog. " * 2, "prose"),
    ("417 + 38 = 455\n12 * 3 = 36\n", "arithmetic"),
    ("import os\nprint(os.getcwd())\n", "code"),
    ("A short one.", "prose"),
]


@pytest.fixture()
def docs_file(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": t, "domain": d}) + "\n" for t, d in TEXTS))
    return p


def test_capture_equals_the_whole_model_per_document(tiny_ckpt, docs_file, tmp_path):
    from emo_slice.io.loading import load_model
    from emo_slice.io.tokenizer import load_tokenizer

    docs = read_documents([str(docs_file)])
    assert docs.domains == tuple(d for _, d in TEXTS) and docs.domain_names == ["code", "prose", "arithmetic"]
    out = tmp_path / "cap"
    out.mkdir()
    # small batches and chunks: several batches of several documents, several passes over the layers
    settings = CaptureSettings(max_tokens_per_doc=40, max_batch_tokens=64, max_tokens_in_memory=100, device="cpu")
    info = capture(tiny_ckpt, docs, out, settings)
    assert info["chunks"] > 1
    logits = np.load(out / "router_logits.npy", mmap_mode="r")
    offsets, tokens = np.load(out / "doc_offsets.npy"), np.load(out / "tokens.npy")
    model, tok = load_model(tiny_ckpt), load_tokenizer(tiny_ckpt)
    cols = layer_columns(model.config)
    assert info["columns"] == cols and logits.shape == (offsets[-1], cols[-1]) and logits.dtype == np.float16
    for d, (text, _) in enumerate(TEXTS):
        ids = tok.encode(text)[:40]
        np.testing.assert_array_equal(tokens[offsets[d] : offsets[d + 1]], ids)
        with torch.no_grad():
            routing = model(torch.tensor([ids]), return_routing=True)["routing"]
        for l, r in enumerate(routing):
            want = r.logits_NE[:, : cols[l + 1] - cols[l]].to(torch.float16).numpy()
            np.testing.assert_allclose(logits[offsets[d] : offsets[d + 1], cols[l] : cols[l + 1]], want, atol=2e-3)


def test_documents_limit_per_domain_and_domain_from_file_name(tmp_path, docs_file):
    docs = read_documents([str(docs_file)], limit=1)
    assert docs.domains == ("code", "prose", "arithmetic")
    plain = tmp_path / "legal.txt"
    plain.write_text("Whereas the party of the first part ...")
    nodomain = tmp_path / "web.jsonl"
    nodomain.write_text(json.dumps({"text": "hello"}) + "\n")
    both = read_documents([str(plain), str(nodomain)])
    assert both.domains == ("legal", "web")


def test_bad_documents_are_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_documents([str(tmp_path / "missing.jsonl")])
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(DataError, match="--field"):
        read_documents([str(p)])
    with pytest.raises(UsageError, match="--docs-limit"):
        read_documents([str(p)], field_name="body", limit=0)
