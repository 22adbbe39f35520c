"""``minist.datasets``: what sentence-transformers keeps in ``sentence_transformers.datasets``.

Only re-exports, so that ``from sentence_transformers.datasets import NoDuplicatesDataLoader`` runs with
``minist`` in its place; the loader lives with the Trainer's batching in ``minist.samplers``.
"""

from minist.samplers import NoDuplicatesDataLoader

__all__ = ["NoDuplicatesDataLoader"]
