"""fit: the tutorial snippet runs, training is reproducible and scheduled as documented, bad data is refused."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SENTENCES
from torch.utils.data import DataLoader

from minist import InputExample, SentenceTransformer, losses
from minist.evaluation import EmbeddingSimilarityEvaluator, InformationRetrievalEvaluator

PAIRS = [InputExample(texts=["the cat sat", "a cat sits"], label=0.9),
         InputExample(texts=["the dog runs", "slow birds"], label=0.1),
         InputExample(texts=["a bird sings", "birds singing"], label=0.8),
         InputExample(texts=["the mat", "fast dogs"], label=0.0)] * 4


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_tutorial_snippet_runs_and_sentence_transformers_loads_the_result(tmp_path, tiny_st_dir):
    from sentence_transformers import SentenceTransformer as STModel

    model = SentenceTransformer(tiny_st_dir, device="cpu")
    before = model.encode(TINY_SENTENCES)
    # The snippet from the issue, verbatim but for the model and the output folder.
    train_examples = [InputExample(texts=["sentence 1", "sentence 2"], label=0.8),
                      InputExample(texts=["sentence 3", "sentence 4"], label=0.3)]
    train_dataloader = DataLoader(train_examples, batch_size=16)
    train_loss = losses.CosineSimilarityLoss(model)
    model.fit(train_objectives=[(train_dataloader, train_loss)], epochs=10, warmup_steps=100)
    model.save(tmp_path / "my-finetuned-model")
    after = model.encode(TINY_SENTENCES)
    assert np.abs(after - before).max() > 1e-4  # it trained
    np.testing.assert_allclose(STModel(str(tmp_path / "my-finetuned-model"), device="cpu").encode(TINY_SENTENCES),
                               after, atol=1e-6)


def train_once(tiny_st_dir, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    loader = DataLoader(PAIRS, shuffle=True, batch_size=4)
    model.fit([(loader, losses.CoSENTLoss(model))], epochs=2, warmup_steps=2, show_progress_bar=False, **kwargs)
    return model


def test_reproducible_with_a_seed(tiny_st_dir):
    a, b, c = train_once(tiny_st_dir), train_once(tiny_st_dir), train_once(tiny_st_dir, seed=1)
    assert torch.equal(weights(a), weights(b))
    assert not torch.equal(weights(a), weights(c))
    assert [h["loss"] for h in a.training_history] == [h["loss"] for h in b.training_history]


def test_learning_rate_warms_up_then_decays_linearly(tiny_st_dir):
    model = train_once(tiny_st_dir, optimizer_params={"lr": 1e-3})
    lrs = [h["lr"] for h in model.training_history]  # after each of the 8 steps (4 a epoch, 2 epochs)
    expected = [1e-3 * min((s + 1) / 2, (8 - s - 1) / (8 - 2)) for s in range(8)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert lrs[-1] == 0


def test_objectives_take_turns(tiny_st_dir):
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    triples = [InputExample(texts=["the cat", "a cat", "fast dogs"])] * 6
    model.fit([(DataLoader(PAIRS, batch_size=4), losses.CoSENTLoss(model)),
               (DataLoader(triples, batch_size=2), losses.MultipleNegativesRankingLoss(model))],
              epochs=1, warmup_steps=0, show_progress_bar=False)
    assert [h["objective"] for h in model.training_history] == [0, 1] * 3  # min(4, 3) steps, round robin


@pytest.fixture(scope="module")
def two_models(tiny_st_dir):
    """The model to train and another instance of it. Refused fits leave them as they were."""
    return SentenceTransformer(tiny_st_dir, device="cpu"), SentenceTransformer(tiny_st_dir, device="cpu")


def pairs(label, n=2):
    return [InputExample(texts=["the cat", "a cat"], label=label)] * n


@pytest.mark.parametrize(("objective", "error", "message"), [
    (lambda m, o: (DataLoader([InputExample(texts=["a", "b", "c"], label=1.0)]), losses.CosineSimilarityLoss(m)),
     ValueError, "Objective 0, example 0 has 3 texts; CosineSimilarityLoss takes 2"),
    (lambda m, o: (DataLoader([InputExample(texts=["a", "b"])] * 2, batch_size=2), losses.CoSENTLoss(m)),
     ValueError, "Objective 0, example 0 has no label; CoSENTLoss needs one"),
    (lambda m, o: (DataLoader([InputExample(texts=["a"])] * 2, batch_size=2), losses.MultipleNegativesRankingLoss(m)),
     ValueError, "has 1 texts; MultipleNegativesRankingLoss takes at least 2"),
    (lambda m, o: (DataLoader([]), losses.CoSENTLoss(m)), ValueError, "empty DataLoader"),
    # a loss built on another instance would train that one
    (lambda m, o: (DataLoader(PAIRS, batch_size=4), losses.CoSENTLoss(o)),
     ValueError, r"the CoSENTLoss was built on another model instance.*losses\.CoSENTLoss\(model\)"),
    (lambda m, o: (DataLoader(PAIRS, batch_size=4), losses.MatryoshkaLoss(m, losses.CoSENTLoss(o), [8, 4])),
     ValueError, r"CoSENTLoss \(inside MatryoshkaLoss\) was built on another model"),
    # labels: a number, finite, in the loss's range
    (lambda m, o: (DataLoader(PAIRS[:3] + pairs(float("nan")), batch_size=4), losses.CoSENTLoss(m)),
     ValueError, "Objective 0, example 3 has the label nan; CoSENTLoss needs a finite number"),
    (lambda m, o: (DataLoader(pairs(float("inf")), batch_size=2), losses.CosineSimilarityLoss(m)),
     ValueError, "example 0 has the label inf"),
    (lambda m, o: (DataLoader(pairs("0.8"), batch_size=2), losses.CoSENTLoss(m)),
     TypeError, r"example 0 has the label '0\.8' \(str\); CoSENTLoss needs a number"),
    (lambda m, o: (DataLoader(PAIRS[:1] + pairs(4.2), batch_size=2), losses.CosineSimilarityLoss(m)),
     ValueError, "example 1 has the label 4.2; CosineSimilarityLoss takes labels from -1.0 to 1.0: scale it to 0-1"),
    # a batch of one: no in-batch negatives (MNRL), nothing to rank (CoSENT); the loss is constantly 0
    (lambda m, o: (DataLoader(pairs(None)), losses.MultipleNegativesRankingLoss(m)),
     ValueError, "MultipleNegativesRankingLoss needs a batch_size of at least 2, not 1.*constantly 0"),
    (lambda m, o: (DataLoader(pairs(None)), losses.MatryoshkaLoss(m, losses.MultipleNegativesRankingLoss(m), [4])),
     ValueError, r"MultipleNegativesRankingLoss \(inside MatryoshkaLoss\) needs a batch_size of at least 2"),
    (lambda m, o: (DataLoader(PAIRS), losses.CoSENTLoss(m)), ValueError, "CoSENTLoss needs a batch_size of at least 2"),
    (lambda m, o: DataLoader(PAIRS, batch_size=4), TypeError, r"objective 0 must be a \(DataLoader, loss\) pair"),
    (lambda m, o: (DataLoader(PAIRS, batch_size=4), torch.nn.MSELoss()), TypeError,
     "must be a minist loss such as losses.CoSENTLoss.model., not torch.nn.modules.loss.MSELoss"),
])
def test_bad_data_is_refused_before_training(two_models, objective, error, message):
    model, other = two_models
    before = weights(model)
    with pytest.raises(error, match=message):
        model.fit([objective(model, other)], show_progress_bar=False)
    assert torch.equal(weights(model), before)


@pytest.mark.parametrize(("settings", "error", "message"), [
    ({"epochs": 0}, ValueError, "epochs must be at least 1, not 0"),
    ({"epochs": 1.5}, TypeError, "epochs must be an int, not float 1.5"),
    ({"steps_per_epoch": 0}, ValueError, "steps_per_epoch must be at least 1, not 0"),
    ({"warmup_steps": -1}, ValueError, "warmup_steps must be at least 0, not -1"),
    ({"warmup_steps": 0.1}, TypeError, "warmup_steps must be an int, not float 0.1. It counts steps: for a ratio"),
    ({"evaluation_steps": -2}, ValueError, "evaluation_steps must be at least 0"),
    ({"max_grad_norm": -1.0}, ValueError, "max_grad_norm must be positive, not -1.0"),
    ({"optimizer_params": {"lr": 0}}, ValueError, "learning rate must be positive, not 0"),
    ({"optimizer_params": {"lr": "1e-4"}}, ValueError, "learning rate must be positive, not '1e-4'"),
    ({"optimizer_params": {"learning_rate": 1e-4}}, TypeError, "learning_rate"),  # once silently ignored
    ({"optimizer_params": {"weight_decay": 0.0}}, ValueError, "Give weight_decay to fit itself"),
])
def test_bad_settings_are_named_before_training(two_models, settings, error, message):
    model, _ = two_models
    before = weights(model)
    with pytest.raises(error, match=message):
        model.fit([(DataLoader(PAIRS, batch_size=4), losses.CoSENTLoss(model))], show_progress_bar=False, **settings)
    assert torch.equal(weights(model), before)


def test_bad_texts():
    with pytest.raises(TypeError, match="list of strings"):
        InputExample(texts="just one string")


def test_labels_are_ignored_by_losses_that_take_none(tiny_st_dir):
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    examples = [InputExample(texts=["the cat", "a cat"], label="similar"),
                InputExample(texts=["the dog", "a dog"], label=float("nan"))]
    model.fit([(DataLoader(examples, batch_size=2), losses.MultipleNegativesRankingLoss(model))], warmup_steps=0,
              show_progress_bar=False)
    assert len(model.training_history) == 1 and np.isfinite(model.training_history[0]["loss"])


class FixedScore:
    """An evaluator that always gives the same score: NaN is what a correlation gives constant similarities."""

    primary_metric = "dev_spearman_cosine"

    def __init__(self, score):
        self.score = score

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        return {self.primary_metric: self.score}


@pytest.mark.parametrize(("score", "save_best_model", "warns"), [
    (float("nan"), True, True),  # no score is ever "the best": the final model, and a warning naming the metric
    (0.5, False, False),  # no best model wanted: the final model
])
def test_output_path_always_gets_a_model(tmp_path, tiny_st_dir, recwarn, score, save_best_model, warns):
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    model.fit([(DataLoader(PAIRS, batch_size=4), losses.CoSENTLoss(model))], evaluator=FixedScore(score),
              steps_per_epoch=1, warmup_steps=0, output_path=tmp_path / "out", save_best_model=save_best_model,
              show_progress_bar=False)
    messages = [str(w.message) for w in recwarn if "dev_spearman_cosine" in str(w.message)]
    assert len(messages) == int(warns)
    assert not warns or "no best model was saved; saving the final model" in messages[0]
    saved = SentenceTransformer(tmp_path / "out", device="cpu")
    np.testing.assert_allclose(saved.encode(TINY_SENTENCES), model.encode(TINY_SENTENCES), atol=1e-6)


def test_evaluator_keeps_the_best_model(tmp_path, tiny_st_dir):
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    evaluator = EmbeddingSimilarityEvaluator.from_input_examples(PAIRS[:4], name="dev")
    model.fit([(DataLoader(PAIRS, batch_size=4), losses.CoSENTLoss(model))], evaluator=evaluator, epochs=2,
              evaluation_steps=2, warmup_steps=1, output_path=tmp_path / "best", show_progress_bar=False)
    scores = [h["dev_spearman_cosine"] for h in model.evaluation_history]
    assert len(scores) == 6  # every 2 steps (4 a epoch) and after each epoch
    assert model.best_score == max(scores)
    best = SentenceTransformer(tmp_path / "best", device="cpu")
    assert evaluator(best)["dev_spearman_cosine"] == pytest.approx(max(scores), abs=1e-6)
    assert len((tmp_path / "best" / "eval" / evaluator.csv_file).read_text().splitlines()) == 7  # header + 6


def test_an_interrupted_run_leaves_the_last_checkpoint_loadable(tmp_path, tiny_st_dir):
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    loss = losses.CoSENTLoss(model)
    calls = []
    original = loss.compute_loss_from_embeddings

    def failing_on_the_fifth_step(embeddings, labels):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("power cut")
        return original(embeddings, labels)

    loss.compute_loss_from_embeddings = failing_on_the_fifth_step
    with pytest.raises(RuntimeError, match="power cut"):
        model.fit([(DataLoader(PAIRS, batch_size=4), loss)], epochs=3, checkpoint_path=tmp_path / "ckpt",
                  checkpoint_save_steps=2, show_progress_bar=False)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    restored = SentenceTransformer(tmp_path / "ckpt" / "checkpoint-4", device="cpu")
    assert restored.encode(["the cat"]).shape == (1, 8)


@pytest.mark.real_model
@pytest.mark.slow
def test_fine_tuning_improves_the_bikefix_test_split(real_model_dir):
    data = Path(__file__).resolve().parent.parent / "data" / "bikefix"
    answers = {a["id"]: a["text"] for a in map(json.loads, (data / "answers.jsonl").read_text().splitlines())}
    questions = [json.loads(line) for line in (data / "questions.jsonl").read_text().splitlines()]
    test = [q for q in questions if q["split"] == "test"]
    evaluator = InformationRetrievalEvaluator({q["id"]: q["text"] for q in test}, answers,
                                              {q["id"]: {q["answer"]} for q in test})
    torch.manual_seed(0)
    model = SentenceTransformer(real_model_dir, device="cpu")
    before = evaluator(model)["cosine_mrr@10"]
    train = [InputExample(texts=[q["text"], answers[q["answer"]]]) for q in questions if q["split"] == "train"]
    model.fit([(DataLoader(train, shuffle=True, batch_size=16), losses.MultipleNegativesRankingLoss(model))],
              epochs=1, warmup_steps=5, optimizer_params={"lr": 1e-4}, show_progress_bar=False)  # 8 steps
    assert evaluator(model)["cosine_mrr@10"] >= before + 0.03


def test_mixed_precision_runs_on_the_cpu(tiny_st_dir):
    torch.manual_seed(0)
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    before = weights(model)
    model.fit([(DataLoader(PAIRS, batch_size=4), losses.CoSENTLoss(model))], warmup_steps=1, use_amp=True,
              show_progress_bar=False)  # bfloat16 autocast on the CPU (float16 with a grad scaler on CUDA)
    assert all(np.isfinite(h["loss"]) for h in model.training_history)
    assert not torch.equal(weights(model), before)
    assert all(p.dtype == torch.float32 for p in model.parameters())
