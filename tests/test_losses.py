"""Every loss: the same value as sentence-transformers' on the same model, batch and labels, and by hand."""

import math

import pytest
import torch
from sentence_transformers import SentenceTransformer as STModel
from sentence_transformers.sentence_transformer import losses as st_losses

from minist import InputExample, SentenceTransformer, losses
from minist.training import collate

PAIRS = [("the cat sat on the mat", "a cat sits on a mat"), ("the dogs run fast", "slow birds sing"),
         ("a bird sings", "the bird is singing"), ("the mat", "fast dogs"), ("run", "running")]
LABELS = [0.9, 0.1, 0.8, 0.0, 0.6]
TRIPLES = [(a, b, PAIRS[(i + 1) % len(PAIRS)][1]) for i, (a, b) in enumerate(PAIRS)]


@pytest.fixture(scope="module")
def tiny_models(tiny_st_dir):
    return SentenceTransformer(tiny_st_dir, device="cpu").eval(), STModel(str(tiny_st_dir), device="cpu").eval()


@pytest.fixture(params=["tiny", "real"])
def models(request):
    """(minist's, sentence-transformers') model: the tiny one, or the real one shared by the session (unchanged)."""
    if request.param == "tiny":
        return request.getfixturevalue("tiny_models")
    return request.getfixturevalue("real_model").eval(), request.getfixturevalue("st_real_model").eval()


def batch(model, rows, labels=None):
    examples = [InputExample(texts=list(r), label=None if labels is None else labels[i]) for i, r in enumerate(rows)]
    return collate(model, examples, use_labels=labels is not None)


CASES = [
    ("CosineSimilarityLoss", {}, PAIRS, LABELS),
    ("CoSENTLoss", {}, PAIRS, LABELS),
    ("CoSENTLoss", {"scale": 5.0}, PAIRS, [1, 0, 1, 0, 1]),
    ("MultipleNegativesRankingLoss", {}, PAIRS, None),
    ("MultipleNegativesRankingLoss", {}, TRIPLES, None),  # with a hard-negative column
    ("ContrastiveLoss", {}, PAIRS, [1, 0, 1, 0, 1]),
    ("ContrastiveLoss", {"margin": 0.8}, PAIRS, [1, 0, 1, 0, 0]),
    ("TripletLoss", {}, TRIPLES, None),
    ("TripletLoss", {"triplet_margin": 0.5}, TRIPLES, None),
    ("TripletLoss", {"distance_metric": "COSINE", "triplet_margin": 0.5}, TRIPLES, None),
    ("TripletLoss", {"distance_metric": "MANHATTAN"}, TRIPLES, None),
    ("TripletLoss", {"distance_metric": "EUCLIDEAN"}, TRIPLES, None),
]


def options(module, kwargs: dict) -> dict:
    """A case's keyword arguments for one library: a distance named in it becomes that library's own."""
    return {key: getattr(module.TripletDistanceMetric, value) if key == "distance_metric" else value
            for key, value in kwargs.items()}


@pytest.mark.parametrize(("name", "kwargs", "rows", "labels"), CASES)
def test_same_value_as_sentence_transformers(models, name, kwargs, rows, labels):
    ours, theirs = models
    features, label_tensor = batch(ours, rows, labels)
    with torch.no_grad():
        got = getattr(losses, name)(ours, **options(losses, kwargs))(features, label_tensor)
        expected = getattr(st_losses, name)(theirs, **options(st_losses, kwargs))(batch(ours, rows, labels)[0],
                                                                                 label_tensor)
    assert abs(got.item() - expected.item()) <= 1e-5


def test_matryoshka_matches_sentence_transformers(models):
    ours, theirs = models
    dims = [ours.get_sentence_embedding_dimension(), 4]
    features, labels = batch(ours, PAIRS, LABELS)
    with torch.no_grad():
        got = losses.MatryoshkaLoss(ours, losses.CoSENTLoss(ours), dims, [1.0, 0.5])(features, labels)
        expected = st_losses.MatryoshkaLoss(theirs, st_losses.CoSENTLoss(theirs), dims, [1.0, 0.5])(
            batch(ours, PAIRS, LABELS)[0], labels)
    assert abs(got.item() - expected.item()) <= 1e-5


def test_losses_declare_what_they_accept(tiny_st_dir):
    """What fit checks before training. A batch of one pair gives MNRL no in-batch negative and CoSENT no other
    pair to rank: the loss is exactly 0, here and in sentence-transformers, hence ``min_batch_size = 2``."""
    assert losses.CosineSimilarityLoss.label_range == (-1, 1)  # a target cosine
    assert losses.CoSENTLoss.label_range is None and losses.CoSENTLoss.label_values is None  # any order of scores
    assert not losses.MultipleNegativesRankingLoss.needs_labels and not losses.TripletLoss.needs_labels
    assert losses.MultipleNegativesRankingLoss.min_batch_size == losses.CoSENTLoss.min_batch_size == 2
    assert losses.CosineSimilarityLoss.min_batch_size == losses.TripletLoss.min_batch_size == 1
    ours, theirs = SentenceTransformer(tiny_st_dir, device="cpu").eval(), STModel(str(tiny_st_dir), device="cpu").eval()
    for name, labels in [("MultipleNegativesRankingLoss", None), ("CoSENTLoss", LABELS[:1])]:
        features, label_tensor = batch(ours, PAIRS[:1], labels)
        with torch.no_grad():
            got = getattr(losses, name)(ours)(features, label_tensor)
            expected = getattr(st_losses, name)(theirs)(batch(ours, PAIRS[:1], labels)[0], label_tensor)
        assert got.item() == expected.item() == 0, name


def test_hand_computed_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # cos = [1, 0]
    assert losses.cosine_similarity_loss(a, b, torch.tensor([1.0, 1.0])).item() == pytest.approx(0.5)
    # CoSENT: pair 0 (label 1) should outscore pair 1 (label 0); it does by 1 * scale: log(1 + e^-20)
    tiny = pytest.approx(math.log1p(math.exp(-20)), abs=1e-6)
    assert losses.cosent_loss(a, b, torch.tensor([1.0, 0.0])).item() == tiny
    assert losses.cosent_loss(a, b, torch.tensor([0.0, 1.0])).item() == pytest.approx(math.log1p(math.exp(20)))
    # MNRL with orthogonal anchors and positives equal to them: softmax over [20, 0] -> -log(e^20 / (e^20 + 1))
    assert losses.multiple_negatives_ranking_loss(a, a).item() == tiny
    # contrastive: d = [0, 1]; labels [1, 0], margin 0.5 -> 0.5 * (0 + max(0, 0.5 - 1)^2) = 0
    assert losses.contrastive_loss(a, b, torch.tensor([1, 0])).item() == 0.0
    assert losses.contrastive_loss(a, b, torch.tensor([0, 1])).item() == pytest.approx(0.5 * (0.25 + 1) / 2)
    # triplet: |a - a| = 0, |a - (-a)| = 2 -> max(0, 0 - 2 + 5) = 3
    assert losses.triplet_loss(a, a, -a).item() == pytest.approx(3.0)


def test_losses_learn(tiny_st_dir):
    """A few optimizer steps on one batch lower each loss: the gradients reach the model."""
    for name, kwargs, rows, labels in CASES[::2]:
        torch.manual_seed(0)
        model = SentenceTransformer(tiny_st_dir, device="cpu")
        loss = getattr(losses, name)(model, **options(losses, kwargs))
        features, label_tensor = batch(model, rows, labels)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.eval()  # no dropout: compare like with like
        values = []
        for _ in range(5):
            value = loss(features, label_tensor)
            values.append(value.item())
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
        assert values[-1] < values[0], name


def test_matryoshka_refuses_impossible_dimensions(tiny_st_dir):
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    with pytest.raises(ValueError, match="cannot exceed the model's embedding dimension of 8"):
        losses.MatryoshkaLoss(model, losses.CoSENTLoss(model), [16, 4])
    with pytest.raises(ValueError, match="must be the same length"):
        losses.MatryoshkaLoss(model, losses.CoSENTLoss(model), [8, 4], [1.0])
    with pytest.raises(TypeError, match=r"wraps a loss module, e\.g\. losses\.CoSENTLoss\(model\), not builtins"):
        losses.MatryoshkaLoss(model, len, [8, 4])


class ForeignCosineLoss(torch.nn.Module):
    """A loss from outside minist: it calls the model itself, as sentence-transformers' losses do."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features, labels):
        a, b = (self.model(dict(column))["sentence_embedding"] for column in features)
        return torch.nn.functional.mse_loss(torch.nn.functional.cosine_similarity(a, b), labels.float())


def test_matryoshka_wraps_any_loss_module_sorts_and_warns_as_upstream(models, caplog):
    ours, theirs = models
    full = ours.get_embedding_dimension()
    features, labels = batch(ours, PAIRS, LABELS)
    with torch.no_grad():
        expected = st_losses.MatryoshkaLoss(theirs, st_losses.CosineSimilarityLoss(theirs), [4, full], [0.5, 1.0])
        wrapped = losses.MatryoshkaLoss(ours, ForeignCosineLoss(ours), [4, full], [0.5, 1.0])
        value = expected(batch(ours, PAIRS, LABELS)[0], labels).item()
        assert abs(wrapped(features, labels).item() - value) <= 1e-5
        assert abs(losses.MatryoshkaLoss(ours, losses.CosineSimilarityLoss(ours), [4, full], [0.5, 1.0])(
            features, labels).item() - value) <= 1e-5
    assert "forward" not in vars(ours)  # the model's own forward is back
    upstream = (expected.matryoshka_dims, expected.matryoshka_weights)
    assert (wrapped.matryoshka_dims, wrapped.matryoshka_weights) == upstream == ((full, 4), (1.0, 0.5))
    with caplog.at_level("WARNING"):
        losses.MatryoshkaLoss(ours, losses.CoSENTLoss(ours), [4, 2])
        st_losses.MatryoshkaLoss(theirs, st_losses.CoSENTLoss(theirs), [4, 2])
    assert [r.name.split(".")[0] for r in caplog.records] == ["minist", "sentence_transformers"]
    assert all(f"embedding dimension {full} is not" in r.getMessage() for r in caplog.records)


def test_contrastive_loss_takes_soft_labels_with_one_warning_as_upstream(models):
    ours, theirs = models
    labels = [1, 0.5, 0, 0.2, 1]
    features, label_tensor = batch(ours, PAIRS, labels)
    ours_loss, theirs_loss = losses.ContrastiveLoss(ours), st_losses.ContrastiveLoss(theirs)
    with torch.no_grad(), pytest.warns(UserWarning, match="binary labels") as caught:
        got = ours_loss(features, label_tensor)
        ours_loss(features, label_tensor)  # warned once only
        expected = theirs_loss(batch(ours, PAIRS, labels)[0], label_tensor)
    assert [str(w.message).split(";")[0].split(".")[0] for w in caught].count(
        "ContrastiveLoss expects binary labels (0 or 1)") == 2  # one each: ours, then upstream's
    assert abs(got.item() - expected.item()) <= 1e-5
