"""Losses for training a cross-encoder, in the template of ``minist.losses``: inputs / formula / reference.

A cross-encoder loss is called as ``loss(columns, labels)`` with the batch's text columns (lists of strings,
as sentence-transformers' cross-encoder losses are): it pairs them, scores the pairs with the model (logits,
``(batch, num_labels)``), and applies its formula. What each accepts is declared as ``minist.losses.Loss``
declares it, so the trainer checks every row before the first step.
Left out: the listwise and distillation losses (LambdaLoss, ListNet, MarginMSE, ...) and the cached variant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minist.cross_encoder.model import CrossEncoder
from minist.losses import Loss


def ranking_loss(scores: Tensor, scale: float = 10.0) -> Tensor:
    """mean_i -log softmax_j(scale * scores[i, j])[0]: each row's first candidate is its positive."""
    return F.cross_entropy(scores * scale, torch.zeros(len(scores), dtype=torch.long, device=scores.device))


class CrossEncoderLoss(Loss):
    """Scores (text, text) pairs with the cross-encoder; the subclasses say what to do with the logits."""

    def __init__(self, model: CrossEncoder, activation_fn: nn.Module | None = None, one_label: bool = True):
        if not isinstance(model, CrossEncoder):
            raise ValueError(f"{type(self).__name__} expects a model of type CrossEncoder, "
                             f"but got a model of type {type(model)}.")
        if one_label and model.num_labels != 1:
            raise ValueError(f"{type(self).__name__} expects a model with 1 output label, "
                             f"but got a model with {model.num_labels} output labels.")
        super().__init__(model)
        self.activation_fn = activation_fn or nn.Identity()

    def logits(self, firsts: list[str], seconds: list[str]) -> Tensor:
        """(batch, num_labels) logits of the pairs (firsts[i], seconds[i])."""
        features = self.model.tokenize(list(zip(firsts, seconds, strict=True)))
        return self.model({name: value.to(self.model.device) for name, value in features.items()})["scores"]


class BinaryCrossEntropyLoss(CrossEncoderLoss):
    """Inputs: (query, document) pairs, label 1 (relevant) or 0, or a score in 0-1 / formula:
    BCE(sigmoid(activation(logit)), label) / reference: torch.nn.BCEWithLogitsLoss; Nogueira & Cho 2019,
    https://arxiv.org/abs/1901.04085. A model with one label (``CrossEncoder(..., num_labels=1)``)."""

    label_range = (0.0, 1.0)

    def __init__(self, model: CrossEncoder, activation_fn: nn.Module | None = None, pos_weight: Tensor | None = None):
        super().__init__(model, activation_fn)
        self.pos_weight = pos_weight  # how much more a positive counts than a negative

    def forward(self, inputs: list[list[str]], labels: Tensor) -> Tensor:
        logits = self.activation_fn(self.logits(*inputs).view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=self.pos_weight)


class CrossEntropyLoss(CrossEncoderLoss):
    """Inputs: (text, text) pairs, a class label 0 .. num_labels - 1 / formula: cross_entropy(activation(logits),
    label) / reference: torch.nn.CrossEntropyLoss (e.g. NLI: contradiction, entailment, neutral)."""

    def __init__(self, model: CrossEncoder, activation_fn: nn.Module | None = None):
        super().__init__(model, activation_fn, one_label=False)
        self.label_values = tuple(range(model.num_labels))

    def forward(self, inputs: list[list[str]], labels: Tensor) -> Tensor:
        return F.cross_entropy(self.activation_fn(self.logits(*inputs)), labels.view(-1).long())


class MultipleNegativesRankingLoss(CrossEncoderLoss):
    """Inputs: (query, positive) or (query, positive, negative, ...), no labels; plus ``num_negatives`` of the
    batch's other documents drawn at random per query (None: all of them) / formula: ``ranking_loss`` over
    sigmoid(logits) of the positive, the in-batch and the given negatives / reference: sentence-transformers'
    cross-encoder MultipleNegativesRankingLoss; the bi-encoder one in ``minist.losses``."""

    columns, needs_labels, min_batch_size = (2, None), False, 2

    def __init__(self, model: CrossEncoder, num_negatives: int | None = 4, scale: float = 10.0,
                 activation_fn: nn.Module | None = nn.Sigmoid()):  # noqa: B008 (upstream's default, stateless)
        super().__init__(model, activation_fn)
        self.num_negatives, self.scale = num_negatives, scale

    def in_batch_negatives(self, columns: list[list[str]]) -> list[list[str]]:
        """Columns of other rows' documents for each query: never its own positive or negatives (as upstream)."""
        size, flat = len(columns[0]), [text for column in columns for text in column]  # column-major, as upstream
        allowed = ~torch.eye(size, dtype=torch.bool).repeat(1, len(columns))  # (size, size * columns)
        if self.num_negatives is not None and self.num_negatives < len(flat) - len(columns):
            chosen = torch.multinomial(allowed.float(), self.num_negatives)  # (size, num_negatives), no repeats
        else:
            chosen = torch.arange(len(flat)).repeat(size, 1)[allowed].reshape(size, -1)
        return [[flat[i] for i in column] for column in chosen.T.tolist()]

    def forward(self, inputs: list[list[str]], labels: Tensor) -> Tensor:
        queries, documents = inputs[0], inputs[1:]
        candidates = [documents[0], *self.in_batch_negatives(documents), *documents[1:]]
        scores = torch.stack([self.logits(queries, column).squeeze(1) for column in candidates], dim=1)
        return ranking_loss(self.activation_fn(scores) if self.activation_fn else scores, self.scale)
