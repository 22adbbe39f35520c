"""minist: sentence embeddings from text to pooled vector, in small readable steps.

The familiar API of sentence-transformers: ``SentenceTransformer``, ``util.cos_sim``, ``InputExample``,
``losses``, ``evaluation``, ``SentenceTransformerTrainer``, ...
"""

import importlib.metadata

__version__ = importlib.metadata.version("minist")  # one source: pyproject.toml

from minist import evaluation, losses, util
from minist.model import SentenceTransformer
from minist.similarity import SimilarityFunction
from minist.trainer import SentenceTransformerTrainer
from minist.training import InputExample
from minist.training_args import SentenceTransformerTrainingArguments

__all__ = ["InputExample", "SentenceTransformer", "SentenceTransformerTrainer", "SentenceTransformerTrainingArguments",
           "SimilarityFunction", "__version__", "evaluation", "losses", "util"]
