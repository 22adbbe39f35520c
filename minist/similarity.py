"""Similarity between embeddings: cosine, dot product, and negative euclidean or manhattan distance.

Each ``*_sim``/``*_score`` function compares every row of ``a`` with every row of ``b`` ((n, m) out);
its ``pairwise_*`` twin compares ``a[i]`` with ``b[i]`` ((n,) out). They take numpy arrays, (nested)
lists or tensors, a 1-D input counting as one row, and return float tensors, as sentence-transformers'
``util`` does. Distances are negated so that for every function, higher means more similar.
Half-precision inputs are computed in float32 so that nearby scores do not round into ties.
Left out: sparse tensors and multi-vector (late-interaction) scores.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from minist.inputs import ArrayLike, as_tensor, check_count


def to_tensor(a: ArrayLike) -> Tensor:
    """Any array-like -> a float tensor (float32 unless it was float64)."""
    a = as_tensor(a)
    if not torch.is_floating_point(a) or torch.finfo(a.dtype).bits < 32:
        a = a.float()
    return a


def _as_batches(a: ArrayLike, b: ArrayLike) -> tuple[Tensor, Tensor]:
    a, b = to_tensor(a), to_tensor(b)
    a = a.unsqueeze(0) if a.dim() == 1 else a  # one vector -> a batch of one
    b = b.unsqueeze(0) if b.dim() == 1 else b
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"Embeddings of different sizes: a has dimension {a.shape[-1]}, b has {b.shape[-1]}.")
    return a, b


def normalize_embeddings(embeddings: ArrayLike) -> Tensor:
    """Scale each row to unit L2 length; a zero row stays zero."""
    return F.normalize(to_tensor(embeddings), p=2, dim=-1)


def truncate_embeddings(embeddings: np.ndarray | Tensor, truncate_dim: int | None) -> np.ndarray | Tensor:
    """The first ``truncate_dim`` numbers of each embedding (None: all), of the same type (numpy stays numpy), as
    ``encode(truncate_dim=...)`` gives them; normalize again afterwards for cosine as a dot product.

    >>> truncate_embeddings(torch.tensor([[1.0, 2.0, 3.0]]), 2)
    tensor([[1., 2.]])
    """
    check_count("truncate_dim", truncate_dim, most=embeddings.shape[-1], what="the embedding size", optional=True)
    return embeddings[..., :truncate_dim]


def dot_score(a: ArrayLike, b: ArrayLike) -> Tensor:
    """(n, dim), (m, dim) -> (n, m) with ``[i, j] = a[i] . b[j]``.

    >>> dot_score([[1.0, 2.0]], [[3.0, 4.0], [1.0, 0.0]])
    tensor([[11.,  1.]])
    """
    a, b = _as_batches(a, b)
    return a @ b.T


def cos_sim(a: ArrayLike, b: ArrayLike) -> Tensor:
    """(n, dim), (m, dim) -> (n, m) with ``[i, j] = cos(a[i], b[j])``: the dot product of unit vectors.

    >>> cos_sim([1.0, 0.0], [[2.0, 0.0], [0.0, 5.0]])
    tensor([[1., 0.]])
    """
    a, b = _as_batches(a, b)
    return dot_score(normalize_embeddings(a), normalize_embeddings(b))


def euclidean_sim(a: ArrayLike, b: ArrayLike) -> Tensor:
    """(n, dim), (m, dim) -> (n, m) with ``[i, j] = -||a[i] - b[j]||``.

    >>> euclidean_sim([[0.0, 0.0]], [[3.0, 4.0]])
    tensor([[-5.]])
    """
    a, b = _as_batches(a, b)
    return -torch.cdist(a, b, p=2.0)


def manhattan_sim(a: ArrayLike, b: ArrayLike) -> Tensor:
    """(n, dim), (m, dim) -> (n, m) with ``[i, j] = -sum(|a[i] - b[j]|)``."""
    a, b = _as_batches(a, b)
    return -torch.cdist(a, b, p=1.0)


def _as_pairs(a: ArrayLike, b: ArrayLike) -> tuple[Tensor, Tensor]:
    a, b = to_tensor(a), to_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"Pairwise scores need equal shapes; a is {tuple(a.shape)}, b is {tuple(b.shape)}.")
    return a, b


def pairwise_dot_score(a: ArrayLike, b: ArrayLike) -> Tensor:
    """(n, dim), (n, dim) -> (n,) with ``[i] = a[i] . b[i]``."""
    a, b = _as_pairs(a, b)
    return (a * b).sum(dim=-1)


def pairwise_cos_sim(a: ArrayLike, b: ArrayLike) -> Tensor:
    """(n, dim), (n, dim) -> (n,) with ``[i] = cos(a[i], b[i])``."""
    a, b = _as_pairs(a, b)
    return pairwise_dot_score(normalize_embeddings(a), normalize_embeddings(b))


def pairwise_euclidean_sim(a: ArrayLike, b: ArrayLike) -> Tensor:
    """(n, dim), (n, dim) -> (n,) with ``[i] = -||a[i] - b[i]||``."""
    a, b = _as_pairs(a, b)
    return -torch.linalg.vector_norm(a - b, dim=-1)


def pairwise_manhattan_sim(a: ArrayLike, b: ArrayLike) -> Tensor:
    """(n, dim), (n, dim) -> (n,) with ``[i] = -sum(|a[i] - b[i]|)``."""
    a, b = _as_pairs(a, b)
    return -(a - b).abs().sum(dim=-1)


# sentence-transformers' similarity_fn_name -> the function, for models and evaluators that name one.
SIMILARITY_FUNCTIONS = {"cosine": cos_sim, "dot": dot_score, "euclidean": euclidean_sim, "manhattan": manhattan_sim}
PAIRWISE_FUNCTIONS = {"cosine": pairwise_cos_sim, "dot": pairwise_dot_score, "euclidean": pairwise_euclidean_sim,
                      "manhattan": pairwise_manhattan_sim}
pytorch_cos_sim = cos_sim  # sentence-transformers' older name, still in its util


class SimilarityFunction(Enum):
    """The names a model's ``similarity_fn_name`` takes, as sentence-transformers' enum of the same name.

    >>> SimilarityFunction.to_similarity_fn("dot") is dot_score
    True
    """

    COSINE = "cosine"
    DOT_PRODUCT = "dot"
    DOT = "dot"  # an alias of DOT_PRODUCT, as upstream
    EUCLIDEAN = "euclidean"
    MANHATTAN = "manhattan"

    @staticmethod
    def to_similarity_fn(name: str | SimilarityFunction):
        return SIMILARITY_FUNCTIONS[SimilarityFunction(name).value]  # ValueError for an unknown name

    @staticmethod
    def to_similarity_pairwise_fn(name: str | SimilarityFunction):
        return PAIRWISE_FUNCTIONS[SimilarityFunction(name).value]

    @staticmethod
    def possible_values() -> list[str]:
        return [member.value for member in SimilarityFunction]
