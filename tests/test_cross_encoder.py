"""CrossEncoder: sentence-transformers 6's scores, ranks, folders, losses and training, compared with upstream.

Tiny cross-encoders (a 2-layer BERT with a new head, built and saved by sentence-transformers with a fixed seed,
dropout off) keep these fast; the real all-MiniLM-L6-v2 transformer checks the numbers at full size.
"""

import json
import random
import shutil

import numpy as np
import pytest
import sentence_transformers as st
import torch
from conftest import TINY_SENTENCES
from datasets import Dataset
from sentence_transformers.cross_encoder import losses as st_losses
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import minist
from minist.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments, losses

PAIRS = [(a, b) for a, b in zip(TINY_SENTENCES, TINY_SENTENCES[::-1], strict=True)] + [("the cat", "the " * 80)]


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory, tiny_hf_dir):
    """label count -> a tiny cross-encoder folder saved by sentence-transformers (the head new, seeded)."""
    base = tmp_path_factory.mktemp("tiny_ce")
    shutil.copytree(tiny_hf_dir, base / "hf")
    config = json.loads((base / "hf" / "config.json").read_text())
    (base / "hf" / "config.json").write_text(json.dumps(config | {"hidden_dropout_prob": 0.0,
                                                                  "attention_probs_dropout_prob": 0.0}))
    folders = {}
    for labels in (1, 3):
        torch.manual_seed(labels)
        folders[labels] = base / f"labels{labels}"
        st.CrossEncoder(str(base / "hf"), num_labels=labels, device="cpu").save(str(folders[labels]))
    folders["hf"] = base / "hf"
    return folders


def both(folder, **kwargs):
    return CrossEncoder(folder, device="cpu", **kwargs), st.CrossEncoder(str(folder), device="cpu", **kwargs)


@pytest.mark.parametrize("batch_size", [32, 3])
def test_predict_gives_upstreams_scores_for_one_label(tiny_ce, batch_size):
    ours, theirs = both(tiny_ce[1])
    expected = theirs.predict(PAIRS, batch_size=batch_size)
    assert isinstance(ours.activation_fn, torch.nn.Sigmoid) and ours.num_labels == 1
    np.testing.assert_allclose(ours.predict(PAIRS, batch_size=batch_size), expected, atol=1e-6)
    np.testing.assert_allclose(ours.predict(PAIRS[0]), theirs.predict(PAIRS[0]), atol=1e-6)  # one pair: one score
    assert np.ndim(ours.predict(PAIRS[0])) == 0
    assert torch.allclose(ours.predict(PAIRS, convert_to_tensor=True), theirs.predict(PAIRS, convert_to_tensor=True),
                          atol=1e-6)
    assert len(ours.predict(PAIRS, convert_to_numpy=False)) == len(PAIRS)
    np.testing.assert_allclose(ours.predict(PAIRS, activation_fn=torch.nn.Identity()),
                               theirs.predict(PAIRS, activation_fn=torch.nn.Identity()), atol=1e-6)


def test_predict_gives_upstreams_scores_for_three_labels_with_softmax(tiny_ce):
    ours, theirs = both(tiny_ce[3])
    assert isinstance(ours.activation_fn, torch.nn.Identity)
    for softmax in (False, True):
        scores = ours.predict(PAIRS, apply_softmax=softmax)
        assert scores.shape == (len(PAIRS), 3)
        np.testing.assert_allclose(scores, theirs.predict(PAIRS, apply_softmax=softmax), atol=1e-6)
    np.testing.assert_allclose(scores.sum(axis=1), 1, atol=1e-6)


def test_older_keyword_names_work_with_upstreams_warning(tiny_ce, caplog):
    ours, theirs = both(tiny_ce[1])
    identity = torch.nn.Identity()
    np.testing.assert_allclose(ours.predict(sentences=PAIRS, activation_fct=identity),
                               theirs.predict(sentences=PAIRS, activation_fct=identity), atol=1e-6)
    assert "The `sentences` argument was renamed and is now deprecated. Please use `inputs` instead." in caplog.text


def test_an_empty_list_gives_an_empty_result_as_upstream(tiny_ce):
    ours, theirs = both(tiny_ce[1])
    assert ours.predict([]).shape == theirs.predict([]).shape == (0,)
    assert ours.rank("a", []) == theirs.rank("a", []) == []


def test_rank_sorts_as_upstream(tiny_ce):
    ours, theirs = both(tiny_ce[1])
    documents = TINY_SENTENCES[:8]
    for top_k in (None, 3):
        for return_documents in (False, True):
            got = ours.rank("the cat", documents, top_k=top_k, return_documents=return_documents)
            expected = theirs.rank("the cat", documents, top_k=top_k, return_documents=return_documents)
            assert [hit["corpus_id"] for hit in got] == [hit["corpus_id"] for hit in expected]
            assert [hit.get("text") for hit in got] == [hit.get("text") for hit in expected]
            np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in expected], atol=1e-6)


def test_max_length_cuts_the_pair_as_upstream(tiny_ce):
    ours, theirs = both(tiny_ce[1], max_length=12)
    assert ours.max_length == ours.max_seq_length == theirs.max_seq_length == 12
    np.testing.assert_allclose(ours.predict(PAIRS), theirs.predict(PAIRS), atol=1e-6)
    assert ours.tokenize([("the cat sat on the mat " * 3, "a dog")])["input_ids"].shape == (1, 12)
    with pytest.raises(ValueError, match="max_seq_length must be from 1 to 64"):
        ours.max_length = 65


def test_a_plain_sequence_classification_folder_loads_as_upstream(tmp_path, tiny_ce):
    """How most rerankers on the Hub are stored: config.json (BertForSequenceClassification), weights, tokenizer,
    and the activation, when not the default, in config.json's ``sentence_transformers`` entry."""
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(tiny_ce["hf"], num_labels=1)
    config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_ce["hf"]).save_pretrained(tmp_path)
    ours, theirs = both(tmp_path)
    assert isinstance(ours.activation_fn, torch.nn.Identity) and isinstance(theirs.activation_fn, torch.nn.Identity)
    np.testing.assert_allclose(ours.predict(PAIRS), theirs.predict(PAIRS), atol=1e-6)


@pytest.mark.parametrize("labels", [1, 3])
def test_minists_folder_loads_in_sentence_transformers_with_the_same_scores(tmp_path, tiny_ce, labels):
    ours = CrossEncoder(tiny_ce[labels], max_length=20, activation_fn=torch.nn.Tanh(), device="cpu")
    ours.save(tmp_path / "saved")
    theirs = st.CrossEncoder(str(tmp_path / "saved"), device="cpu")
    assert isinstance(theirs.activation_fn, torch.nn.Tanh) and theirs.max_seq_length == 20
    np.testing.assert_allclose(ours.predict(PAIRS), theirs.predict(PAIRS), atol=1e-6)
    again = CrossEncoder(tmp_path / "saved", device="cpu")
    assert again.max_length == 20 and isinstance(again.activation_fn, torch.nn.Tanh)
    np.testing.assert_allclose(again.predict(PAIRS), ours.predict(PAIRS), atol=1e-6)
    assert (tmp_path / "saved" / "modules.json").read_text() == (tiny_ce[1] / "modules.json").read_text()


def test_an_embedding_model_is_refused_unless_num_labels_starts_a_new_head(tiny_ce):
    with pytest.raises(ValueError, match=r"embedding model \(BertModel\), not a reranker.*num_labels=1"):
        CrossEncoder(tiny_ce["hf"])
    for labels in (1, 2):
        torch.manual_seed(5)
        ours = CrossEncoder(tiny_ce["hf"], num_labels=labels, device="cpu")
        torch.manual_seed(5)
        theirs = st.CrossEncoder(str(tiny_ce["hf"]), num_labels=labels, device="cpu")  # the same new head
        np.testing.assert_allclose(ours.predict(PAIRS), theirs.predict(PAIRS), atol=1e-6)


def test_real_minilm_transformer_with_a_new_head_scores_as_upstream(real_model):
    folder = minist.hub.resolve_model_folder("all-MiniLM-L6-v2")
    torch.manual_seed(0)
    ours = CrossEncoder(folder, num_labels=1, device="cpu")
    torch.manual_seed(0)
    theirs = st.CrossEncoder(str(folder), num_labels=1, device="cpu")
    assert ours.max_length == theirs.max_seq_length == 512
    pairs = [("How do I fix a flat tyre?", "Patch the inner tube, or replace it."), ("a", "b " * 600)]
    np.testing.assert_allclose(ours.predict(pairs), theirs.predict(pairs), atol=1e-5)


@pytest.mark.parametrize(("inputs", "error", "match"), [
    ("a single string", TypeError, "not str"),
    ([("a", "b", "c")], ValueError, r"Pair 0 is \('a', 'b', 'c'\).*two texts each"),
    ([("a", "b"), None], ValueError, "Pair 1 is None"),
    ([("a", None)], TypeError, "pair 0, text 1 is a NoneType"),
    ([("a", "\ud800")], ValueError, "pair 0, text 1 holds a lone surrogate"),
    (None, TypeError, "not NoneType"),
])
def test_pairs_that_are_not_pairs_are_named(tiny_ce, inputs, error, match):
    with pytest.raises(error, match=match):
        CrossEncoder(tiny_ce[1], device="cpu").predict(inputs)


def test_bad_arguments_are_named_before_any_work(tiny_ce):
    ours = CrossEncoder(tiny_ce[1], device="cpu")
    with pytest.raises(ValueError, match="top_k must be at least 1, not 0"):
        ours.rank("a", ["b"], top_k=0)
    with pytest.raises(TypeError, match="documents must be a list of strings"):
        ours.rank("a", "b")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        ours.predict([("a", "b")], batch_size=0)
    with pytest.raises(ValueError, match=r"num_labels=3, but the head saved in .* gives 1"):
        CrossEncoder(tiny_ce[1], num_labels=3)
    message = "CrossEncoder.rank() only works for models with num_labels=1"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CrossEncoder(tiny_ce[3], device="cpu").rank("a", ["b"])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        st.CrossEncoder(str(tiny_ce[3]), device="cpu").rank("a", ["b"])  # upstream's words


# --- losses and training ---------------------------------------------------------------------------
WORDS = ["the", "cat", "dog", "sat", "on", "mat", "run", "fast", "slow", "bird", "sings"]


def phrases(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(2, 6))) for _ in range(n)]


def columns(n: int, count: int) -> list[list[str]]:
    return [phrases(n, seed) for seed in range(count)]


@pytest.mark.parametrize(("name", "labels", "settings", "targets"), [
    ("BinaryCrossEntropyLoss", 1, {}, torch.tensor([1, 0, 1, 0, 0.3, 1])),
    ("BinaryCrossEntropyLoss", 1, {"pos_weight": torch.tensor(4.0)}, torch.tensor([1, 0, 1, 0, 0, 1])),
    ("CrossEntropyLoss", 3, {}, torch.tensor([0, 2, 1, 1, 0, 2])),
    ("MultipleNegativesRankingLoss", 1, {}, None),
    ("MultipleNegativesRankingLoss", 1, {"num_negatives": None, "scale": 5.0}, None),
    ("MultipleNegativesRankingLoss", 1, {"num_negatives": 2, "activation_fn": None}, None),
])
def test_each_loss_gives_upstreams_value(tiny_ce, name, labels, settings, targets):
    ours, theirs = both(tiny_ce[labels])
    texts = columns(6, 2 if targets is not None else 4)  # MNRL: query, positive and two hard negatives
    values = []
    for model, module in ((ours, losses), (theirs, st_losses)):
        torch.manual_seed(3)  # MNRL draws its in-batch negatives at random
        loss = getattr(module, name)(model, **settings)
        values.append(loss(texts, torch.zeros(6) if targets is None else targets).item())
    assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_losses_refuse_a_model_they_cannot_train(tiny_ce, real_model):
    with pytest.raises(ValueError, match="expects a model with 1 output label, but got a model with 3"):
        losses.BinaryCrossEntropyLoss(CrossEncoder(tiny_ce[3], device="cpu"))
    with pytest.raises(ValueError, match="expects a model of type CrossEncoder"):
        losses.MultipleNegativesRankingLoss(real_model)


def train_both(folder, tmp_path, loss_name, dataset, **settings):
    """Train with each library; MultipleNegativesRankingLoss takes every in-batch negative, as the two trainers
    draw other random numbers between steps (its random draws are compared in test_each_loss_gives_upstreams_value)."""
    trainers = []
    for library, module in ((minist.cross_encoder, losses), (st.cross_encoder, st_losses)):
        model = library.CrossEncoder(str(folder), device="cpu")
        args = library.CrossEncoderTrainingArguments(output_dir=str(tmp_path / library.__name__), learning_rate=1e-3,
                                                     logging_steps=1, seed=7, save_strategy="no", report_to="none",
                                                     **settings)
        torch.manual_seed(11)
        trainer = library.CrossEncoderTrainer(model=model, args=args, train_dataset=dataset,
                                              loss=None if loss_name is None else getattr(module, loss_name)(model, **(
                                                  {"num_negatives": None} if "Negatives" in loss_name else {})))
        trainer.train()
        trainers.append(trainer)
    return trainers


@pytest.mark.slow
@pytest.mark.parametrize(("loss_name", "labels", "dataset"), [
    (None, 1, lambda: {"query": phrases(13, 0), "document": phrases(13, 1), "label": [i % 2 for i in range(13)]}),
    ("CrossEntropyLoss", 3, lambda: {"a": phrases(13, 0), "b": phrases(13, 1), "label": [i % 3 for i in range(13)]}),
    ("MultipleNegativesRankingLoss", 1, lambda: dict(zip(["q", "pos", "neg"], columns(13, 3), strict=True))),
])
def test_the_trainer_trains_the_same_model_as_upstreams_step_by_step(tmp_path, tiny_ce, loss_name, labels, dataset):
    ours, theirs = train_both(tiny_ce[labels], tmp_path, loss_name, Dataset.from_dict(dataset()), num_train_epochs=2,
                              per_device_train_batch_size=4, warmup_ratio=0.1, data_seed=3)
    logs = [[entry for entry in run.state.log_history if "loss" in entry] for run in (ours, theirs)]
    assert len(logs[0]) == len(logs[1]) == 8  # 13 rows in batches of 4: 4 steps an epoch, the last one short
    for key in ("loss", "grad_norm", "learning_rate", "epoch"):
        np.testing.assert_allclose(*[[e[key] for e in log] for log in logs], rtol=1e-4, atol=1e-7, err_msg=key)
    np.testing.assert_allclose(ours.model.predict(PAIRS), theirs.model.predict(PAIRS), atol=1e-4)
    expected = "BinaryCrossEntropyLoss" if loss_name is None else loss_name  # the Trainer's default for 1 label
    assert [type(run.loss).__name__ for run in (ours, theirs)] == [expected, expected]


def test_the_trainer_checks_rows_against_the_loss(tiny_ce):
    model = CrossEncoder(tiny_ce[1], device="cpu")
    with pytest.raises(ValueError, match=r"label 2; BinaryCrossEntropyLoss takes labels from 0.0 to 1.0"):
        CrossEncoderTrainer(model, train_dataset=Dataset.from_dict({"q": ["a"], "d": ["b"], "label": [2]}))
    with pytest.raises(TypeError, match="trains a minist CrossEncoder, not SentenceTransformer"):
        CrossEncoderTrainer(minist.SentenceTransformer(tiny_ce["hf"], device="cpu"))
    args = CrossEncoderTrainingArguments(max_steps=1, save_strategy="no", disable_tqdm=True)
    three = CrossEncoder(tiny_ce[3], device="cpu")
    with pytest.raises(ValueError, match="label 3; CrossEntropyLoss takes only 0 or 1 or 2"):
        CrossEncoderTrainer(three, args, Dataset.from_dict({"q": ["a"], "d": ["b"], "label": [3]}))
