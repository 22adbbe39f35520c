"""The evaluators give sentence-transformers' numbers; the IR metrics also match a hand count."""

import json
from pathlib import Path

import pytest
from sentence_transformers import SentenceTransformer as STModel
from sentence_transformers.sentence_transformer import evaluation as st_evaluation
from sentence_transformers.util import cos_sim as st_cos_sim
from sentence_transformers.util import dot_score as st_dot_score

from minist import InputExample, SentenceTransformer, evaluation, util
from minist.evaluation import dcg_at_k, retrieval_metrics

BIKEFIX = Path(__file__).resolve().parent.parent / "data" / "bikefix"


def read(name):
    return [json.loads(line) for line in (BIKEFIX / name).read_text().splitlines()]


@pytest.fixture
def models(real_model, st_real_model):
    return real_model, st_real_model


@pytest.fixture(scope="module")
def retrieval_data():
    answers = {a["id"]: a["text"] for a in read("answers.jsonl")}
    questions = [q for q in read("questions.jsonl") if q["split"] == "test"]
    return ({q["id"]: q["text"] for q in questions}, answers, {q["id"]: {q["answer"]} for q in questions})


def similarity_pairs():
    """Question-answer pairs of the test split, scored 1 (its answer), 0.5 (same category) or 0 (other)."""
    answers = {a["id"]: a for a in read("answers.jsonl")}
    ids = sorted(answers)
    pairs = []
    for n, q in enumerate(q for q in read("questions.jsonl") if q["split"] == "test"):
        other = answers[ids[(ids.index(q["answer"]) + 1 + n) % len(ids)]]
        same = answers[q["answer"]]
        pairs += [(q["text"], same["text"], 1.0),
                  (q["text"], other["text"], 0.5 if other["category"] == same["category"] else 0.0)]
    return [list(column) for column in zip(*pairs, strict=True)]


@pytest.mark.parametrize("kwargs", [{}, {"similarity_fn_names": ["cosine", "euclidean", "manhattan", "dot"]},
                                    {"main_similarity": "dot", "name": "bikes"}, {"truncate_dim": 64}])
def test_embedding_similarity_evaluator_matches(models, kwargs, tmp_path):
    ours, theirs = models
    s1, s2, scores = similarity_pairs()
    got_evaluator = evaluation.EmbeddingSimilarityEvaluator(s1, s2, scores, **kwargs)
    got = got_evaluator(ours, output_path=tmp_path)
    expected_evaluator = st_evaluation.EmbeddingSimilarityEvaluator(s1, s2, scores, **kwargs)
    expected = expected_evaluator(theirs)
    assert set(got) == set(expected)
    assert all(abs(got[key] - expected[key]) <= 1e-4 for key in expected)
    assert got_evaluator.primary_metric == expected_evaluator.primary_metric
    assert (tmp_path / got_evaluator.csv_file).is_file()


@pytest.mark.parametrize("kwargs", [{}, {"name": "test", "mrr_at_k": [3, 10], "ndcg_at_k": [5, 10], "map_at_k": [10]},
                                    {"truncate_dim": 32}])
def test_information_retrieval_evaluator_matches(models, retrieval_data, kwargs):
    ours, theirs = models
    got_evaluator = evaluation.InformationRetrievalEvaluator(*retrieval_data, **kwargs)
    got = got_evaluator(ours)
    expected_evaluator = st_evaluation.InformationRetrievalEvaluator(*retrieval_data, **kwargs)
    expected = expected_evaluator(theirs)
    assert set(got) == set(expected)
    assert all(abs(got[key] - expected[key]) <= 1e-4 for key in expected)
    assert got_evaluator.primary_metric == expected_evaluator.primary_metric


@pytest.mark.parametrize("kwargs", [{}, {"query_prompt": "q: "}, {"corpus_prompt_name": "query"}])
def test_information_retrieval_evaluator_encodes_with_the_models_prompts_as_upstream(real_model_dir, real_model,
                                                                                      retrieval_data, kwargs):
    prompts = {"query": "query: ", "document": "passage: "}
    ours = SentenceTransformer(real_model_dir, device="cpu", prompts=prompts)
    theirs = STModel(str(real_model_dir), device="cpu", prompts=prompts)
    got = evaluation.InformationRetrievalEvaluator(*retrieval_data, **kwargs)(ours)
    expected = st_evaluation.InformationRetrievalEvaluator(*retrieval_data, **kwargs)(theirs)
    assert set(got) == set(expected) and all(abs(got[k] - expected[k]) <= 1e-5 for k in expected)
    plain = evaluation.InformationRetrievalEvaluator(*retrieval_data)(real_model)
    assert got != plain  # the prompts were used


def test_information_retrieval_with_two_score_functions(models, retrieval_data):
    ours, theirs = models
    got = evaluation.InformationRetrievalEvaluator(
        *retrieval_data, score_functions={"cos_sim": util.cos_sim, "dot_score": util.dot_score})(ours)
    expected = st_evaluation.InformationRetrievalEvaluator(
        *retrieval_data, score_functions={"cos_sim": st_cos_sim, "dot_score": st_dot_score})(theirs)
    assert set(got) == set(expected) and all(abs(got[k] - expected[k]) <= 1e-4 for k in expected)


def test_retrieval_metrics_by_hand():
    # one query, relevant {a, c}; ranking b, a, d, c
    m = retrieval_metrics([["b", "a", "d", "c"]], [{"a", "c"}], [1, 2], [2, 4], [10], [4], [4])
    assert m["accuracy@1"] == 0 and m["accuracy@2"] == 1
    assert m["precision@2"] == 0.5 and m["recall@2"] == 0.5 and m["recall@4"] == 1
    assert m["mrr@10"] == 0.5
    assert m["map@4"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    ideal = 1 + 1 / 1.5849625007211562  # log2(3)
    assert m["ndcg@4"] == pytest.approx((1 / 1.5849625007211562 + 1 / 2.321928094887362) / ideal)
    assert dcg_at_k([1, 0, 1], 2) == 1.0


@pytest.mark.parametrize(("arguments", "error", "message"), [
    ((["a", "b"], ["c"], [1.0]), ValueError, "differ in length: 2, 1, 1"),
    (([], [], []), ValueError, "needs at least 2 pairs, got 0"),
    ((["a"], ["b"], [1.0]), ValueError, "needs at least 2 pairs, got 1: a correlation of fewer is undefined"),
    ((["a", "b"], ["c", "d"], [1.0, float("nan")]), ValueError, r"scores\[1\] is nan; every gold score must be"),
    ((["a", "b"], ["c", "d"], [1.0, "0.5"]), ValueError, r"scores\[1\] is '0.5'"),
    ((["a", "b"], ["c", "d"], [0.5, 0.5]), ValueError, "Every gold score is 0.5: a correlation with constant scores"),
    (("ab", "cd", [0.1, 0.9]), TypeError, "sentences1 must be a list of strings, not str"),
    ((["a", None], ["c", "d"], [0.1, 0.9]), TypeError, r"sentences1\[1\] is None, not a string"),
])
def test_embedding_similarity_evaluator_refuses_what_it_cannot_score(arguments, error, message):
    with pytest.raises(error, match=message):
        evaluation.EmbeddingSimilarityEvaluator(*arguments)


def test_bad_similarity_and_examples():
    with pytest.raises(ValueError, match="cosinus"):
        evaluation.EmbeddingSimilarityEvaluator(["a", "b"], ["c", "d"], [0.0, 1.0], main_similarity="cosinus")
    examples = [InputExample(texts=["a", "b"], label=1.0), InputExample(texts=["c", "d"])]  # no label
    with pytest.raises(ValueError, match=r"scores\[1\] is None"):
        evaluation.EmbeddingSimilarityEvaluator.from_input_examples(examples)
    with pytest.raises(ValueError, match="Example 1 has 3 texts; a pair has 2"):
        evaluation.EmbeddingSimilarityEvaluator.from_input_examples([examples[0], InputExample(texts=["a"] * 3)])


QUERIES, CORPUS, RELEVANT = {"q1": "flat tyre", "q2": "squeaky chain"}, {"d1": "patch it", "d2": "oil it"}, {
    "q1": {"d1"}, "q2": {"d2"}}


@pytest.mark.parametrize(("arguments", "kwargs", "error", "message"), [
    (({}, CORPUS, RELEVANT), {}, ValueError, "got no queries"),
    ((QUERIES, {}, RELEVANT), {}, ValueError, "got an empty corpus"),
    ((QUERIES, CORPUS, {"q1": {"x"}, "q3": {"d1"}}), {}, ValueError,
     r"None of the 2 queries has a relevant document in the corpus: relevant_docs maps query ids \(such as 'q1'\)"),
    ((QUERIES, CORPUS, {}), {}, ValueError, "None of the 2 queries has a relevant document"),
    ((QUERIES, CORPUS, {"q1": "d1"}), {}, TypeError, r"relevant_docs\['q1'\] is the string 'd1'; give a set"),
    ((list(QUERIES.values()), CORPUS, RELEVANT), {}, TypeError, "queries must be a dict keyed by id, not list"),
    ((QUERIES, {"d1": None}, RELEVANT), {}, TypeError, r"corpus\['d1'\] is None, not a string"),
    ((QUERIES, CORPUS, RELEVANT), {"precision_recall_at_k": [0, 1]}, ValueError,
     r"precision_recall_at_k\[0\] must be at least 1, not 0"),
    ((QUERIES, CORPUS, RELEVANT), {"ndcg_at_k": []}, ValueError, "ndcg_at_k must list at least one k"),
])
def test_information_retrieval_evaluator_refuses_what_it_cannot_score(arguments, kwargs, error, message):
    with pytest.raises(error, match=message):
        evaluation.InformationRetrievalEvaluator(*arguments, **kwargs)


def test_unknown_main_score_function_is_named_before_encoding():
    evaluator = evaluation.InformationRetrievalEvaluator(QUERIES, CORPUS, RELEVANT, main_score_function="dot",
                                                         score_functions={"cos_sim": util.cos_sim})
    with pytest.raises(ValueError, match=r"main_score_function 'dot' is not one of the score functions \['cos_sim'\]"):
        evaluator(model=None)  # refused before the model is used
