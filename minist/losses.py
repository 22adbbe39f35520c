"""Training losses: what fine-tuning minimizes. Each is an ``nn.Module`` built with the model.

Called as ``loss(features, labels)``, where ``features`` holds one ``model.tokenize`` batch per text
column, as in sentence-transformers; the math lives in a plain function on embeddings, which tests
and learners can call on fixed tensors. Every loss says, in the same template:
inputs (the text columns and labels it takes) / formula (in one line) / reference.
Left out: cached (GradCache) variants, multi-GPU gathering, and the less common losses.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minist.loading import output_dimension
from minist.similarity import cos_sim, pairwise_cos_sim, pairwise_euclidean_sim, pairwise_manhattan_sim

logger = logging.getLogger("minist")


def cosine_similarity_loss(a: Tensor, b: Tensor, labels: Tensor) -> Tensor:
    """mean((cos(a_i, b_i) - label_i)^2)."""
    return F.mse_loss(F.cosine_similarity(a, b), labels.float().view(-1))


def cosent_loss(a: Tensor, b: Tensor, labels: Tensor, scale: float = 20.0) -> Tensor:
    """log(1 + sum over pairs with label_i > label_j of exp(scale * (cos_j - cos_i)))."""
    scores = pairwise_cos_sim(a, b) * scale
    labels = labels.view(-1)
    # (i, j) is "wrongly ordered" when pair i should score higher than pair j; penalize cos_j - cos_i.
    differences = scores[None, :] - scores[:, None]  # [i, j] = s_j - s_i
    differences = differences.masked_fill(~(labels[:, None] > labels[None, :]), -torch.inf)
    return torch.logsumexp(torch.cat([differences.new_zeros(1), differences.view(-1)]), dim=0)


def multiple_negatives_ranking_loss(anchors: Tensor, positives: Tensor, *negatives: Tensor,
                                    scale: float = 20.0) -> Tensor:
    """mean_i -log softmax_j(scale * cos(anchor_i, candidate_j))[i]; the candidates: every positive and negative."""
    candidates = torch.cat([positives, *negatives])  # (batch * (1 + negative columns), dim)
    scores = cos_sim(anchors, candidates) * scale  # (batch, candidates); anchor i's positive is column i
    return F.cross_entropy(scores, torch.arange(len(anchors), device=scores.device))


def contrastive_loss(a: Tensor, b: Tensor, labels: Tensor, margin: float = 0.5) -> Tensor:
    """mean(0.5 * (y d^2 + (1 - y) max(0, margin - d)^2)) with d = 1 - cos(a, b), y in {0, 1}."""
    distances = 1 - F.cosine_similarity(a, b)
    labels = labels.float().view(-1)
    return (0.5 * (labels * distances.pow(2) + (1 - labels) * F.relu(margin - distances).pow(2))).mean()


class TripletDistanceMetric:
    """The distances ``TripletLoss`` can use, under sentence-transformers' names: (n, dim), (n, dim) -> (n,)."""

    COSINE = staticmethod(lambda x, y: 1 - pairwise_cos_sim(x, y))
    EUCLIDEAN = staticmethod(lambda x, y: -pairwise_euclidean_sim(x, y))
    MANHATTAN = staticmethod(lambda x, y: -pairwise_manhattan_sim(x, y))


def triplet_loss(anchors: Tensor, positives: Tensor, negatives: Tensor, margin: float = 5.0,
                 distance=TripletDistanceMetric.EUCLIDEAN) -> Tensor:
    """mean(max(0, d(anchor, positive) - d(anchor, negative) + margin)), d euclidean unless given."""
    return F.relu(distance(anchors, positives) - distance(anchors, negatives) + margin).mean()


class Loss(nn.Module):
    """Embeds each column with the model, then applies ``compute_loss_from_embeddings``.

    What a loss accepts is declared in class attributes, so that ``fit`` checks every example before the first
    step and names the one that does not fit (rather than training on it, or failing in the middle):
    ``columns`` (how many texts an example has), ``needs_labels`` (a loss that takes none ignores them),
    ``label_range`` or ``label_values`` (which labels; by default any finite number), and ``min_batch_size``.
    """

    columns: tuple[int, int | None] = (2, 2)  # (fewest, most); None: no upper limit
    needs_labels = True
    label_range: tuple[float, float] | None = None  # (lowest, highest), both allowed
    label_values: tuple[int, ...] | None = None  # the only labels allowed
    min_batch_size = 1  # 2 for a loss that compares the examples of a batch with each other

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: list[dict[str, Tensor]], labels: Tensor) -> Tensor:
        embeddings = [self.model(dict(column))["sentence_embedding"] for column in features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        raise NotImplementedError


class CosineSimilarityLoss(Loss):
    """Inputs: (text, text) pairs, a float label (target cosine, e.g. 0-1) / formula: ``cosine_similarity_loss``
    / reference: Reimers & Gurevych 2019, https://arxiv.org/abs/1908.10084.

    A cosine lies in [-1, 1], so a label outside it (a raw STS-B score of 4.2) is refused: scale it to 0-1 first.
    """

    label_range = (-1.0, 1.0)

    def compute_loss_from_embeddings(self, embeddings, labels):
        return cosine_similarity_loss(*embeddings, labels)


class CoSENTLoss(Loss):
    """Inputs: (text, text) pairs, a float label (only the order of labels matters) / formula: ``cosent_loss``
    / reference: Su 2022, https://kexue.fm/archives/8847.

    Each pair is ranked against the other pairs of its batch: with one pair per batch, the loss is constantly 0.
    """

    min_batch_size = 2

    def __init__(self, model: nn.Module, scale: float = 20.0):
        super().__init__(model)
        self.scale = scale

    def compute_loss_from_embeddings(self, embeddings, labels):
        return cosent_loss(*embeddings, labels, self.scale)


class MultipleNegativesRankingLoss(Loss):
    """Inputs: (anchor, positive) or (anchor, positive, hard negative, ...), no labels; the other examples'
    positives serve as negatives / formula: ``multiple_negatives_ranking_loss`` / reference: Henderson et al.
    2017, https://arxiv.org/abs/1705.00652.

    With one example per batch there are no in-batch negatives, and for pairs the loss is constantly 0.
    """

    columns, needs_labels, min_batch_size = (2, None), False, 2

    def __init__(self, model: nn.Module, scale: float = 20.0):
        super().__init__(model)
        self.scale = scale

    def compute_loss_from_embeddings(self, embeddings, labels):
        return multiple_negatives_ranking_loss(*embeddings, scale=self.scale)


class ContrastiveLoss(Loss):
    """Inputs: (text, text) pairs, label 1 (similar) or 0 (dissimilar) / formula: ``contrastive_loss``
    / reference: Hadsell, Chopra & LeCun 2006, https://doi.org/10.1109/CVPR.2006.100.

    Other labels are taken as weights (y and 1 - y), with a warning if the first batch holds one, as
    sentence-transformers checks them (on the first batch only).
    """

    def __init__(self, model: nn.Module, margin: float = 0.5):
        super().__init__(model)
        self.margin, self.checked_labels = margin, False

    def compute_loss_from_embeddings(self, embeddings, labels):
        if labels.numel() != len(embeddings[0]):
            raise ValueError(f"ContrastiveLoss expects {len(embeddings[0])} labels (one per example), but got "
                             f"{labels.numel()} labels with shape {tuple(labels.shape)}.")
        if not self.checked_labels:
            self.checked_labels = True
            if ((labels != 0) & (labels != 1)).any():
                warnings.warn("ContrastiveLoss expects binary labels (0 or 1). Non-binary labels are accepted but are "
                              "used directly to weight the positive term, with 1 - label weighting the negative term.",
                              UserWarning, stacklevel=2)
        return contrastive_loss(*embeddings, labels, self.margin)


class TripletLoss(Loss):
    """Inputs: (anchor, positive, negative), no labels / formula: ``triplet_loss`` (a ``TripletDistanceMetric``,
    euclidean by default) / reference: Schroff, Kalenichenko & Philbin 2015, https://arxiv.org/abs/1503.03832."""

    columns, needs_labels = (3, 3), False

    def __init__(self, model: nn.Module, distance_metric=TripletDistanceMetric.EUCLIDEAN, triplet_margin: float = 5.0):
        super().__init__(model)
        self.distance_metric, self.triplet_margin = distance_metric, triplet_margin

    def compute_loss_from_embeddings(self, embeddings, labels):
        return triplet_loss(*embeddings, margin=self.triplet_margin, distance=self.distance_metric)


class MatryoshkaLoss(Loss):
    """Inputs: those of the wrapped ``loss`` / formula: sum_d weight_d * loss(embeddings cut to their first d
    numbers, renormalized), so that shorter prefixes work as embeddings too / reference: Kusupati et al. 2022,
    https://arxiv.org/abs/2205.13147.

    It takes the examples its loss takes; ``fit`` checks the wrapped loss's labels and batch size too.
    A minist loss gets the embeddings cut; any other loss module (one that calls the model itself) gets the
    model's outputs cut, the model still running once per batch (as upstream's ``ForwardDecorator``).
    """

    def __init__(self, model: nn.Module, loss: nn.Module, matryoshka_dims: list[int],
                 matryoshka_weights: list[float] | None = None):
        super().__init__(model)
        if not isinstance(loss, nn.Module):
            raise TypeError(f"MatryoshkaLoss wraps a loss module, e.g. losses.CoSENTLoss(model), "
                            f"not {type(loss).__module__}.{type(loss).__name__}.")
        # Upstream's checks, in its order and words; the size is the model's own, whatever its truncate_dim.
        if not matryoshka_dims:
            raise ValueError("You must provide at least one dimension in matryoshka_dims.")
        if any(dim <= 0 for dim in matryoshka_dims):
            raise ValueError("All dimensions passed to a matryoshka loss must be > 0.")
        weights = [1] * len(matryoshka_dims) if matryoshka_weights is None else matryoshka_weights
        if len(weights) != len(matryoshka_dims):
            raise ValueError("matryoshka_weights must be the same length as matryoshka_dims.")
        dimension = output_dimension(model)
        if any(dim > dimension for dim in matryoshka_dims):
            raise ValueError(f"Dimensions in matryoshka_dims cannot exceed the model's embedding dimension of "
                             f"{dimension}.")
        if dimension not in matryoshka_dims:
            logger.warning(f"The model's embedding dimension {dimension} is not included in matryoshka_dims: "
                           f"{matryoshka_dims}. This means that the full model dimension won't be trained, which may "
                           "lead to degraded performance when using the model without specifying a lower truncation "
                           f"dimension. It is strongly recommended to include {dimension} in matryoshka_dims.")
        pairs = sorted(zip(matryoshka_dims, weights, strict=True), key=lambda pair: pair[0], reverse=True)
        self.matryoshka_dims, self.matryoshka_weights = map(tuple, zip(*pairs, strict=True))  # largest first
        self.loss = loss
        self.columns, self.needs_labels = getattr(loss, "columns", Loss.columns), getattr(loss, "needs_labels", True)

    def forward(self, features: list[dict[str, Tensor]], labels: Tensor) -> Tensor:
        if isinstance(self.loss, Loss):
            return super().forward(features, labels)
        outputs, original = [], self.model.forward  # the model's outputs of the first (largest) dimension
        own_forward = "forward" in vars(self.model)  # an instance's own forward, to put back as it was
        total = 0.0
        try:
            for i, (dim, weight) in enumerate(zip(self.matryoshka_dims, self.matryoshka_weights, strict=True)):
                cached = iter(outputs)

                def cut(feature_batch, dim=dim, first=i == 0, cached=cached):
                    output = original(feature_batch) if first else next(cached)
                    if first:
                        outputs.append(output)
                    return dict(output, sentence_embedding=F.normalize(output["sentence_embedding"][..., :dim], dim=-1))

                self.model.forward = cut
                total = total + weight * self.loss(features, labels)
        finally:
            if own_forward:
                self.model.forward = original
            else:
                del self.model.forward  # the class's forward shows again
        return total

    def compute_loss_from_embeddings(self, embeddings, labels):
        return sum(weight * self.loss.compute_loss_from_embeddings(
            [F.normalize(e[:, :dim], p=2, dim=-1) for e in embeddings], labels)  # the model runs once
            for dim, weight in zip(self.matryoshka_dims, self.matryoshka_weights, strict=True))
