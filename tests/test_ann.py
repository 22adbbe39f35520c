"""VectorIndex and quantization: exact search as the reference, recall and memory as promised."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings as st_quantize

from minist.ann import VectorIndex, recall_at_k
from minist.quantization import dequantize_int8, hamming_top_k, quantize_embeddings, unpack_binary
from minist.search import semantic_search

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def real(real_model):
    """The data/ corpus and its queries (plus 100 documents as extra queries), embedded by the real model."""
    docs = [json.loads(line)["text"] for line in (DATA / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(line)["query"] for line in (DATA / "queries.jsonl").read_text().splitlines()]
    return real_model.encode(docs), real_model.encode(queries + docs[:100])


def clustered(n: int, seed: int, dim: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    return (centres[rng.integers(0, 50, n)] + 0.7 * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_quantize_embeddings_equals_sentence_transformers(precision):
    embeddings = clustered(300, seed=0)
    np.testing.assert_array_equal(quantize_embeddings(embeddings, precision), st_quantize(embeddings, precision))


def test_dequantize_and_unpack_invert_within_a_bucket():
    embeddings = clustered(300, seed=1)
    quantized = quantize_embeddings(embeddings, "int8")
    ranges = np.vstack([embeddings.min(0), embeddings.max(0)])
    step = (ranges[1] - ranges[0]) / 255
    assert (np.abs(dequantize_int8(quantized, ranges) - embeddings) <= step + 1e-6).all()
    np.testing.assert_array_equal(unpack_binary(quantize_embeddings(embeddings, "binary"), 64),
                                  np.where(embeddings > 0, 1.0, -1.0))


def test_hamming_top_k_matches_a_brute_force_count():
    bits = quantize_embeddings(clustered(200, seed=2), "binary")
    ids, distances = hamming_top_k(bits[:7], bits, k=5)
    unpacked = np.unpackbits(bits.view(np.uint8), axis=1)
    brute = (unpacked[:7, None, :] != unpacked[None]).sum(-1)
    np.testing.assert_array_equal(distances.numpy(), np.sort(brute, axis=1)[:, :5])
    assert (ids[:, 0].numpy() == np.arange(7)).all()  # each finds itself at distance 0


def test_exact_float32_index_is_semantic_search(real):
    corpus, queries = real
    ours, exact = VectorIndex(corpus).search(queries, top_k=10), semantic_search(queries, corpus, top_k=10)
    assert [[h["corpus_id"] for h in row] for row in ours] == [[h["corpus_id"] for h in row] for row in exact]
    np.testing.assert_allclose([[h["score"] for h in row] for row in ours],
                               [[h["score"] for h in row] for row in exact], atol=1e-6)


def test_int8_with_rescoring_keeps_recall_at_a_quarter_of_the_memory(real):
    corpus, queries = real
    exact = semantic_search(queries, corpus, top_k=10)
    index = VectorIndex(corpus, precision="int8")
    assert index.memory_bytes * 4 == VectorIndex(corpus).memory_bytes
    assert recall_at_k(index.search(queries, top_k=10, rescore_multiplier=4), exact) >= 0.97
    assert recall_at_k(index.search(queries, top_k=10, rescore_multiplier=1), exact) < 0.97  # rescoring matters


def test_binary_is_32_times_smaller_and_rescoring_helps(real):
    corpus, queries = real
    exact = semantic_search(queries, corpus, top_k=10)
    index = VectorIndex(corpus, precision="binary")
    assert index.memory_bytes * 32 == VectorIndex(corpus).memory_bytes
    assert recall_at_k(index.search(queries, 10, 4), exact) > recall_at_k(index.search(queries, 10, 1), exact)


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_hnsw_recall_against_exact_search(precision):
    pytest.importorskip("usearch", reason="the ann extra is part of the test setup")
    corpus, queries = clustered(5000, seed=3), clustered(100, seed=4)
    exact = semantic_search(queries, corpus, top_k=10)
    hits = VectorIndex(corpus, precision=precision, method="hnsw").search(queries, top_k=10)
    assert recall_at_k(hits, exact) >= 0.95
    assert all(row == sorted(row, key=lambda h: -h["score"]) for row in hits)


def test_bad_input_and_missing_extra(monkeypatch):
    corpus = clustered(20, seed=5)
    with pytest.raises(ValueError, match="dimension 32 but the index holds 64"):
        VectorIndex(corpus).search(corpus[:, :32])
    with pytest.raises(ValueError, match="precision must be"):
        VectorIndex(corpus, precision="int4")
    assert VectorIndex(np.zeros((0, 64), np.float32)).search(corpus[:2]) == [[], []]
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    with pytest.raises(ImportError, match=r"minist\[ann\]"):
        VectorIndex(corpus, method="hnsw")


@pytest.mark.parametrize("method", ["exact", "hnsw"])
@pytest.mark.parametrize("precision", ["float32", "int8", "binary"])
def test_edge_cases_of_search_in_every_precision_and_method(precision, method):
    corpus = clustered(40, seed=3)
    index = VectorIndex(corpus, precision=precision, method=method)
    assert index.search(corpus[:3], top_k=0) == [[], [], []]
    assert index.search(np.zeros((0, 64), np.float32)) == []
    assert index.search([]) == []
    hits = index.search(corpus[:2], top_k=5)
    assert [len(row) for row in hits] == [5, 5]
    with pytest.raises(ValueError, match="top_k must be"):
        index.search(corpus[:2], top_k=-1)
    for bad in (np.nan, np.inf, -np.inf):
        query = corpus[:2].copy()
        query[1, 7] = bad
        with pytest.raises(ValueError, match="query_embeddings contain NaN or infinite"):
            index.search(query)
    empty = VectorIndex([], precision=precision, method=method)
    assert len(empty) == 0 and empty.search(corpus[:2]) == [[], []] and empty.search([]) == []
