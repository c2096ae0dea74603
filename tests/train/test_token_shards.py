"""Streamed token shards: equal to the single token file earlier versions wrote for the same
corpus, with worker processes, across shard edges, from a Hugging Face stream; the other ranks wait on a marker."""

import json
import random

import numpy as np
import pytest

from emo_slice.data.sources import read_texts
from emo_slice.errors import DataError
from emo_slice.io.tokenizer import ByteTokenizer
from emo_slice.train.config import train_preset
from emo_slice.train.corpus import (
    FAILED,
    corpus_key,
    prepare_corpus,
    split_validation,
    train_tokenizer,
    wait_for_corpus,
    write_tokens,
)
from emo_slice.train.docstream import split_stream
from emo_slice.train.token_shards import TokenStream, read_index, write_token_shards

WORDS = "apple banana cherry engine wheel brake motor über naïve 東京 ☃".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(1)
    p = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    with open(p, "w", encoding="utf-8") as f:
        for _ in range(300):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))}) + "\n")
        f.write("\n")  # a blank line is skipped, as read_records skips it
    return p


def _shards(folder) -> np.ndarray:
    index = read_index(folder)
    return np.concatenate([np.fromfile(folder / s["file"], dtype="<u4") for s in index["shards"]])


def _todays(docs, tok, path) -> np.ndarray:
    write_tokens(docs, tok, path)  # the single token file of earlier versions
    return np.fromfile(path, dtype="<u4")


@pytest.mark.parametrize("tokenizer", ["bytes", "train"])
def test_streamed_shards_equal_todays_token_files(corpus, tmp_path, tokenizer):
    cfg = train_preset("tiny", data=str(corpus), tokenizer=tokenizer, valid_share=0.05)
    tok, meta = prepare_corpus(cfg, tmp_path / "data", vocab_size=300, workers=0)
    train, valid = split_validation(read_texts(corpus, "text", "train", "--data"), 0.05, str(corpus))
    ref_tok = ByteTokenizer(0, 1) if tokenizer == "bytes" else train_tokenizer(train, 300)
    if tokenizer == "train":  # a BPE trained on the streamed documents is the one trained on the list
        assert tok.backend.to_str() == ref_tok.backend.to_str()
    assert np.array_equal(_shards(tmp_path / "data" / "train"), _todays(train, ref_tok, tmp_path / "train.bin"))
    assert np.array_equal(_shards(tmp_path / "data" / "valid"), _todays(valid, ref_tok, tmp_path / "valid.bin"))
    assert meta["train_documents"] == len(train) and meta["valid_documents"] == len(valid)
    again = prepare_corpus(cfg, tmp_path / "data", vocab_size=300)  # reused, not rebuilt
    assert again[1] == meta


def test_worker_processes_and_shard_edges_change_nothing(corpus, tmp_path):
    docs = read_texts(corpus, "text", "train", "--data")
    tok = ByteTokenizer(0, 1)
    ref = _todays(docs, tok, tmp_path / "ref.bin")
    index = write_token_shards(iter(docs), tok, tmp_path / "s", workers=2, shard_tokens=1000, chunk_docs=16)
    assert len(index["shards"]) == -(-len(ref) // 1000) and index["documents"] == len(docs)
    assert np.array_equal(_shards(tmp_path / "s"), ref)
    stream = TokenStream(tmp_path / "s")
    for start, n in [(0, 5), (995, 10), (1999, 1002), (len(ref) - 7, 7)]:  # across shard edges
        assert np.array_equal(stream.read(start, n), ref[start : start + n].astype(np.int64))
    assert stream.locate(2500) == (2, 500)


@pytest.mark.parametrize("n_docs", [200, 3, 1])
def test_split_stream_is_split_validation(n_docs):
    docs = [f"document number {i} " * 3 + "end" for i in range(n_docs)]
    valid: list[str] = []
    train = list(split_stream(iter(docs), 0.02, "src", valid.append))
    assert (train, valid) == split_validation(docs, 0.02, "src")


@pytest.mark.slow  # importing datasets takes seconds
def test_hf_spec_streams_with_datasets(corpus, tmp_path, monkeypatch):
    import datasets

    calls = []
    records = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]

    def fake_load_dataset(name, config=None, **kw):
        calls.append((name, config, kw))
        return iter(records)  # an IterableDataset yields dicts one by one

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = train_preset("tiny", data="hf:someone/corpus:en", tokenizer="bytes")
    prepare_corpus(cfg, tmp_path / "hf", vocab_size=256)
    assert calls and all(c[:2] == ("someone/corpus", "en") and c[2]["streaming"] is True for c in calls)
    file_cfg = train_preset("tiny", data=str(corpus), tokenizer="bytes")
    prepare_corpus(file_cfg, tmp_path / "file", vocab_size=256)
    assert np.array_equal(_shards(tmp_path / "hf" / "train"), _shards(tmp_path / "file" / "train"))


def test_other_ranks_wait_on_the_done_marker_or_rank_0s_error(corpus, tmp_path):
    cfg = train_preset("tiny", data=str(corpus), tokenizer="bytes")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / FAILED).write_text("--data x: no such file\n")
    with pytest.raises(DataError, match="rank 0 could not prepare the training data: --data x: no such file"):
        wait_for_corpus(cfg, folder, 256, poll_s=0.01)
    (folder / FAILED).unlink()
    _, meta = prepare_corpus(cfg, folder, 256)
    assert wait_for_corpus(cfg, folder, 256)[1] == meta
    assert meta["key"] == corpus_key(cfg, 256)


def test_a_tampered_index_is_refused(corpus, tmp_path):
    write_token_shards(iter(["abc", "def"]), ByteTokenizer(0, 1), tmp_path / "s")
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    index["shards"][0]["file"] = "../../etc/passwd"
    (tmp_path / "s" / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="bad shard"):
        read_index(tmp_path / "s")
    index["shards"][0].update(file="shard-000000.bin", tokens=99)
    (tmp_path / "s" / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="not 99 tokens long"):
        read_index(tmp_path / "s")


def test_a_source_error_under_worker_processes_is_raised_not_hung(tmp_path):
    def docs():
        for i in range(400):
            yield f"document {i}"
        raise DataError("corpus.jsonl:401 is not valid JSON")

    with pytest.raises(DataError, match="401 is not valid JSON"):
        write_token_shards(docs(), ByteTokenizer(0, 1), tmp_path / "s", workers=2, chunk_docs=16)
    assert not (tmp_path / "s" / "index.json").exists()  # no done-marker for a stream that failed
