"""semantic_search, paraphrase mining and community detection: the same results as sentence-transformers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import util as st_util

from minist import util

DATA = Path(__file__).resolve().parent.parent / "data"
SCORE_FUNCTIONS = ["cos_sim", "dot_score", "euclidean_sim", "manhattan_sim"]


def read_jsonl(name):
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def real(real_model):
    model = real_model
    corpus = model.encode([d["text"] for d in read_jsonl("corpus.jsonl")], convert_to_tensor=True)
    queries = model.encode([q["query"] for q in read_jsonl("queries.jsonl")], convert_to_tensor=True)
    return model, corpus, queries


def assert_same_hits(ours, theirs):
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours, theirs, strict=True):
        assert [h["corpus_id"] for h in mine] == [h["corpus_id"] for h in ref]
        np.testing.assert_allclose([h["score"] for h in mine], [h["score"] for h in ref], atol=1e-5, rtol=0)


@pytest.mark.parametrize("score", SCORE_FUNCTIONS)
@pytest.mark.parametrize(("query_chunk", "corpus_chunk"), [(100, 500000), (7, 13), (1, 1000)])
def test_semantic_search_matches_on_random_embeddings(score, query_chunk, corpus_chunk):
    generator = torch.Generator().manual_seed(0)
    queries, corpus = torch.randn(23, 32, generator=generator), torch.randn(301, 32, generator=generator)
    ours = util.semantic_search(queries, corpus, query_chunk, corpus_chunk, top_k=10,
                                score_function=getattr(util, score))
    theirs = st_util.semantic_search(queries, corpus, top_k=10, score_function=getattr(st_util, score))
    assert_same_hits(ours, theirs)
    assert all(len(hits) == 10 for hits in ours)


def test_semantic_search_matches_on_real_embeddings(real):
    _, corpus, queries = real
    ours = util.semantic_search(queries, corpus, query_chunk_size=4, corpus_chunk_size=37, top_k=20)
    assert_same_hits(ours, st_util.semantic_search(queries, corpus, top_k=20))


def test_real_search_finds_the_relevant_documents(real):
    _, corpus, queries = real
    hits = util.semantic_search(queries, corpus, top_k=10)
    docs, questions = read_jsonl("corpus.jsonl"), read_jsonl("queries.jsonl")
    topics = {d["id"]: d["topic"] for d in docs}
    for question, row in zip(questions, hits, strict=True):
        assert docs[row[0]["corpus_id"]]["topic"] == topics[question["relevant"][0]], question["query"]


def test_semantic_search_inputs_and_edge_cases():
    corpus = np.eye(4, dtype=np.float32)
    hits = util.semantic_search(np.array([1.0, 0.5, 0, 0], np.float32), corpus.tolist(), top_k=100)
    assert [h["corpus_id"] for h in hits[0]] == [0, 1, 2, 3]  # top_k past the corpus: all of it, sorted
    assert hits[0][0]["score"] == pytest.approx(1 / np.sqrt(1.25))
    assert util.semantic_search(corpus, np.zeros((0, 4), np.float32)) == [[], [], [], []]
    with pytest.raises(ValueError, match="dimension 4 but corpus_embeddings have 3"):
        util.semantic_search(corpus, corpus[:, :3])
    bad = corpus.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="corpus_embeddings contain NaN"):
        util.semantic_search(corpus, bad)
    with pytest.raises(ValueError, match="query_embeddings contain NaN"):
        util.semantic_search(bad, corpus)


def test_semantic_search_empty_inputs_and_top_k():
    """An empty list is no vectors, not one vector of length 0; top_k=0 finds nothing; a bad query is named."""
    corpus = np.eye(4, dtype=np.float32)
    assert util.semantic_search(corpus[:2], corpus, top_k=0) == [[], []]
    assert util.semantic_search([], corpus) == [] == util.semantic_search(np.zeros((0, 4), np.float32), corpus)
    assert util.semantic_search(corpus[:2], []) == [[], []]
    assert util.paraphrase_mining_embeddings([]) == []
    with pytest.raises(ValueError, match="top_k must be at least 0, not -1"):
        util.semantic_search(corpus, corpus, top_k=-1)
    for bad in (np.nan, np.inf):
        queries = corpus[:2].copy()
        queries[0, 0] = bad
        for corpus_side, top_k in ((corpus, 3), (corpus, 0), ([], 3)):  # also when nothing would be scored
            with pytest.raises(ValueError, match="query_embeddings contain NaN or infinite"):
                util.semantic_search(queries, corpus_side, top_k=top_k)


@pytest.mark.parametrize(("top_k", "max_pairs", "chunks"), [(100, 500000, (5000, 100000)), (3, 40, (17, 29))])
def test_paraphrase_mining_matches(real, top_k, max_pairs, chunks):
    _, corpus, _ = real
    ours = util.paraphrase_mining_embeddings(corpus, *chunks, max_pairs=max_pairs, top_k=top_k)
    theirs = st_util.paraphrase_mining_embeddings(corpus, *chunks, max_pairs=max_pairs, top_k=top_k)
    theirs = sorted(theirs, key=lambda p: (-p[0], p[1], p[2]))  # equal scores in (i, j) order, as ours
    assert [pair[1:] for pair in ours] == [pair[1:] for pair in theirs]
    np.testing.assert_allclose([p[0] for p in ours], [p[0] for p in theirs], atol=1e-5, rtol=0)


def test_paraphrase_mining_from_sentences(real, st_real_model):

    model, _, _ = real
    sentences = ["A cat sits on the mat.", "The stock market fell today.", "A kitten is sitting on a rug.",
                 "Shares dropped sharply this afternoon."]
    pairs = util.paraphrase_mining(model, sentences)
    assert {tuple(p[1:]) for p in pairs[:2]} == {(0, 2), (1, 3)}
    theirs = st_util.paraphrase_mining(st_real_model, sentences)
    assert [p[1:] for p in pairs] == [p[1:] for p in theirs]
    np.testing.assert_allclose([p[0] for p in pairs], [p[0] for p in theirs], atol=1e-5)


@pytest.mark.parametrize(("threshold", "size"), [(0.75, 10), (0.5, 3), (0.3, 20)])
def test_community_detection_matches_on_real_embeddings(real, threshold, size):
    _, corpus, _ = real
    ours = util.community_detection(corpus, threshold=threshold, min_community_size=size, batch_size=50)
    assert ours == st_util.community_detection(corpus, threshold=threshold, min_community_size=size)


def test_community_detection_on_planted_clusters():
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 64, generator=generator)
    points = torch.cat([c + 0.1 * torch.randn(15, 64, generator=generator) for c in centres])
    points = torch.cat([points, torch.randn(10, 64, generator=generator)])  # ten loners
    ours = util.community_detection(points, threshold=0.8, min_community_size=5)
    assert sorted(sorted(c) for c in ours) == [list(range(0, 15)), list(range(15, 30)), list(range(30, 45))]
    assert ours == st_util.community_detection(points, threshold=0.8, min_community_size=5)
    assert util.community_detection(points[:3], min_community_size=5) == []
    assert util.community_detection(np.zeros((0, 8))) == []


@pytest.mark.parametrize(("query_chunk", "corpus_chunk"), [(7, 13), (100, 500000), (1, 5000)])
def test_no_score_matrix_exceeds_the_chunk_bound(query_chunk, corpus_chunk):
    generator = torch.Generator().manual_seed(2)
    queries, corpus = torch.randn(300, 8, generator=generator), torch.randn(9000, 8, generator=generator)
    shapes = []

    def recording_dot(a, b):
        shapes.append((len(a), len(b)))
        return util.dot_score(a, b)

    hits = util.semantic_search(queries, corpus, query_chunk, corpus_chunk, top_k=5, score_function=recording_dot)
    assert max(rows * cols for rows, cols in shapes) <= query_chunk * corpus_chunk
    assert_same_hits(hits, st_util.semantic_search(queries, corpus, top_k=5, score_function=st_util.dot_score))
