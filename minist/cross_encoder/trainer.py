"""Training a cross-encoder: ``CrossEncoderTrainer(model, args, train_dataset, loss)``, as sentence-transformers 6.

The same trainer as the bi-encoder's (``minist.trainer``: the rows checked against the loss, upstream's batches,
AdamW with a linear schedule, logs, evaluation and checkpoints); what differs is what one step feeds the loss:
the batch's text columns as lists of strings, which the loss pairs and scores (``minist.cross_encoder.losses``).
The default loss is upstream's: BinaryCrossEntropyLoss for one label, CrossEntropyLoss for more.
Left out: as for the bi-encoder's trainer (``minist.trainer``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minist.cross_encoder.losses import BinaryCrossEntropyLoss, CrossEntropyLoss
from minist.cross_encoder.model import CrossEncoder
from minist.losses import Loss
from minist.trainer import SentenceTransformerTrainer
from minist.training import InputExample
from minist.training_args import SentenceTransformerTrainingArguments


class CrossEncoderTrainingArguments(SentenceTransformerTrainingArguments):
    """The same arguments and defaults as ``SentenceTransformerTrainingArguments``, under upstream's other name."""


class CrossEncoderTrainer(SentenceTransformerTrainer):
    """Trains a ``CrossEncoder`` on a ``datasets.Dataset`` of (text, text[, ...]) columns and a label column.

    >>> CrossEncoderTrainer(model=reranker, args=args, train_dataset=pairs).train()  # doctest: +SKIP
    """

    def __init__(self, model: CrossEncoder, args: SentenceTransformerTrainingArguments | None = None,
                 train_dataset=None, eval_dataset=None, loss: Loss | Callable | None = None, evaluator=None):
        if not isinstance(model, CrossEncoder):
            raise TypeError(f"CrossEncoderTrainer trains a minist CrossEncoder, not {type(model).__name__}: "
                            "a SentenceTransformer trains with SentenceTransformerTrainer.")
        super().__init__(model, CrossEncoderTrainingArguments() if args is None else args, train_dataset,
                         eval_dataset, loss, evaluator)

    def default_loss(self, model: CrossEncoder) -> Loss:
        return BinaryCrossEntropyLoss(model) if model.num_labels == 1 else CrossEntropyLoss(model)

    def _loss(self, examples: list[InputExample], indices: list[int], autocast) -> torch.Tensor:
        rows = [examples[i] for i in indices]
        columns = [[row.texts[i] for row in rows] for i in range(len(rows[0].texts))]  # texts stay texts
        labels = torch.tensor([row.label for row in rows] if self.loss.needs_labels else [0] * len(rows))
        with autocast:
            return self.loss(columns, labels.to(self.model.device))
