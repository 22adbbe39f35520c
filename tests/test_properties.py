"""Property-based tests: every public entry point against a reference, on inputs that hypothesis invents.

References: sentence-transformers itself (encode, saved folders), numpy in float64 (similarity), brute
force over the full score matrix (semantic_search, paraphrase mining, VectorIndex). Runs are derandomized
(the same examples on every run) and bounded, so the file takes well under a minute on two cores.
"""

import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sentence_transformers import SentenceTransformer as STModel

from minist import SentenceTransformer, similarity
from minist.ann import VectorIndex
from minist.cache import EmbeddingCache
from minist.search import paraphrase_mining_embeddings, semantic_search

# Repeatable and bounded: the same examples on every run, no example database, no per-example deadline.
FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None)

# Characters that tokenizers, JSON lines and str.splitlines treat specially, so that they show up often.
SPECIAL = ["\u2028", "\u2029", "\u0085", "\r", "\n", "\r\n", "\x00", "\x0b", "\x0c", "\x1c", "\t", " ", "\ufeff",
           "\u200b", "🙂", "👩‍👩‍👧", "🇫🇷", "e\u0301", "\u0301", "\u0308\u0308", "ﬁ", "Å", "你好", "the", "cat",
           "##s", "[CLS]", "[SEP]", "[PAD]", "[UNK]", '"', "\\", "the " * 20]
# All of Unicode except the surrogates (Cs), which no valid str holds on its own.
VALID_CHAR = st.characters(exclude_categories=["Cs"])
TEXT = st.lists(st.one_of(st.sampled_from(SPECIAL), st.text(VALID_CHAR, max_size=6)), max_size=6).map("".join)
TEXTS = st.lists(TEXT, max_size=8)
LONE_SURROGATE = st.characters(categories=["Cs"])

ELEMENT = st.floats(-10, 10, width=32, allow_subnormal=False)
EPS = 1e-12  # torch.nn.functional.normalize's floor on the norm: a zero row stays zero


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a busy 2-core machine: one torch thread encodes ~15x faster than two contending."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tiny_st_dir):
    return SentenceTransformer(tiny_st_dir, device="cpu")


@pytest.fixture(scope="module")
def st_model(tiny_st_dir):
    return STModel(str(tiny_st_dir), device="cpu")


@st.composite
def matrices(draw, rows, dim: int) -> np.ndarray:
    """A (rows, dim) float32 matrix of finite values, some of its rows zero."""
    n = draw(rows) if isinstance(rows, st.SearchStrategy) else rows
    matrix = draw(arrays(np.float32, (n, dim), elements=ELEMENT))
    matrix[draw(st.lists(st.booleans(), min_size=n, max_size=n))] = 0
    return matrix


def unit(matrix: np.ndarray) -> np.ndarray:
    """Rows divided by max(norm, 1e-12), in float64: sentence-transformers' normalization."""
    matrix = matrix.astype(np.float64)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=-1, keepdims=True), EPS)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return unit(a) @ unit(b).T


def names_item(index: int) -> str:
    return rf"\bitem {index}\b"


# --- encode --------------------------------------------------------------------------------------------


@FAST
@given(texts=TEXTS, batch_size=st.none() | st.integers(1, 8), max_batch_tokens=st.none() | st.integers(1, 64),
       normalize=st.booleans())
def test_encode_any_unicode_list_equals_sentence_transformers(model, st_model, texts, batch_size, max_batch_tokens,
                                                              normalize):
    """However the texts are cut into batches, each row is sentence-transformers' row for that text."""
    got = model.encode(texts, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                       normalize_embeddings=normalize)
    assert got.shape == (len(texts), 8) and got.dtype == np.float32 and np.isfinite(got).all()
    if texts:
        np.testing.assert_allclose(got, st_model.encode(texts, normalize_embeddings=normalize), atol=1e-5, rtol=0)


@settings(FAST, max_examples=25)
@given(text=TEXT)
def test_encode_one_string_is_one_vector(model, st_model, text):
    got = model.encode(text)
    assert got.shape == (8,) and np.isfinite(got).all()
    np.testing.assert_allclose(got, st_model.encode(text), atol=1e-5, rtol=0)


@settings(FAST, max_examples=30)
@given(texts=TEXTS, data=st.data())
def test_encode_names_the_item_with_a_lone_surrogate(model, texts, data):
    index = data.draw(st.integers(0, len(texts)))
    bad = data.draw(TEXT) + data.draw(LONE_SURROGATE) + data.draw(TEXT)
    with pytest.raises(ValueError, match=names_item(index)):
        model.encode([*texts[:index], bad, *texts[index:]])
    with pytest.raises(ValueError):
        model.encode(bad)


@settings(FAST, max_examples=30)
@given(texts=TEXTS, data=st.data())
def test_encode_names_the_item_that_is_not_a_string(model, texts, data):
    index = data.draw(st.integers(0, len(texts)))
    bad = data.draw(st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=4),
                              st.lists(TEXT, max_size=2), st.tuples(TEXT)))
    with pytest.raises(TypeError, match=names_item(index)):
        model.encode([*texts[:index], bad, *texts[index:]])


# --- similarity ----------------------------------------------------------------------------------------


def reference_scores(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The (n, m) matrix of ``name`` in float64 numpy."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    difference = a[:, None, :] - b[None, :, :]
    return {"cos_sim": lambda: cosines(a, b), "dot_score": lambda: a @ b.T,
            "euclidean_sim": lambda: -np.sqrt((difference**2).sum(-1)),
            "manhattan_sim": lambda: -np.abs(difference).sum(-1)}[name]()


def tolerance(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 rounding allowance per entry: relative to the magnitudes summed (cosines are bounded by 1)."""
    if name == "cos_sim":
        return np.full((len(a), len(b)), 1e-5)
    magnitude = np.abs(a.astype(np.float64))[:, None, :] + np.abs(b.astype(np.float64))[None, :, :]
    scale = (magnitude**2).sum(-1) if name == "dot_score" else magnitude.sum(-1)
    return 1e-5 * (1 + scale)


CONVERSIONS = {"numpy": lambda x: x, "float64": lambda x: x.astype(np.float64), "tensor": torch.from_numpy,
               "list": lambda x: x.tolist()}


@settings(FAST, max_examples=60)
@given(dim=st.integers(1, 8), data=st.data(), name=st.sampled_from(["cos_sim", "dot_score", "euclidean_sim",
                                                                   "manhattan_sim"]))
def test_similarity_matrices_equal_numpy(dim, data, name):
    a, b = data.draw(matrices(st.integers(0, 6), dim)), data.draw(matrices(st.integers(0, 6), dim))
    convert = data.draw(st.sampled_from(sorted(CONVERSIONS) if len(a) and len(b) else ["numpy", "tensor"]))
    got = getattr(similarity, name)(CONVERSIONS[convert](a), CONVERSIONS[convert](b))
    assert isinstance(got, torch.Tensor) and got.shape == (len(a), len(b))
    difference = np.abs(got.double().numpy() - reference_scores(name, a, b))
    assert (difference <= tolerance(name, a, b)).all(), (difference, a, b)
    if len(a):  # a 1-D input is one row
        one_row = getattr(similarity, name)(CONVERSIONS[convert](a[0]), CONVERSIONS[convert](b))
        torch.testing.assert_close(one_row, got[:1], atol=1e-6, rtol=1e-6)


@settings(FAST, max_examples=60)
@given(dim=st.integers(1, 8), rows=st.integers(0, 6), data=st.data(),
       name=st.sampled_from(["cos_sim", "dot_score", "euclidean_sim", "manhattan_sim"]))
def test_pairwise_similarities_equal_the_matrix_diagonal_in_numpy(dim, rows, data, name):
    a, b = data.draw(matrices(rows, dim)), data.draw(matrices(rows, dim))
    convert = data.draw(st.sampled_from(sorted(CONVERSIONS) if rows else ["numpy", "tensor"]))
    got = getattr(similarity, f"pairwise_{name}")(CONVERSIONS[convert](a), CONVERSIONS[convert](b))
    assert isinstance(got, torch.Tensor) and got.shape == (rows,)
    difference = np.abs(got.double().numpy() - np.diagonal(reference_scores(name, a, b)))
    assert (difference <= np.diagonal(tolerance(name, a, b))).all(), (difference, a, b)


def test_cosine_of_a_zero_row_is_zero():
    zero, other = np.zeros((1, 3), np.float32), np.array([[1.0, -2.0, 0.5]], np.float32)
    assert similarity.cos_sim(zero, other).tolist() == [[0.0]]
    assert similarity.pairwise_cos_sim(zero, other).tolist() == [0.0]


# --- semantic_search and paraphrase mining -------------------------------------------------------------


def assert_hits_are_the_brute_force_best(hits: list[list[dict]], scores: np.ndarray, top_k: int, atol: np.ndarray):
    """Per query: min(top_k, corpus) distinct valid ids, sorted by score, scores equal to the brute-force best.

    Tied scores may come in any id order, so ids are checked through their own brute-force score.
    """
    assert len(hits) == len(scores)
    for row, reference, tol in zip(hits, scores, atol, strict=True):
        ids, got = [h["corpus_id"] for h in row], np.array([h["score"] for h in row])
        assert len(row) == min(top_k, len(reference))
        assert len(set(ids)) == len(ids) and all(0 <= i < len(reference) for i in ids)
        assert (np.diff(got) <= 0).all(), got
        assert (np.abs(got - np.sort(reference)[::-1][:len(row)]) <= tol[:len(row)]).all(), (got, reference)
        assert (np.abs(got - reference[ids]) <= tol[:len(row)]).all(), (ids, got, reference)


@settings(FAST, max_examples=60)
@given(dim=st.integers(1, 8), data=st.data(), top_k=st.integers(0, 35), cosine=st.booleans(),
       chunks=st.tuples(st.integers(1, 8), st.integers(1, 40)))
def test_semantic_search_equals_brute_force(dim, data, top_k, cosine, chunks):
    queries, corpus = data.draw(matrices(st.integers(0, 5), dim)), data.draw(matrices(st.integers(0, 30), dim))
    score_function = similarity.cos_sim if cosine else similarity.dot_score
    hits = semantic_search(queries, corpus, *chunks, top_k=top_k, score_function=score_function)
    if cosine:
        reference, atol = cosines(queries, corpus), np.full((len(queries), len(corpus)), 1e-5)
    else:
        reference, atol = reference_scores("dot_score", queries, corpus), tolerance("dot_score", queries, corpus)
    # The i-th best score may differ from the i-th reference by any row's rounding: use the widest per query.
    atol = np.broadcast_to(atol.max(axis=1, initial=0)[:, None], atol.shape)
    assert_hits_are_the_brute_force_best(hits, reference, top_k, atol)


@settings(FAST, max_examples=25)
@given(dim=st.integers(1, 8), data=st.data())
def test_semantic_search_top_k_zero_gives_one_empty_list_per_query(dim, data):
    queries, corpus = data.draw(matrices(st.integers(0, 5), dim)), data.draw(matrices(st.integers(0, 30), dim))
    assert semantic_search(queries, corpus, top_k=0) == [[] for _ in queries]


@settings(FAST, max_examples=25)
@given(dim=st.integers(1, 8), data=st.data(), top_k=st.integers(0, 35))
def test_semantic_search_empty_query_batch_gives_empty_list(dim, data, top_k):
    corpus = data.draw(matrices(st.integers(0, 30), dim))
    assert semantic_search(np.zeros((0, dim), np.float32), corpus, top_k=top_k) == []
    assert semantic_search([], corpus, top_k=top_k) == []


@settings(FAST, max_examples=25)
@given(dim=st.integers(1, 8), data=st.data(), top_k=st.integers(-5, -1))
def test_semantic_search_negative_top_k_raises(dim, data, top_k):
    queries, corpus = data.draw(matrices(st.integers(0, 5), dim)), data.draw(matrices(st.integers(0, 30), dim))
    with pytest.raises(ValueError):
        semantic_search(queries, corpus, top_k=top_k)


@settings(FAST, max_examples=25)
@given(dim=st.integers(1, 8), data=st.data(), top_k=st.integers(0, 35),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_semantic_search_refuses_non_finite_queries(dim, data, top_k, bad):
    queries, corpus = data.draw(matrices(st.integers(1, 5), dim)), data.draw(matrices(st.integers(0, 30), dim))
    queries[data.draw(st.integers(0, len(queries) - 1)), data.draw(st.integers(0, dim - 1))] = bad
    with pytest.raises(ValueError):
        semantic_search(queries, corpus, top_k=top_k)


@settings(FAST, max_examples=40)
@given(dim=st.integers(1, 8), data=st.data(), extra_k=st.integers(0, 5),
       chunks=st.tuples(st.integers(1, 8), st.integers(1, 20)))
def test_paraphrase_mining_with_large_top_k_finds_all_pairs(dim, data, extra_k, chunks):
    embeddings = data.draw(matrices(st.integers(0, 12), dim))
    n = len(embeddings)
    pairs = paraphrase_mining_embeddings(embeddings, *chunks, top_k=n + extra_k)
    reference = cosines(embeddings, embeddings)
    assert sorted((i, j) for _, i, j in pairs) == [(i, j) for i in range(n) for j in range(i + 1, n)]
    scores = np.array([score for score, _, _ in pairs])
    assert (np.diff(scores) <= 0).all()
    np.testing.assert_allclose(scores, [reference[i, j] for _, i, j in pairs], atol=1e-5, rtol=0)
    # max_pairs keeps the best pairs: their scores are the brute-force best scores.
    max_pairs = data.draw(st.integers(1, max(1, n * (n - 1) // 2)))
    best = paraphrase_mining_embeddings(embeddings, *chunks, max_pairs=max_pairs, top_k=n + extra_k)
    all_scores = np.sort(reference[np.triu_indices(n, k=1)])[::-1]
    np.testing.assert_allclose([score for score, _, _ in best], all_scores[:max_pairs], atol=1e-5, rtol=0)


# --- EmbeddingCache ------------------------------------------------------------------------------------


@settings(FAST, max_examples=25)
@given(pool=st.lists(TEXT, min_size=1, max_size=6, unique=True), data=st.data())
def test_cache_round_trips_any_unicode_in_first_seen_order(model, pool, data):
    batches = data.draw(st.lists(st.lists(st.sampled_from(pool), max_size=5), min_size=1, max_size=4))
    expected = list(dict.fromkeys(text for batch in batches for text in batch))
    with tempfile.TemporaryDirectory() as folder:
        cache, seen = EmbeddingCache(folder, model), set()
        for batch in batches:
            assert cache.add(batch) == len(set(batch) - seen)
            seen |= set(batch)
        reopened = EmbeddingCache(folder, model)
        assert reopened.texts == expected and len(reopened) == len(expected)
        if expected:
            np.testing.assert_allclose(reopened.embeddings, model.encode(expected, normalize_embeddings=True),
                                       atol=1e-6, rtol=0)
            # Its search is semantic_search over those rows, each hit carrying its text.
            query = data.draw(TEXT)
            hits = reopened.search(query, top_k=3)
            reference = cosines(model.encode([query]), reopened.embeddings)
            assert_hits_are_the_brute_force_best([hits], reference, 3, np.full(reference.shape, 1e-5))
            assert all(hit["text"] == expected[hit["corpus_id"]] for hit in hits)


@settings(FAST, max_examples=25)
@given(text=TEXT)
def test_cache_add_takes_a_string_as_one_text(model, text):
    with tempfile.TemporaryDirectory() as folder:
        cache = EmbeddingCache(folder, model)
        assert cache.add(text) == 1 and cache.add(text) == 0
        reopened = EmbeddingCache(folder, model)
        assert reopened.texts == [text] and reopened.embeddings.shape == (1, 8)


# What a model may hand the cache for a chunk of texts: the right rows in some float dtype (stored as float32),
# or a fault that the cache must refuse before writing anything, with what is wrong in the message.
GOOD = ["float32", "float64", "float16", "list"]
BAD = {"wider": "shape", "narrower": "shape", "a row short": "shape", "a row more": "shape", "flat": "shape",
       "3-d": "shape", "NaN": "not finite", "inf": "not finite", "past float32": "not finite", "int8": "int8 values",
       "bool": "bool values"}


def handed(rows: np.ndarray, kind: str, at: int):
    """The (texts, 8) float32 ``rows`` as a model that goes wrong in the way ``kind`` says hands them over."""
    poisoned = rows.copy()
    poisoned.flat[at] = np.nan if kind == "NaN" else -np.inf
    return {"float32": rows, "float64": rows.astype(np.float64), "float16": rows.astype(np.float16),
            "list": rows.tolist(), "wider": np.hstack([rows, rows]), "narrower": rows[:, :4], "a row short": rows[1:],
            "a row more": np.vstack([rows, rows[:1]]), "flat": rows.reshape(-1), "3-d": rows[None], "NaN": poisoned,
            "inf": poisoned, "past float32": rows.astype(np.float64) * 1e300, "int8": (rows * 50).astype(np.int8),
            "bool": rows > 0}[kind]


@settings(FAST, max_examples=30)
@given(batches=st.lists(st.lists(st.integers(0, 11), max_size=6), min_size=1, max_size=5),
       chunk_size=st.none() | st.integers(1, 4), data=st.data())
def test_cache_never_commits_a_bad_chunk_and_reopens_with_every_acknowledged_row(model, batches, chunk_size, data):
    texts, stored, calls = [f"text {i}" for i in range(12)], {}, []  # stored: text -> its row, in commit order

    def encode_document(chunk, **kwargs):  # a model that hands each chunk over right, or wrong, at random
        rows = np.stack([np.random.default_rng(texts.index(t)).standard_normal(8, dtype=np.float32) for t in chunk])
        kind = data.draw(st.sampled_from([*GOOD, *BAD]), label="what the model hands over")
        calls.append((chunk, kind, np.asarray(handed(rows, kind, 0), np.float32) if kind in GOOD else None))
        return handed(rows, kind, data.draw(st.integers(0, rows.size - 1)))

    with tempfile.TemporaryDirectory() as folder, mock.patch.object(model, "encode_document", encode_document):
        cache = EmbeddingCache(folder, model)
        for batch in batches:
            calls.clear()
            try:
                cache.add([texts[i] for i in batch], chunk_size=chunk_size)
                assert all(kind in GOOD for _, kind, _ in calls)
            except ValueError as error:  # refused at the first bad chunk, naming what is wrong
                assert calls[-1][1] in BAD and all(kind in GOOD for _, kind, _ in calls[:-1])
                assert BAD[calls[-1][1]] in str(error) and "Nothing of it was written" in str(error)
            for chunk, _, rows in (call for call in calls if call[1] in GOOD):  # acknowledged: committed
                stored.update(zip(chunk, rows, strict=True))
            for reader in (cache, EmbeddingCache(folder, model)):  # this object, and the folder opened again
                assert reader.texts == list(stored)
                np.testing.assert_array_equal(reader.embeddings, np.array(list(stored.values())).reshape(-1, 8))


# --- save and reload -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """The model saved by minist, reloaded by minist and by sentence-transformers; saved again from the reload."""
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save(folder)
    model.save(folder)  # saving over a saved model replaces it
    reloaded = SentenceTransformer(folder, device="cpu")
    again = Path(folder).with_name("again")
    reloaded.save(again)
    return reloaded, SentenceTransformer(again, device="cpu"), STModel(str(folder), device="cpu")


@settings(FAST, max_examples=25)
@given(texts=st.lists(TEXT, min_size=1, max_size=8))
def test_saved_model_encodes_identically(model, saved, texts):
    reloaded, reloaded_twice, theirs = saved
    expected = model.encode(texts)
    np.testing.assert_array_equal(reloaded.encode(texts), expected)
    np.testing.assert_array_equal(reloaded_twice.encode(texts), expected)
    np.testing.assert_allclose(theirs.encode(texts), expected, atol=1e-6, rtol=0)


# --- VectorIndex ---------------------------------------------------------------------------------------


@settings(FAST, max_examples=40)
@given(dim=st.integers(1, 8), data=st.data(), top_k=st.integers(0, 35))
def test_exact_float32_index_equals_semantic_search(dim, data, top_k):
    queries, corpus = data.draw(matrices(st.integers(0, 5), dim)), data.draw(matrices(st.integers(0, 30), dim))
    hits = VectorIndex(corpus).search(queries, top_k=top_k)
    expected = semantic_search(queries, corpus, top_k=top_k)
    assert [len(row) for row in hits] == [len(row) for row in expected]
    for row, reference in zip(hits, expected, strict=True):
        np.testing.assert_allclose([h["score"] for h in row], [h["score"] for h in reference], atol=1e-5, rtol=0)
    assert_hits_are_the_brute_force_best(hits, cosines(queries, corpus), top_k,
                                         np.full((len(queries), len(corpus)), 1e-5))


@settings(FAST, max_examples=25)
@given(dim=st.integers(1, 8), data=st.data(), top_k=st.integers(1, 35),
       precision=st.sampled_from(["int8", "binary"]))
def test_quantized_exact_index_returns_sorted_distinct_hits(dim, data, top_k, precision):
    # int8 ranges come from the corpus itself, so it needs two rows (one is a documented ValueError).
    queries, corpus = data.draw(matrices(st.integers(1, 5), dim)), data.draw(matrices(st.integers(2, 30), dim))
    hits = VectorIndex(corpus, precision=precision).search(queries, top_k=top_k)
    assert len(hits) == len(queries)
    # A binary vector stands for its signs, scaled to unit length; the float query scores against that.
    signs = np.where(unit(corpus) > 0, 1.0, -1.0) / np.sqrt(dim)
    for row, query in zip(hits, unit(queries), strict=True):
        ids, scores = [h["corpus_id"] for h in row], [h["score"] for h in row]
        assert len(row) == min(top_k, len(corpus)) and len(set(ids)) == len(ids)
        assert all(0 <= i < len(corpus) for i in ids) and (np.diff(scores) <= 0).all()
        if precision == "binary":
            np.testing.assert_allclose(scores, signs[ids] @ query, atol=1e-5, rtol=0)


def has_usearch() -> bool:
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        return False
    return True


METHODS = ["exact", pytest.param("hnsw", marks=pytest.mark.skipif(not has_usearch(), reason="needs usearch"))]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("precision", ["float32", "int8", "binary"])
@settings(FAST, max_examples=10)
@given(dim=st.integers(1, 8), data=st.data(), top_k=st.integers(1, 35),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_index_refuses_non_finite_queries(precision, method, dim, data, top_k, bad):
    queries, corpus = data.draw(matrices(st.integers(1, 5), dim)), data.draw(matrices(st.integers(2, 20), dim))
    queries[data.draw(st.integers(0, len(queries) - 1)), data.draw(st.integers(0, dim - 1))] = bad
    index = VectorIndex(corpus, precision=precision, method=method)
    with pytest.raises(ValueError):
        index.search(queries, top_k=top_k)
