"""SentenceTransformerTrainer: the same losses as sentence-transformers' trainer, step by step; bad input refused.

Both libraries load one tiny BERT without dropout, train it with the same seed, data and arguments, and log
every step; their logs must agree (loss, gradient norm, learning rate, epoch), and so must the batches that
their NO_DUPLICATES samplers draw.
"""

import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import sentence_transformers as st
import torch
from conftest import TINY_SENTENCES, build_st_model
from datasets import Dataset, DatasetDict
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler as STNoDuplicatesBatchSampler
from sentence_transformers.sentence_transformer import evaluation as st_evaluation
from sentence_transformers.sentence_transformer import losses as st_losses
from transformers.trainer_utils import rotate_checkpoints

import minist
from minist import SentenceTransformerTrainer, SentenceTransformerTrainingArguments, evaluation, losses
from minist.training_args import BatchSamplers

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "run", "fast", "slow", "bird", "sings"]


def phrases(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(2, 6))) for _ in range(n)]


def scored_pairs(n: int = 21, seed: int = 0) -> Dataset:
    rng = random.Random(seed + 2)
    scores = [round(rng.random(), 2) for _ in range(n)]
    return Dataset.from_dict({"sentence1": phrases(n, seed), "sentence2": phrases(n, seed + 1), "score": scores})


def anchors_with_repeats(n: int = 22) -> Dataset:
    """(anchor, positive) pairs in which an anchor often comes back: NO_DUPLICATES must set those apart."""
    anchors = [["the cat", "a dog", "the bird sings"][i % 3] if i % 2 else text for i, text in enumerate(phrases(n, 5))]
    return Dataset.from_dict({"anchor": anchors, "positive": phrases(n, 6)})


@pytest.fixture(scope="module")
def no_dropout_dir(tmp_path_factory, tiny_hf_dir):
    """The tiny model with dropout off, so that a training step is the same computation in both libraries."""
    hf = tmp_path_factory.mktemp("no_dropout") / "hf"
    shutil.copytree(tiny_hf_dir, hf)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(config | {"hidden_dropout_prob": 0.0,
                                                         "attention_probs_dropout_prob": 0.0}))
    build_st_model(hf).save(str(hf.parent / "st"))
    return hf.parent / "st"


def train_both(folder, tmp_path, loss_name: str, train_dataset, evaluator=None, eval_dataset=None, **settings):
    """Train the model in ``folder`` with each library; returns (minist's trainer, upstream's trainer)."""
    trainers = []
    for library in (minist, st):
        model = library.SentenceTransformer(str(folder), device="cpu")
        loss_module = losses if library is minist else st_losses
        args = library.SentenceTransformerTrainingArguments(
            output_dir=str(tmp_path / library.__name__), learning_rate=1e-3, logging_steps=1, seed=7,
            save_strategy="no", report_to="none", **settings)
        trainer = library.SentenceTransformerTrainer(
            model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            loss=getattr(loss_module, loss_name)(model), evaluator=None if evaluator is None else evaluator(library))
        trainer.train()
        trainers.append(trainer)
    return trainers


def step_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def assert_same_steps(ours, theirs) -> None:
    ours, theirs = step_logs(ours), step_logs(theirs)
    assert [entry["step"] for entry in ours] == [entry["step"] for entry in theirs]
    for key in ("loss", "grad_norm", "learning_rate", "epoch"):
        np.testing.assert_allclose([e[key] for e in ours], [e[key] for e in theirs], rtol=1e-4, atol=1e-7, err_msg=key)


def test_cosine_similarity_loss_gives_upstreams_losses_step_by_step(tmp_path, no_dropout_dir):
    # 21 pairs in batches of 8: 3 batches an epoch, the last one short; 2 epochs, reshuffled; 1 warm-up step
    ours, theirs = train_both(no_dropout_dir, tmp_path, "CosineSimilarityLoss", scored_pairs(), num_train_epochs=2,
                              per_device_train_batch_size=8, warmup_ratio=0.1, weight_decay=0.01, data_seed=3)
    assert len(step_logs(ours)) == 6
    assert_same_steps(ours, theirs)
    np.testing.assert_allclose(ours.model.encode(TINY_SENTENCES), theirs.model.encode(TINY_SENTENCES), atol=1e-5)
    final = ours.state.log_history[-1]
    assert final["train_loss"] == pytest.approx(np.mean([e["loss"] for e in step_logs(ours)]))


def test_multiple_negatives_ranking_loss_with_no_duplicates_gives_upstreams_losses(tmp_path, no_dropout_dir):
    ours, theirs = train_both(no_dropout_dir, tmp_path, "MultipleNegativesRankingLoss", anchors_with_repeats(),
                              max_steps=7, per_device_train_batch_size=6, warmup_steps=2,
                              batch_sampler=st.sentence_transformer.training_args.BatchSamplers.NO_DUPLICATES)
    assert ours.args.batch_sampler is BatchSamplers.NO_DUPLICATES  # upstream's enum, read as minist's
    assert len(step_logs(ours)) == 7  # max_steps: 4 batches an epoch, then 3 of the next
    assert_same_steps(ours, theirs)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("rows", "batch_size"), [(22, 6), (9, 4)])  # 9 rows of 3 anchors: passes fall short
def test_no_duplicates_batches_are_upstreams(no_dropout_dir, drop_last, rows, batch_size):
    dataset = anchors_with_repeats(rows)
    model = minist.SentenceTransformer(no_dropout_dir, device="cpu")
    args = SentenceTransformerTrainingArguments(batch_sampler="no_duplicates", per_device_train_batch_size=batch_size,
                                                dataloader_drop_last=drop_last, seed=11, save_strategy="no")
    trainer = SentenceTransformerTrainer(model, args, dataset, loss=losses.MultipleNegativesRankingLoss(model))
    for epoch in range(3):
        sampler = STNoDuplicatesBatchSampler(dataset, batch_size, drop_last, generator=torch.Generator(), seed=11)
        sampler.set_epoch(epoch)
        expected = list(sampler)[:len(sampler)]  # upstream's Trainer takes len(sampler) batches an epoch
        batches = trainer._batches(trainer.train_examples, batch_size, epoch)
        assert batches == expected
        assert all(len({t for i in batch for t in trainer.train_examples[i].texts}) == 2 * len(batch)
                   for batch in batches)


def test_evaluator_and_eval_loss_run_at_eval_steps_as_upstream(tmp_path, no_dropout_dir):
    dev = scored_pairs(10, seed=9)

    def evaluator(library):
        module = evaluation if library is minist else st_evaluation
        return module.EmbeddingSimilarityEvaluator(*(list(dev[c]) for c in dev.column_names), name="dev")

    # eval loss in batches of 3 (the last one of 1 row), and the evaluator, every 2 steps and at the end
    ours, theirs = train_both(no_dropout_dir, tmp_path, "CoSENTLoss", scored_pairs(), evaluator=evaluator,
                              eval_dataset=dev, max_steps=5, per_device_train_batch_size=4,
                              per_device_eval_batch_size=3, eval_strategy="steps", eval_steps=2)
    evaluations = [[e for e in run.state.log_history if "eval_loss" in e] for run in (ours, theirs)]
    assert [e["step"] for e in evaluations[0]] == [e["step"] for e in evaluations[1]] == [2, 4, 5]
    for key in ("eval_loss", "eval_dev_spearman_cosine", "eval_dev_pearson_cosine", "epoch"):
        np.testing.assert_allclose(*[[e[key] for e in run] for run in evaluations], rtol=1e-4, err_msg=key)
    assert_same_steps(ours, theirs)
    assert len((tmp_path / "minist" / "eval" / "similarity_evaluation_dev_results.csv").read_text().splitlines()) == 4


def test_checkpoints_keep_the_newest_and_sentence_transformers_loads_them(tmp_path, no_dropout_dir):
    model = minist.SentenceTransformer(no_dropout_dir, device="cpu")
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4,
                                                save_steps=2, save_total_limit=2)
    SentenceTransformerTrainer(model, args, scored_pairs(), loss=losses.CoSENTLoss(model)).train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]  # and the end
    np.testing.assert_allclose(st.SentenceTransformer(str(tmp_path / "checkpoint-5"), device="cpu").encode(
        TINY_SENTENCES), model.encode(TINY_SENTENCES), atol=1e-6)


def user_files(folder) -> None:
    """What a user may keep in output_dir beside the checkpoints: rotation must leave it alone."""
    (folder / "checkpoint-final").mkdir(parents=True)
    (folder / "checkpoint-final" / "notes.txt").write_text("mine")
    (folder / "checkpoint-1.txt").write_text("mine")


@pytest.mark.parametrize(("limit", "kept"), [(1, [5]), (0, [2, 4, 5]), (-1, [2, 4, 5])])  # 2: above
def test_checkpoints_rotate_as_upstreams_and_leave_other_folders_alone(tmp_path, no_dropout_dir, limit, kept):
    """A limit of 0 or less keeps every checkpoint, as upstream; only checkpoint-<step> folders are rotated."""
    model, ours, theirs = minist.SentenceTransformer(no_dropout_dir, device="cpu"), tmp_path / "minist", tmp_path / "hf"
    user_files(ours)
    user_files(theirs)
    args = SentenceTransformerTrainingArguments(output_dir=str(ours), max_steps=5, per_device_train_batch_size=4,
                                                save_steps=2, save_total_limit=limit, disable_tqdm=True)
    SentenceTransformerTrainer(model, args, scored_pairs(), loss=losses.CoSENTLoss(model)).train()
    for step in (2, 4, 5):  # the Hugging Face Trainer's rotation after each of the same saves
        (theirs / f"checkpoint-{step}").mkdir()
        rotate_checkpoints(str(theirs), save_total_limit=limit)
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    assert (ours / "checkpoint-final" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in ours.iterdir()) == sorted(
        ["checkpoint-final", "checkpoint-1.txt"] + [f"checkpoint-{step}" for step in kept])


def refusal_in_a_child(action, user: int | None) -> str:
    """Run ``action`` in a forked child, as ``user`` if given; returns "ok" or "<ExceptionType>: <message>"."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            if user is not None:
                os.setgid(user)
                os.setuid(user)
            action()
            report = "ok"
        except BaseException as error:  # reported to the parent
            report = f"{type(error).__name__}: {error}"
        os.write(write, report.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        return pipe.read().decode()


def test_an_output_dir_that_cannot_hold_checkpoints_is_refused_at_construction(tmp_path, model):
    """Before training, not at the first save. As root every write is allowed, so the child becomes nobody, in a
    folder of /tmp that nobody may enter (pytest's tmp_path is root's alone)."""
    (tmp_path / "out").write_text("a file")
    data, loss = scored_pairs(), losses.CoSENTLoss(model)

    def build(output_dir, **settings):
        args = SentenceTransformerTrainingArguments(output_dir=str(output_dir), **settings)
        return lambda: SentenceTransformerTrainer(model, args, data, loss=loss)

    with pytest.raises(NotADirectoryError, match=r"output_dir '.*/out' is a file.*give another output_dir"):
        build(tmp_path / "out")()
    build(tmp_path / "out", save_strategy="no")()  # nothing is written there
    locked = Path(tempfile.mkdtemp())
    os.chmod(locked, 0o555)
    try:
        for folder in (locked, locked / "new"):  # an existing folder, and a new one in it
            error = refusal_in_a_child(build(folder), user=65534 if os.geteuid() == 0 else None)
            assert error.startswith("PermissionError: output_dir") and "give an output_dir you may write" in error, \
                error
        assert list(locked.iterdir()) == []
    finally:
        os.chmod(locked, 0o755)
        shutil.rmtree(locked)


@pytest.mark.parametrize(("settings", "error", "message"), [
    ({"gradient_accumulation_steps": 4}, TypeError, "leaves out gradient_accumulation_steps .sentence-transformers"),
    ({"lerning_rate": 1e-4}, TypeError, "Unknown argument lerning_rate"),
    ({"lr_scheduler_type": "cosine"}, ValueError, "lr_scheduler_type='cosine': minist's trainer takes only 'linear'"),
    ({"optim": "adafactor"}, ValueError, "optim='adafactor'"),
    ({"batch_sampler": BatchSamplers.GROUP_BY_LABEL}, ValueError, "minist leaves out GROUP_BY_LABEL"),
    ({"warmup_ratio": 0.1, "warmup_steps": 5}, ValueError, "warmup_ratio or warmup_steps, not both"),
    ({"learning_rate": 0}, ValueError, "learning rate must be positive"),
    ({"per_device_train_batch_size": 0}, ValueError, "per_device_train_batch_size must be at least 1"),
    ({"eval_steps": 0}, ValueError, "eval_steps must be positive"),
    ({"num_train_epochs": math.inf}, ValueError, "num_train_epochs must be positive and finite, not inf"),
    ({"num_train_epochs": math.nan}, ValueError, "num_train_epochs must be positive and finite, not nan"),
    ({"warmup_steps": math.inf}, ValueError, "warmup_steps must be finite and at least 0, not inf"),
])
def test_bad_arguments_are_named(settings, error, message):
    with pytest.raises(error, match=message):
        SentenceTransformerTrainingArguments(output_dir="unused", **settings)


@pytest.fixture(scope="module")
def model(no_dropout_dir):
    return minist.SentenceTransformer(no_dropout_dir, device="cpu")


@pytest.mark.parametrize(("data", "loss", "settings", "error", "message"), [
    (lambda: scored_pairs().remove_columns("score"), "CosineSimilarityLoss", {}, ValueError,
     r"CosineSimilarityLoss needs labels, and train_dataset has no label column .*\['sentence1', 'sentence2'\]"),
    (lambda: scored_pairs().add_column("id", list(range(21))), "CoSENTLoss", {}, TypeError,
     r"train_dataset column 'id' holds int64, not text.*remove_columns\(\['id'\]\)"),
    (lambda: Dataset.from_dict({"a": ["x", "y"], "b": ["z", "w"], "score": [0.5, 4.2]}), "CosineSimilarityLoss", {},
     ValueError, "train_dataset, example 1 has the label 4.2; CosineSimilarityLoss takes labels from -1.0 to 1.0"),
    (lambda: Dataset.from_dict({"a": ["x", "y"], "b": ["z", "w"], "c": ["v", "u"], "label": [0, 1]}),
     "CosineSimilarityLoss", {}, ValueError, "example 0 has 3 texts; CosineSimilarityLoss takes 2"),
    (lambda: anchors_with_repeats(), "MultipleNegativesRankingLoss", {"per_device_train_batch_size": 1}, ValueError,
     "MultipleNegativesRankingLoss needs a batch_size of at least 2, not 1"),
    (lambda: DatasetDict({"stsb": scored_pairs()}), "CoSENTLoss", {}, TypeError,
     "train_dataset must be one datasets.Dataset, not DatasetDict"),
    (lambda: scored_pairs(), "CoSENTLoss", {"eval_strategy": "steps"}, ValueError,
     "eval_strategy is 'steps', but there is no eval_dataset or evaluator"),
    (lambda: Dataset.from_dict({"s1": [], "s2": [], "score": []}), "CoSENTLoss", {}, ValueError,
     "train_dataset is empty: it has no rows"),  # its columns hold null: the emptiness is what to name
    (lambda: Dataset.from_list([]), "CosineSimilarityLoss", {}, ValueError, "train_dataset is empty: it has no rows"),
])
def test_bad_data_is_refused_before_training(model, data, loss, settings, error, message):
    args = SentenceTransformerTrainingArguments(output_dir="unused", **settings)
    with pytest.raises(error, match=message):
        SentenceTransformerTrainer(model=model, args=args, train_dataset=data(), loss=getattr(losses, loss)(model))


def test_a_loss_that_cannot_train_the_model_is_refused(model, no_dropout_dir):
    other = minist.SentenceTransformer(no_dropout_dir, device="cpu")
    with pytest.raises(ValueError, match="the CoSENTLoss was built on another model instance"):
        SentenceTransformerTrainer(model=model, train_dataset=scored_pairs(), loss=losses.CoSENTLoss(other))
    with pytest.raises(TypeError, match=r"must be a minist loss such as losses\.CoSENTLoss\(model\), not torch\.nn"):
        SentenceTransformerTrainer(model=model, train_dataset=scored_pairs(), loss=torch.nn.MSELoss())
