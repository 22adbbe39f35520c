"""mine_hard_negatives gives sentence-transformers' rows, in its order, for the same inputs; bad input is refused.

Each case mines 30 bikefix training questions (anchor) and their answers (positive) with minist's all-MiniLM-L6-v2
and with upstream's ``util.mine_hard_negatives`` on upstream's model; texts must be equal, scores within 1e-5.
Both models sit behind ``Remembered``, which encodes each text once (per method and prompt), in a module fixture:
the cases mine the same texts again and again, and encoding, not mining, is what takes the time.
``sampling_strategy="random"`` draws with Python's global ``random`` in both (upstream does not seed it): seeded
alike, they draw alike, so it is compared exactly too.
"""

import json
import logging
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder as STCrossEncoder
from sentence_transformers.util import mine_hard_negatives as st_mine_hard_negatives

from minist import util
from minist.search import mine_hard_negatives

BIKEFIX = Path(__file__).resolve().parent.parent / "data" / "bikefix"
ANSWERS = {a["id"]: a["text"] for a in map(json.loads, (BIKEFIX / "answers.jsonl").read_text().splitlines())}
QUESTIONS = [q for q in map(json.loads, (BIKEFIX / "questions.jsonl").read_text().splitlines())
             if q["split"] == "train"][:30]
PAIRS = Dataset.from_dict({"question": [q["text"] for q in QUESTIONS],
                           "answer": [ANSWERS[q["answer"]] for q in QUESTIONS]})
CORPUS = list(ANSWERS.values())  # 40 answers, of which the 30 questions have 10
# Several positives per anchor: the first 6 rows, 3 of their anchors again with other answers, one row twice.
SEVERAL = Dataset.from_dict({"question": PAIRS["question"][:6] + PAIRS["question"][:3] + PAIRS["question"][:1],
                             "answer": [*PAIRS["answer"][:6], ANSWERS["a07"], ANSWERS["a09"], ANSWERS["a12"],
                                        PAIRS["answer"][0]]})
FORMATS = ["triplet", "n-tuple", "labeled-pair", "labeled-list"]
CASES = {  # name -> (dataset, keyword arguments), each mined in every output format
    "defaults": (PAIRS, {}),
    "corpus": (PAIRS, {"corpus": CORPUS}),
    "range": (PAIRS, {"corpus": CORPUS, "range_min": 2, "range_max": 8, "num_negatives": 4}),
    "absolute_margin": (PAIRS, {"absolute_margin": 0.0, "output_scores": True}),  # range_max past the corpus
    "relative_margin": (PAIRS, {"corpus": CORPUS, "relative_margin": 0.05, "output_scores": True}),
    "max_and_min_score": (PAIRS, {"corpus": CORPUS, "max_score": 0.5, "min_score": 0.2, "output_scores": True}),
    "too_strict": (PAIRS, {"max_score": 0.3, "num_negatives": 5}),  # few or no rows
    "scores_in_chunks": (PAIRS, {"corpus": CORPUS, "output_scores": True, "faiss_batch_size": 7}),
    "random": (PAIRS, {"corpus": CORPUS, "sampling_strategy": "random", "range_max": 15, "output_scores": True}),
    "random_few_left": (PAIRS, {"sampling_strategy": "random", "absolute_margin": 0.1, "num_negatives": 5}),
    "prompts": (PAIRS, {"query_prompt": "query: ", "corpus_prompt": "passage: "}),
    "several_positives": (SEVERAL, {"corpus": CORPUS, "output_scores": True}),
    "several_positives_margin": (SEVERAL, {"relative_margin": 0.1, "output_scores": True}),
}


class Remembered:
    """The model, encoding each text once per method and prompt; the mining code sees the model's own results."""

    def __init__(self, model):
        self.model, self.memory = model, {}

    def __getattr__(self, name):
        return getattr(self.model, name)

    def remembered(self, method: str, texts, prompt_name=None, prompt=None, convert_to_tensor=False, **kwargs):
        memory = self.memory.setdefault((method, prompt_name, prompt), {})
        if new := [text for text in dict.fromkeys(texts) if text not in memory]:
            kwargs |= {"prompt_name": prompt_name, "prompt": prompt, "convert_to_numpy": True}
            memory.update(zip(new, getattr(self.model, method)(new, **kwargs), strict=True))
        embeddings = np.stack([memory[text] for text in texts])
        return torch.from_numpy(embeddings) if convert_to_tensor else embeddings

    def encode_query(self, texts, **kwargs):
        return self.remembered("encode_query", texts, **kwargs)

    def encode_document(self, texts, **kwargs):
        return self.remembered("encode_document", texts, **kwargs)


@pytest.fixture(scope="module")
def models(real_model, st_real_model):
    """(minist's model, upstream's), each with every text the cases mine encoded once, here."""
    models = Remembered(real_model), Remembered(st_real_model)
    for model in models:
        for prompt in (None, "query: "):
            model.encode_query(PAIRS["question"], prompt=prompt, normalize_embeddings=True)
        model.encode_document(PAIRS["question"][:12] + CORPUS, normalize_embeddings=True)
        model.encode_document(PAIRS["answer"], prompt="passage: ", normalize_embeddings=True)
    return models


def mine_both(models, dataset, seed: int = 0, **kwargs):
    """(minist's dataset, upstream's), mined with Python's random seeded alike."""
    random.seed(seed)
    ours = mine_hard_negatives(dataset, models[0], verbose=False, **kwargs)
    random.seed(seed)
    return ours, st_mine_hard_negatives(dataset, models[1], verbose=False, **kwargs)


def assert_same(ours: Dataset, theirs: Dataset) -> None:
    """Same columns and types, same rows in the same order: texts and labels equal, scores within 1e-5."""
    assert ours.column_names == theirs.column_names
    assert ours.features == theirs.features
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours.to_list(), theirs.to_list(), strict=True):
        for name in ref:
            if name in ("score", "scores"):
                np.testing.assert_allclose(mine[name], ref[name], atol=1e-5, rtol=0)
            else:
                assert mine[name] == ref[name], name


@pytest.mark.parametrize("output_format", FORMATS)
@pytest.mark.parametrize("case", CASES)
def test_rows_match_sentence_transformers(models, case, output_format):
    dataset, kwargs = CASES[case]
    ours, theirs = mine_both(models, dataset, output_format=output_format, **kwargs)
    assert_same(ours, theirs)
    if case in ("defaults", "corpus", "random"):
        assert len(ours) > 0 and ours.column_names[:2] == ["question", "answer"]


def test_random_sampling_draws_from_the_window(models):
    """Another seed, other negatives (still upstream's); every one from the window of the best 15 kept candidates."""
    kwargs = {"corpus": CORPUS, "sampling_strategy": "random", "range_max": 15, "output_format": "n-tuple"}
    top = mine_hard_negatives(PAIRS, models[0], corpus=CORPUS, range_max=15, num_negatives=15, verbose=False,
                              output_format="n-tuple")
    runs = []
    for seed in (1, 2):
        ours, theirs = mine_both(models, PAIRS, seed=seed, **kwargs)
        assert_same(ours, theirs)
        runs.append([[row[f"negative_{i}"] for i in (1, 2, 3)] for row in ours])
    assert runs[0] != runs[1]
    windows = [{row[f"negative_{i}"] for i in range(1, 16)} for row in top]
    assert all(set(negatives) <= window for negatives, window in zip(runs[0], windows, strict=True))


def test_anchors_in_the_corpus_and_include_positives(models, caplog):
    """An anchor's own text is never its negative, unless include_positives and it is its own positive; with
    include_positives the positives stay candidates, and the format becomes "n-tuple", with upstream's warning."""
    own = Dataset.from_dict({"question": PAIRS["question"][:8] + PAIRS["question"][3:4],
                             "answer": PAIRS["answer"][:8] + PAIRS["question"][3:4]})
    corpus = PAIRS["question"][:12] + CORPUS
    for kwargs in ({}, {"include_positives": True}, {"include_positives": True, "output_format": "labeled-list"}):
        with caplog.at_level(logging.WARNING, logger="minist"):
            ours, theirs = mine_both(models, own, corpus=corpus, output_scores=True, **kwargs)
        assert_same(ours, theirs)
    assert "`output_format` will be set to `\"n-tuple\"`" in caplog.text
    assert ours.column_names == ["question", "answer", "negative_1", "negative_2", "negative_3", "scores"]
    row = next(row for row in ours if row["answer"] == row["question"])
    assert row["negative_1"] == row["question"] and row["scores"][1] == pytest.approx(1)  # its own positive, first


def test_verbose_prints_range_max_and_a_summary(models, capsys):
    mine_hard_negatives(PAIRS, models[0], num_negatives=2, verbose=True)
    assert capsys.readouterr().out.splitlines() == [
        "Setting range_max to 3 based on the provided parameters.",
        "Mined 60 of 60 negatives (2 for each of 30 anchors)."]


def test_util_re_exports_it():
    assert util.mine_hard_negatives is mine_hard_negatives


class Overlap:
    """A stand-in cross-encoder: shared words, plus a length term so that scores rarely tie."""

    def predict(self, pairs, convert_to_tensor=False, **kwargs):
        scores = [len(set(q.lower().split()) & set(d.lower().split())) + len(d) / 1000 for q, d in pairs]
        return torch.tensor(scores) if convert_to_tensor else np.array(scores, dtype=np.float32)


@pytest.mark.parametrize("output_format", FORMATS)
@pytest.mark.parametrize("kwargs", [{}, {"corpus": CORPUS, "output_scores": True},
                                    {"min_score": 2.1, "output_scores": True}, {"absolute_margin": 0.0}])
def test_a_duck_typed_cross_encoder_rescores_as_upstream(models, output_format, kwargs):
    ours, theirs = mine_both(models, PAIRS, cross_encoder=Overlap(), output_format=output_format, **kwargs)
    assert_same(ours, theirs)


@pytest.mark.slow
def test_minist_cross_encoder_rescores_as_upstream_s(models, cross_encoder_dir):
    """minist's CrossEncoder in minist's mining, upstream's in upstream's, both from the same folder."""
    from minist.cross_encoder import CrossEncoder

    kwargs = {"output_format": "labeled-list", "absolute_margin": 0.0, "range_max": 4, "output_scores": True}
    ours = mine_hard_negatives(PAIRS.select(range(8)), models[0], verbose=False, **kwargs,
                               cross_encoder=CrossEncoder(cross_encoder_dir, device="cpu"))
    theirs = st_mine_hard_negatives(PAIRS.select(range(8)), models[1], verbose=False, **kwargs,
                                    cross_encoder=STCrossEncoder(str(cross_encoder_dir)))
    assert_same(ours, theirs)
    assert len(ours) > 0


# --- bad input: refused by name before any work (the stand-in model cannot encode) -------------------------------
STUB = SimpleNamespace(prompts={"query": ""})
TWO = Dataset.from_dict({"q": ["a", "b"], "p": ["c", "d"]})


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"use_faiss": True}, ValueError, r"leaves out use_faiss= \(it searches exactly"),
    ({"use_multi_process": ["cpu", "cpu"]}, ValueError, "leaves out use_multi_process="),
    ({"cache_folder": "embeddings"}, ValueError, "leaves out cache_folder="),
    ({"as_triplets": False}, ValueError, r'leaves out as_triplets= \(use output_format="triplet"'),
    ({"margin": 0}, ValueError, r"leaves out margin= \(use absolute_margin\)"),
    ({"dataset": [{"q": "a", "p": "c"}]}, ValueError, "dataset must be a non-empty datasets.Dataset"),
    ({"dataset": Dataset.from_dict({"q": [], "p": []})}, ValueError, "non-empty"),
    ({"output_format": "quadruplet"}, ValueError, "Invalid output_format: quadruplet. Must be one of 'triplet'"),
    ({"sampling_strategy": "best"}, ValueError, "sampling_strategy must be \"top\" or \"random\", not 'best'"),
    ({"range_min": -1}, ValueError, "range_min must be at least 0, not -1"),
    ({"range_min": 1.5}, TypeError, "range_min must be an int, not float"),
    ({"num_negatives": 0}, ValueError, "num_negatives must be at least 1, not 0"),
    ({"num_negatives": 2.0}, TypeError, "num_negatives must be an int"),
    ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
    ({"faiss_batch_size": True}, TypeError, "faiss_batch_size must be an int, not bool"),
    ({"max_score": "0.5"}, TypeError, "max_score must be a number or None, not str"),
    ({"relative_margin": True}, TypeError, "relative_margin must be a number or None, not bool"),
    ({"query_prompt_name": "search"}, ValueError, "Prompt name 'search' not found in the configured prompts"),
    ({"corpus_prompt_name": "passage"}, ValueError, "Prompt name 'passage' not found"),
    ({"anchor_column_name": "query"}, ValueError, r"no column 'query'; its columns are \['q', 'p'\]"),
    ({"positive_column_name": "answer"}, ValueError, "no column 'answer'"),
    ({"dataset": Dataset.from_dict({"q": ["a"]})}, ValueError, "at least two columns"),
    ({"range_min": 2, "range_max": 4}, ValueError, "range_max must be at least 5, not 4. It must leave num_negati"),
    ({"range_max": 2.5}, TypeError, "range_max must be an int"),
    ({"dataset": Dataset.from_dict({"q": ["a", None], "p": ["c", "d"]})}, TypeError, "item 1 is a NoneType"),
    ({"corpus": ["e", 7]}, TypeError, "item 1 is a int"),
])
def test_bad_input_is_refused_by_name(kwargs, error, message):
    dataset = kwargs.pop("dataset", TWO)
    with pytest.raises(error, match=message):
        mine_hard_negatives(dataset, STUB, verbose=False, **kwargs)
