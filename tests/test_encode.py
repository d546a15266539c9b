import numpy as np
import pytest

from redheart.config import EncoderConfig
from redheart.core.atomic import write_jsonl
from redheart.core.rundir import RunDir
from redheart.data.embedding_cache import EmbeddingCache, default_cache_dir
from redheart.data.encode import encode_run, encode_texts, format_encode_summary, load_embeddings
from redheart.data.encoders import HashingEncoder, build_encoder, document_text

CONFIG = EncoderConfig(name="hashing", dim=32, window_tokens=4, max_segments=3)
RECORDS = [
    {"id": "a", "title": "AITA for skipping the wedding?", "text": "My cousin invited my ex and I refused to go."},
    {"id": "b", "title": "", "text": "I ate my roommate's leftovers."},
    {"id": "c", "title": "WIBTA", "text": "if I told my boss about my coworker sleeping on shift"},
]


class CountingEncoder(HashingEncoder):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        self.seen: list[list[str]] = []

    def encode(self, texts, progress=True):
        self.seen.append(list(texts))
        return super().encode(texts, progress)


def test_second_encode_is_served_from_cache_bit_identical(tmp_path):
    texts = [document_text(r) for r in RECORDS]
    first = CountingEncoder(CONFIG)
    vectors, mask = encode_texts(texts, first, tmp_path)
    assert first.seen == [texts]
    second = CountingEncoder(CONFIG)
    cached_vectors, cached_mask = encode_texts(texts, second, tmp_path)
    assert second.seen == []
    assert cached_vectors.tobytes() == vectors.tobytes() and np.array_equal(cached_mask, mask)
    assert mask.sum(1).tolist() == [3, 2, 3]


def test_only_misses_are_encoded_and_repeats_once(tmp_path):
    encoder = CountingEncoder(CONFIG)
    encode_texts(["one text", "two text"], encoder, tmp_path)
    vectors, _ = encode_texts(["one text", "new text", "new text"], encoder, tmp_path)
    assert encoder.seen[-1] == ["new text"]
    assert np.array_equal(vectors[1], vectors[2])


def test_cache_keeps_encoders_apart(tmp_path):
    small = build_encoder(EncoderConfig(name="hashing", dim=8))
    large = build_encoder(EncoderConfig(name="hashing", dim=16))
    assert encode_texts(["same text"], small, tmp_path)[0].shape == (1, 4, 8)
    assert encode_texts(["same text"], large, tmp_path)[0].shape == (1, 4, 16)
    with EmbeddingCache(tmp_path) as cache:
        assert cache.path.parent == tmp_path


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("REDHEART_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"


def test_encode_run_writes_readable_embeddings_and_reuses_cache(tmp_path):
    run = RunDir(tmp_path / "run")
    write_jsonl(run.clean_records, RECORDS)
    summary = encode_run(run, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    assert (summary.texts, summary.cache_hits, summary.encoded) == (3, 0, 3)
    ids, vectors, mask = load_embeddings(run, expected_key=summary.encoder_key)
    assert ids == ["a", "b", "c"]
    expected, expected_mask = build_encoder(CONFIG).encode([document_text(r) for r in RECORDS], progress=False)
    assert np.array_equal(vectors, expected) and np.array_equal(mask, expected_mask)

    again = encode_run(run, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    assert (again.cache_hits, again.encoded) == (3, 0)
    assert "3 texts, 3 cache hits, 0 encoded" in format_encode_summary(again)
    with pytest.raises(ValueError, match="expected 'minilm"):
        load_embeddings(run, expected_key="minilm-l6-v2-w128-s4")


def test_encode_run_names_the_bad_record(tmp_path):
    run = RunDir(tmp_path / "run")
    write_jsonl(run.clean_records, [RECORDS[0], {"id": "broken", "title": "t", "text": 42}])
    with pytest.raises(ValueError, match=r"record 'broken': field 'text'"):
        encode_run(run, CONFIG, cache_dir=tmp_path / "cache", progress=False)
    write_jsonl(run.clean_records, [RECORDS[0], RECORDS[0]])
    with pytest.raises(ValueError, match=r"record 'a': field 'id' is a duplicate"):
        encode_run(run, CONFIG, cache_dir=tmp_path / "cache", progress=False)
