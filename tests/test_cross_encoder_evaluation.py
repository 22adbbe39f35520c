"""The cross-encoder evaluators give sentence-transformers' metrics, CSV files and errors; one hand-checked case.

Both evaluators score the SAME model: sentence-transformers' CrossEncoder (MiniLM with a random head, seeded), or a
stand-in whose integer scores tie often; then minist's CrossEncoder on the same folder.
"""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sentence_transformers import CrossEncoder as STCrossEncoder
from sentence_transformers.cross_encoder import evaluation as st_evaluation

from minist import InputExample
from minist.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator as CorrelationEvaluator
from minist.cross_encoder.evaluation import CrossEncoderRerankingEvaluator as RerankingEvaluator
from minist.cross_encoder.evaluation import rerank_metrics

DATA = Path(__file__).resolve().parent.parent / "data"


def read(name):
    return [json.loads(line) for line in (DATA / "bikefix" / name).read_text().splitlines()]


def reranking_samples(mode: str) -> list[dict]:
    """10 test questions: the positive is the question's answer; 6 other answers are its negatives, or with
    ``mode="documents"`` a first-stage list that holds the positive at varying ranks or misses it."""
    answers = {a["id"]: a["text"] for a in read("answers.jsonl")}
    ids = sorted(answers)
    samples = []
    for n, q in enumerate([q for q in read("questions.jsonl") if q["split"] == "test"][:10]):
        others = [answers[ids[(ids.index(q["answer"]) + 1 + n + 7 * j) % len(ids)]] for j in range(6)]
        positive = [answers[q["answer"]]]
        if n == 3:  # two known positives
            positive.append(others.pop())
        if mode == "negative":
            samples.append({"query": q["text"], "positive": positive, "negative": others})
        else:
            documents = others if n % 3 == 1 else others[: n % 6] + positive[:1] + others[n % 6:]  # n % 3 == 1: missed
            samples.append({"query": q["text"], "positive": positive, "documents": documents})
    samples[5]["positive"] = samples[5]["positive"][0]  # a string: upstream reads it as one positive
    samples[7]["positive"] = []  # nothing to rank: scores 0
    return samples


@pytest.fixture(scope="session")
def st_cross_encoder(cross_encoder_dir) -> STCrossEncoder:
    return STCrossEncoder(str(cross_encoder_dir), device="cpu")


class Overlap:
    """A stand-in model: a pair's score is the number of words its texts share (ties are common)."""

    model_card_data = SimpleNamespace(set_evaluation_metrics=lambda *args: None)  # upstream stores metrics there

    def predict(self, pairs, **kwargs):
        return np.array([len(set(a.lower().split()) & set(b.lower().split())) for a, b in pairs], dtype=np.float32)


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def assert_same(ours, theirs, model_ours, model_theirs, tmp_path, tolerance=1e-6, epochs=(1,)):
    """Equal metrics (names in order, values), primary metric, CSV file name and contents, after each call."""
    for epoch in epochs:
        got = ours(model_ours, output_path=tmp_path / "ours", epoch=epoch, steps=10 * epoch)
        expected = theirs(model_theirs, output_path=str(tmp_path / "theirs"), epoch=epoch, steps=10 * epoch)
        assert list(got) == list(expected)
        assert all(abs(got[key] - expected[key]) <= tolerance for key in expected), (got, expected)
        assert all(type(value) is float for value in got.values())
        assert ours.primary_metric == theirs.primary_metric
    assert ours.csv_file == theirs.csv_file
    got_rows, expected_rows = read_csv(tmp_path / "ours" / ours.csv_file), read_csv(tmp_path / "theirs" / ours.csv_file)
    assert got_rows[0] == expected_rows[0] and len(got_rows) == len(expected_rows) == 1 + len(epochs)
    for got_row, expected_row in zip(got_rows[1:], expected_rows[1:], strict=True):
        assert got_row[:2] == expected_row[:2]
        assert np.allclose(np.array(got_row[2:], float), np.array(expected_row[2:], float), atol=tolerance)


RERANKING_CASES = [
    ("negative", {}),
    ("negative", {"at_k": 5, "name": "bikefix"}),
    ("documents", {}),
    ("documents", {"always_rerank_positives": False}),
    ("documents", {"always_rerank_positives": False, "at_k": 5, "name": "bikefix", "batch_size": 16}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "kwargs"), RERANKING_CASES)
def test_reranking_matches_upstream(st_cross_encoder, mode, kwargs, tmp_path):
    samples = reranking_samples(mode)
    ours = RerankingEvaluator(samples, **kwargs)
    theirs = st_evaluation.CrossEncoderRerankingEvaluator(samples, **kwargs)
    assert ours.primary_metric == theirs.primary_metric
    assert_same(ours, theirs, st_cross_encoder, st_cross_encoder, tmp_path)


@pytest.mark.parametrize(("mode", "kwargs"), [*RERANKING_CASES, ("documents", {"at_k": 1}), ("negative", {"at_k": 2})])
def test_reranking_ties_match_upstream(mode, kwargs, tmp_path):
    """Word-overlap scores tie often: NDCG and MAP share a tie group's positives as scikit-learn does."""
    samples = reranking_samples(mode)
    samples[0][mode] = samples[0][mode] * 2  # the same documents twice: equal scores
    ours = RerankingEvaluator(samples, **kwargs)
    theirs = st_evaluation.CrossEncoderRerankingEvaluator(samples, **kwargs)
    assert_same(ours, theirs, Overlap(), Overlap(), tmp_path, tolerance=1e-12, epochs=(1, 2))  # a row appended


def test_rerank_metrics_by_hand():
    ap, mrr, ndcg = rerank_metrics([3.0, 2.0, 1.0], [0, 1, 1], num_positives=3, k=2)
    assert mrr == 0.5  # the best positive is 2nd
    assert ap == pytest.approx((1 / 2 + 2 / 3) / 3)  # precision at each positive, over the 3 known positives
    assert ndcg == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))  # ideal: 2 positives in the top 2
    assert rerank_metrics([1.0, 1.0], [1, 0], 1, 10) == (0.5, 0.5, pytest.approx((1 + 1 / np.log2(3)) / 2))  # a tie
    assert rerank_metrics([0.5], [0], 1, 10) == (0.0, 0.0, 0.0)


def graded_pairs(n=40):
    """(question, answer) pairs with gold scores from the help desk: 1 for the question's own answer, 0.5 for
    another answer of its category, 0 for the rest (the data is in this repository, unlike STS-B)."""
    answers = read("answers.jsonl")
    category = {a["id"]: a["category"] for a in answers}
    pairs, scores = [], []
    for i, q in enumerate(read("questions.jsonl")[:n]):
        answer = answers[(i * 7) % len(answers)] if i % 3 else next(a for a in answers if a["id"] == q["answer"])
        pairs.append((q["text"], answer["text"]))
        scores.append(1.0 if answer["id"] == q["answer"] else 0.5 if answer["category"] == category[q["answer"]]
                      else 0.0)
    return pairs, scores


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [{}, {"name": "sts-dev", "batch_size": 16}])
def test_correlation_matches_upstream(st_cross_encoder, kwargs, tmp_path):
    pairs, scores = graded_pairs()
    ours = CorrelationEvaluator(pairs, scores, **kwargs)
    theirs = st_evaluation.CrossEncoderCorrelationEvaluator(pairs, scores, show_progress_bar=False, **kwargs)
    assert_same(ours, theirs, st_cross_encoder, st_cross_encoder, tmp_path)


def test_correlation_ties_and_examples_match_upstream(tmp_path):
    pairs, scores = graded_pairs()
    examples = [InputExample(texts=list(pair), label=score) for pair, score in zip(pairs, scores, strict=True)]
    ours = CorrelationEvaluator.from_input_examples(examples, name="sts")
    theirs = st_evaluation.CrossEncoderCorrelationEvaluator(pairs, scores, name="sts", show_progress_bar=False)
    assert_same(ours, theirs, Overlap(), Overlap(), tmp_path, tolerance=1e-12)


@pytest.mark.slow
def test_with_minist_cross_encoder(cross_encoder_dir, st_cross_encoder, tmp_path):
    """minist's own CrossEncoder, loaded from the same folder, scores as upstream's model does."""
    from minist.cross_encoder import CrossEncoder

    model = CrossEncoder(cross_encoder_dir, device="cpu")
    samples = reranking_samples("documents")
    for kwargs in ({}, {"always_rerank_positives": False, "at_k": 5, "name": "bikefix"}):
        assert_same(RerankingEvaluator(samples, **kwargs),
                    st_evaluation.CrossEncoderRerankingEvaluator(samples, **kwargs),
                    model, st_cross_encoder, tmp_path / str(len(kwargs)))
    pairs, scores = graded_pairs()
    assert_same(CorrelationEvaluator(pairs, scores),
                st_evaluation.CrossEncoderCorrelationEvaluator(pairs, scores, show_progress_bar=False),
                model, st_cross_encoder, tmp_path / "sts")


GOOD = {"query": "flat tyre", "positive": ["patch it"], "negative": ["oil it"]}
UPSTREAM_ERRORS = [  # upstream raises these when called; minist when built, with the same message
    ([{"positive": ["patch it"], "negative": []}], "requires a 'query' key in each sample"),
    ([{"query": "flat tyre", "negative": ["oil it"]}], "requires a 'positive' key in each sample"),
    ([GOOD | {"documents": ["oil it"]}], "requires exactly one of 'negative' and 'documents' in each sample"),
    ([{"query": "flat tyre", "positive": ["patch it"]}], "requires exactly one of 'negative' and 'documents'"),
]


@pytest.mark.parametrize(("samples", "message"), UPSTREAM_ERRORS)
def test_reranking_refuses_as_upstream(samples, message):
    with pytest.raises(ValueError, match=message):
        RerankingEvaluator(samples)
    with pytest.raises(ValueError, match=message):
        st_evaluation.CrossEncoderRerankingEvaluator(samples)(Overlap())


@pytest.mark.parametrize(("samples", "kwargs", "error", "message"), [
    ([], {}, ValueError, "got no samples"),
    ([GOOD | {"positive": ("patch it",)}], {}, TypeError, r"samples\[0\] needs a query string and a list of pos"),
    ([GOOD | {"query": None}], {}, TypeError, r"samples\[0\] needs a query string"),
    ([GOOD, GOOD | {"negative": "oil it"}], {}, TypeError, r"samples\[1\]\['negative'\] must be a list of str"),
    ([GOOD | {"positive": ["patch it", 3]}], {}, TypeError, r"samples\[0\]\['positive'\]\[1\] is 3, not a string"),
    ([GOOD], {"at_k": 0}, ValueError, "at_k must be at least 1, not 0"),
    ([GOOD], {"mrr_at_k": 0}, ValueError, "at_k must be at least 1, not 0"),
    ([GOOD | {"positive": []}], {}, ValueError, "No sample has a positive among the documents to rank"),
    ([{"query": "q", "positive": ["a"], "documents": ["b"]}], {"always_rerank_positives": False}, ValueError,
     "No sample has a positive"),
])
def test_reranking_refuses_what_it_cannot_score(samples, kwargs, error, message):
    with pytest.raises(error, match=message):
        RerankingEvaluator(samples, **kwargs)


@pytest.mark.parametrize(("pairs", "scores", "error", "message"), [
    ([("a", "b"), ("c", "d")], [0.1], ValueError, "sentence_pairs and scores differ in length: 2, 1"),
    ([("a", "b"), ("c", "d", "e")], [0.1, 0.9], ValueError, r"sentence_pairs\[1\] is \('c', 'd', 'e'\), not a pair"),
    (["ab", "cd"], [0.1, 0.9], ValueError, r"sentence_pairs\[0\] is 'ab', not a pair of texts"),
    ([("a", None), ("c", "d")], [0.1, 0.9], TypeError, r"sentence_pairs\[0\]\[1\] is None, not a string"),
    ([("a", "b")], [0.1], ValueError, "CrossEncoderCorrelationEvaluator needs at least 2 pairs, got 1"),
    ([("a", "b"), ("c", "d")], [0.5, 0.5], ValueError, "Every gold score is 0.5"),
    ([("a", "b"), ("c", "d")], [0.5, float("nan")], ValueError, r"scores\[1\] is nan"),
])
def test_correlation_refuses_what_it_cannot_score(pairs, scores, error, message):
    with pytest.raises(error, match=message):
        CorrelationEvaluator(pairs, scores)


def test_samples_as_dict_and_no_csv(tmp_path):
    samples = dict(enumerate(reranking_samples("negative")))  # upstream takes a dict's values
    ours = RerankingEvaluator(samples, write_csv=False)
    theirs = st_evaluation.CrossEncoderRerankingEvaluator(samples, write_csv=False)
    assert ours(Overlap(), output_path=tmp_path) == pytest.approx(theirs(Overlap(), output_path=str(tmp_path)))
    assert not list(tmp_path.iterdir())
