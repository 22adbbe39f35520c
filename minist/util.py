"""``minist.util``: the helpers that sentence-transformers keeps in ``sentence_transformers.util``.

Only re-exports, so that snippets written for sentence-transformers (``util.cos_sim``,
``util.semantic_search``, ...) run unchanged. Each function lives in the module of its concept.
"""

from minist.clustering import community_detection
from minist.quantization import quantize_embeddings
from minist.search import mine_hard_negatives, paraphrase_mining, paraphrase_mining_embeddings, semantic_search
from minist.similarity import (
    cos_sim,
    dot_score,
    euclidean_sim,
    manhattan_sim,
    normalize_embeddings,
    pairwise_cos_sim,
    pairwise_dot_score,
    pairwise_euclidean_sim,
    pairwise_manhattan_sim,
    pytorch_cos_sim,
    truncate_embeddings,
)

__all__ = [
    "community_detection",
    "cos_sim",
    "dot_score",
    "euclidean_sim",
    "manhattan_sim",
    "mine_hard_negatives",
    "normalize_embeddings",
    "pairwise_cos_sim",
    "pairwise_dot_score",
    "pairwise_euclidean_sim",
    "pairwise_manhattan_sim",
    "paraphrase_mining",
    "paraphrase_mining_embeddings",
    "pytorch_cos_sim",
    "quantize_embeddings",
    "semantic_search",
    "truncate_embeddings",
]
