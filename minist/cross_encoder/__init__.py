"""``minist.cross_encoder``: rerankers, where sentence-transformers keeps them (its ``cross_encoder``).

Only re-exports: the model, its losses, evaluators and trainer, each in the module of its concept.
"""

from minist.cross_encoder import evaluation, losses
from minist.cross_encoder.model import CrossEncoder
from minist.cross_encoder.trainer import CrossEncoderTrainer, CrossEncoderTrainingArguments

__all__ = ["CrossEncoder", "CrossEncoderTrainer", "CrossEncoderTrainingArguments", "evaluation",
           "losses"]
