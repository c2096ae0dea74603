"""Document masking without a dense mask: flex_attention with a document BlockMask equals masked SDPA."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from emo_slice.model import attention as A
from emo_slice.model.context import _attention_mask, make_context
from emo_slice.model.modeling import EmoForCausalLM, init_weights
from emo_slice.model.presets import preset
from emo_slice.model.routing import attention_documents

EOS = 0


def _ids(B: int, T: int, seed: int = 0, p_eos: float = 0.04) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 256, (B, T), generator=g)
    ids[torch.rand(B, T, generator=g) < p_eos] = EOS
    return ids


def test_dense_document_mask_and_mask_mod_agree_with_the_old_dense_mask():
    ids = _ids(3, 50)
    doc_BT = attention_documents(ids, EOS)
    old = _attention_mask(3, 50, 0, ids.device, None, doc_BT)  # causal & same document & self, as before
    assert torch.equal(A.dense_document_mask(doc_BT), old)
    b, q, kv = torch.arange(3)[:, None, None], torch.arange(50)[None, :, None], torch.arange(50)[None, None, :]
    assert torch.equal(A.document_mask_mod(doc_BT)(b, 0, q, kv)[:, None], old)
    assert old.sum() < torch.ones(50, 50).tril().sum() * 3  # documents really cut the causal mask


def test_backend_choice_and_fallback(monkeypatch):
    assert A.document_backend(torch.device("cpu")) == "sdpa"  # auto: flex only on CUDA (no CPU backward)
    with A.document_attention("flex"):
        assert A.document_backend(torch.device("cpu")) == ("flex" if A.flex_available() else "sdpa")
        monkeypatch.setattr(A, "flex_available", lambda: False)  # an old torch: masked SDPA, same result
        assert A.document_backend(torch.device("cpu")) == "sdpa"
        assert A.document_backend(torch.device("cuda")) == "sdpa"
    monkeypatch.undo()
    assert A.document_backend(torch.device("cpu")) == "sdpa"  # the context manager restored "auto"
    with pytest.raises(ValueError, match="choose one of"):
        A.set_document_attention("dense")


def test_documents_reach_the_kernel_without_a_dense_mask_in_the_context():
    cfg = preset("tiny")
    ids = _ids(2, 40)
    docs = attention_documents(ids, EOS)
    ctx = make_context(cfg, ids, dtype=torch.float32, document_ids_BT=docs)
    assert ctx.mask_BTS is None and ctx.documents is not None and ctx.documents.backend == "sdpa"
    model = init_weights(EmoForCausalLM(cfg), seed=0).eval()
    with torch.no_grad():
        got = model(ids, document_ids_BT=docs)
        full = _attention_mask(2, 40, 0, ids.device, None, docs)[:, 0]  # the same mask, given explicitly
        want = model(ids, attention_mask=full)
        causal = model(ids)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, causal, atol=1e-3)  # the documents did change the result


@pytest.mark.slow
@pytest.mark.skipif(not A.flex_available(), reason="this torch has no flex_attention")
def test_flex_attention_equals_masked_sdpa():
    """flex_attention (CPU reference forward; CPU flex has no backward) == SDPA with the dense mask, with GQA,
    several 128-blocks and a length that is not a multiple of 128; fully cross-document blocks are skipped."""
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    B, H, Hkv, T, Dh = 2, 4, 2, 300, 16
    doc_BT = torch.zeros(B, T, dtype=torch.long)
    doc_BT[0, 128:] = 1  # row 0: two documents on a block edge; row 1: many short ones
    doc_BT[1] = attention_documents(_ids(1, T, seed=3, p_eos=0.03), EOS)[0]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, T, Dh, generator=g) for h in (H, Hkv, Hkv))
    flex = A.attend(q, k, v, None, A.DocumentMask(doc_BT, "flex"), gqa=True)
    masked = A.attend(q, k, v, None, A.DocumentMask(doc_BT, "sdpa"), gqa=True)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=A.dense_document_mask(doc_BT), enable_gqa=True)
    assert torch.equal(masked, want)
    assert (flex - masked).abs().max() < 1e-5
    blocks = A.DocumentMask(doc_BT, "flex").block.to_dense()[0, 0]  # [query blocks, key blocks], row 0
    assert blocks[1, 0] == 0 and blocks[1, 1] == 1 and blocks[0, 1] == 0  # other document / future: skipped

    cfg = preset("tiny")
    model = init_weights(EmoForCausalLM(cfg), seed=0).eval()
    ids = _ids(2, 150, seed=1)
    with torch.no_grad():
        with A.document_attention("flex"):
            got = model(ids, document_ids_BT=attention_documents(ids, EOS), pool_size=4)
        want = model(ids, document_ids_BT=attention_documents(ids, EOS), pool_size=4)
    assert (got - want).abs().max() < 1e-4
