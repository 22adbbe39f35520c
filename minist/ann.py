"""A searchable corpus of embeddings: exact or approximate (HNSW), in float32, int8 or binary.

``VectorIndex(corpus, precision=..., method=...)`` keeps the corpus as unit vectors (cosine similarity)
at the chosen precision and answers ``search(queries, top_k)`` in ``semantic_search``'s format.

- ``method="exact"`` scores every vector (``minist.search.semantic_search``; Hamming distance for binary).
- ``method="hnsw"`` builds a hierarchical navigable small-world graph (Malkov & Yashunin, 2016,
  https://arxiv.org/abs/1603.09320) with the usearch library (``pip install "minist[ann]"``), and visits only
  a small part of the corpus per query: much faster on large corpora, at the cost of sometimes missing a
  true neighbour (``recall``).
- With int8 or binary vectors, search fetches ``top_k * rescore_multiplier`` candidates, then rescores them
  with the float query against the dequantized vectors (see ``minist.quantization``).
Left out: deleting vectors, saving the index to disk, filters.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from minist.inputs import as_matrix, check_count, check_finite
from minist.quantization import (
    dequantize_int8,
    hamming_top_k,
    quantization_ranges,
    quantize_embeddings,
    unpack_binary,
)
from minist.search import semantic_search
from minist.similarity import dot_score, normalize_embeddings


def recall_at_k(found: list[list[dict]], reference: list[list[dict]]) -> float:
    """Mean share of the reference hits (e.g. exact search's) that ``found`` also returned."""
    shares = [len({h["corpus_id"] for h in f} & {h["corpus_id"] for h in r}) / len(r)
              for f, r in zip(found, reference, strict=True) if r]
    return float(np.mean(shares)) if shares else 1.0


class VectorIndex:
    """Unit-length corpus vectors at ``precision``, searched ``exact``ly or through an HNSW graph."""

    def __init__(self, corpus_embeddings, precision: Literal["float32", "int8", "binary"] = "float32",
                 method: Literal["exact", "hnsw"] = "exact", ranges: np.ndarray | None = None,
                 connectivity: int = 16, expansion_add: int = 128, expansion_search: int = 128):
        if precision not in ("float32", "int8", "binary") or method not in ("exact", "hnsw"):
            raise ValueError(f"precision must be float32, int8 or binary and method exact or hnsw; "
                             f"got {precision!r}, {method!r}.")
        corpus = as_matrix(corpus_embeddings, "corpus_embeddings")
        check_finite(corpus, "corpus_embeddings")
        unit = normalize_embeddings(corpus).numpy()
        self.precision, self.method, self.dimension = precision, method, unit.shape[1]
        self.graph = None
        if not len(unit):  # an empty corpus: nothing to quantize or link; every search finds nothing
            self.ranges, self.vectors = ranges, unit
            return
        self.ranges = quantization_ranges(unit) if precision == "int8" and ranges is None else ranges
        self.vectors = quantize_embeddings(unit, precision, self.ranges)  # what the index keeps
        if method == "hnsw":
            try:
                from usearch.index import Index
            except ImportError as error:
                raise ImportError('method="hnsw" needs usearch: pip install "minist[ann]"') from error
            # For int8, squared L2 between bucket numbers tracks cosine far better than their inner product
            # (measured: recall 0.98 against 0.91 on clustered data).
            kind = {"float32": ("ip", "f32"), "int8": ("l2sq", "i8"), "binary": ("hamming", "b1")}[precision]
            self.graph = Index(ndim=self.dimension, metric=kind[0], dtype=kind[1], connectivity=connectivity,
                               expansion_add=expansion_add, expansion_search=expansion_search)
            self.graph.add(np.arange(len(self.vectors)), self._for_usearch(self.vectors))

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def memory_bytes(self) -> int:
        """Bytes this index holds: its vectors, plus for HNSW all that usearch holds (its own copy of the vectors,
        the graph's links, and memory it reserves ahead in blocks)."""
        return self.vectors.nbytes + (self.graph.memory_usage if self.graph is not None else 0)

    def search(self, query_embeddings, top_k: int = 10, rescore_multiplier: int = 4) -> list[list[dict]]:
        """Per query, up to ``top_k`` hits ``{"corpus_id", "score"}``, best first; scores are cosine similarities.

        ``top_k=0`` gives empty lists and no queries ``[]``; a negative ``top_k`` or a NaN query is a ValueError.
        """
        check_count("top_k", top_k, least=0)
        check_count("rescore_multiplier", rescore_multiplier)
        queries = as_matrix(query_embeddings, "query_embeddings")
        check_finite(queries, "query_embeddings")
        queries = normalize_embeddings(queries).numpy()
        if len(queries) and self.dimension and queries.shape[1] != self.dimension:
            raise ValueError(f"query_embeddings have dimension {queries.shape[1]} but the index holds "
                             f"{self.dimension}.")
        if not len(queries) or not len(self) or top_k == 0:
            return [[] for _ in queries]
        k = min(top_k if self.precision == "float32" else top_k * rescore_multiplier, len(self))
        ids = self._candidates(queries, k)  # (queries, k)
        # Phase 2: score the candidates with the float queries against the stored vectors, restored to floats.
        candidates = self.vectors[ids.numpy()]  # (queries, k, stored width)
        if self.precision == "int8":
            candidates = dequantize_int8(candidates, self.ranges)
        elif self.precision == "binary":
            candidates = unpack_binary(candidates, self.dimension) / np.sqrt(self.dimension)  # unit length
        scores, order = torch.from_numpy(np.einsum("qd,qkd->qk", queries, candidates)).topk(min(top_k, k), dim=1)
        ids = ids.gather(1, order)
        return [[{"corpus_id": i, "score": s} for i, s in zip(row_ids, row_scores, strict=True)]
                for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True)]

    def _candidates(self, queries: np.ndarray, k: int) -> torch.Tensor:
        """Phase 1: the k best ids per query by the stored vectors' own measure (queries quantized alike)."""
        stored_queries = quantize_embeddings(queries, self.precision, self.ranges)
        if self.graph is not None:
            return torch.from_numpy(np.atleast_2d(self.graph.search(self._for_usearch(stored_queries), count=k)
                                                  .keys).astype(np.int64))
        if self.precision == "binary":
            return hamming_top_k(stored_queries, self.vectors, k)[0]
        hits = semantic_search(stored_queries, self.vectors, top_k=k, score_function=dot_score)
        return torch.tensor([[h["corpus_id"] for h in row] for row in hits])

    def _for_usearch(self, vectors: np.ndarray) -> np.ndarray:
        # usearch reads binary vectors as plain packed bits: undo the -128 shift of the "binary" format.
        return vectors.view(np.uint8) ^ 0x80 if self.precision == "binary" else vectors
