"""EmbeddingCache: what it stores equals a fresh encode, it grows without re-encoding, it refuses strangers."""

import numpy as np
import pytest
from conftest import TINY_SENTENCES, build_st_model

from minist import SentenceTransformer
from minist.cache import EmbeddingCache, model_fingerprint
from minist.search import semantic_search


@pytest.fixture(scope="module")
def model(tiny_st_dir):
    return SentenceTransformer(tiny_st_dir, device="cpu")


@pytest.fixture
def counting(model, monkeypatch):
    """Records every text the model is asked to encode."""
    seen, encode = [], model.encode

    def recording_encode(texts, **kwargs):
        seen.extend(texts)
        return encode(texts, **kwargs)

    monkeypatch.setattr(model, "encode", recording_encode)
    return seen


def test_stores_what_encode_gives_and_reopens_memory_mapped(tmp_path, model):
    cache = EmbeddingCache(tmp_path / "c", model)
    assert cache.add(TINY_SENTENCES[:6]) == 6
    expected = model.encode(TINY_SENTENCES[:6], normalize_embeddings=True)
    np.testing.assert_array_equal(cache.embeddings, expected)
    reopened = EmbeddingCache(tmp_path / "c", model)
    assert isinstance(reopened.embeddings, np.memmap) and reopened.texts == TINY_SENTENCES[:6]
    np.testing.assert_array_equal(reopened.embeddings, expected)


def test_grows_without_re_encoding(tmp_path, model, counting):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES[:5])
    counting.clear()
    assert EmbeddingCache(tmp_path / "c", model).add(TINY_SENTENCES + TINY_SENTENCES[:2]) == 5
    assert counting == TINY_SENTENCES[5:]  # only the unseen texts, each once
    reopened = EmbeddingCache(tmp_path / "c", model)
    assert len(reopened) == len(TINY_SENTENCES) and reopened.texts == TINY_SENTENCES
    np.testing.assert_allclose(reopened.embeddings, model.encode(TINY_SENTENCES, normalize_embeddings=True),
                               atol=1e-6)


def test_refuses_a_cache_made_by_another_model(tmp_path, model, tiny_hf_dir):
    EmbeddingCache(tmp_path / "c", model).add(["the cat"])
    other_folder = tmp_path / "other"
    build_st_model(tiny_hf_dir, seed=1).save(str(other_folder))  # same architecture, other Dense weights
    other = SentenceTransformer(other_folder, device="cpu")
    assert model_fingerprint(other) != model_fingerprint(model)
    with pytest.raises(ValueError, match="embeddings made by another model"):
        EmbeddingCache(tmp_path / "c", other)
    with pytest.raises(ValueError, match="normalize_embeddings=True"):
        EmbeddingCache(tmp_path / "c", model, normalize_embeddings=False)


def test_fingerprint_sees_settings_too(model):
    before = model_fingerprint(model)
    model.max_seq_length = 8
    try:
        assert model_fingerprint(model) != before
    finally:
        model.max_seq_length = 16
    assert model_fingerprint(model) == before


def test_fingerprint_sees_quantize(tmp_path, model, tiny_st_dir):
    """int8 changes weights; bf16 changes only the arithmetic, and must still count as another model."""
    EmbeddingCache(tmp_path / "c", model).add(["the cat"])
    for quantize in ("int8", "bf16"):
        other = SentenceTransformer(tiny_st_dir, device="cpu", quantize=quantize)
        assert model_fingerprint(other) != model_fingerprint(model)
        with pytest.raises(ValueError, match="embeddings made by another model"):
            EmbeddingCache(tmp_path / "c", other)


def test_a_crashed_append_is_ignored_and_overwritten(tmp_path, model):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES[:3])
    with open(tmp_path / "c" / "embeddings.f32", "ab") as f:  # half a row: the crash came mid-write
        f.write(b"\x00" * 20)
    with open(tmp_path / "c" / "texts.jsonl", "a") as f:
        f.write('"half writ')
    reopened = EmbeddingCache(tmp_path / "c", model)
    assert len(reopened) == 3 and reopened.texts == TINY_SENTENCES[:3]
    reopened.add(TINY_SENTENCES[3:5])
    again = EmbeddingCache(tmp_path / "c", model)
    assert again.texts == TINY_SENTENCES[:5]
    np.testing.assert_allclose(again.embeddings, model.encode(TINY_SENTENCES[:5], normalize_embeddings=True),
                               atol=1e-6)


def test_search_returns_texts_and_matches_semantic_search(tmp_path, model):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES)
    hits = cache.search("the cat sat on the mat", top_k=3)
    assert hits[0]["text"] == "the cat sat on the mat" and hits[0]["score"] == pytest.approx(1, abs=1e-5)
    direct = semantic_search(model.encode(["the cat sat on the mat"]), cache.embeddings, top_k=3)[0]
    assert [h["corpus_id"] for h in hits] == [h["corpus_id"] for h in direct]
    assert EmbeddingCache(tmp_path / "empty", model).search(["anything"]) == [[]]
