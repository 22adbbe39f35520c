"""Embedding quantization: int8 (one byte a number, 4x smaller than float32) and binary (one bit, 32x).

- int8: each dimension's observed range [min, max] is cut into 256 equal buckets; a value is stored as
  its bucket number minus 128. The ranges come from the corpus itself or a calibration set.
- binary: keep only each number's sign, eight dimensions to a byte (``numpy.packbits``).

Both lose precision, so search over them runs in two phases: fetch ``top_k * rescore_multiplier``
candidates cheaply, then rescore those with the float query against the dequantized vectors
(https://huggingface.co/blog/embedding-quantization). ``minist.ann.VectorIndex`` does both phases.
The outputs equal sentence-transformers' ``quantize_embeddings``.
Left out: product quantization and learned codebooks.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from minist.similarity import ArrayLike, to_tensor

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]


def quantization_ranges(embeddings: ArrayLike) -> np.ndarray:
    """(n, dim) float embeddings -> (2, dim): each dimension's minimum (row 0) and maximum (row 1)."""
    matrix = to_tensor(embeddings).numpy()
    if matrix.ndim != 2 or len(matrix) < 2:
        raise ValueError("int8 ranges need at least two embeddings; pass ranges= computed on a larger set.")
    return np.vstack([matrix.min(axis=0), matrix.max(axis=0)]).astype(np.float32)


def _steps(ranges: np.ndarray) -> np.ndarray:
    steps = (ranges[1] - ranges[0]) / 255  # bucket width per dimension
    return np.where(steps == 0, 1, steps)  # a constant dimension: any width will do


def quantize_embeddings(embeddings: ArrayLike, precision: Precision, ranges: np.ndarray | None = None) -> np.ndarray:
    """(n, dim) float -> int8/uint8 (n, dim), binary/ubinary (n, dim / 8) packed bits, or float32 as is.

    >>> quantize_embeddings(np.array([[0.5, -1.0, 2.0, 0, 0, 0, 0, 0]]), "ubinary")
    array([[160]], dtype=uint8)
    """
    matrix = to_tensor(embeddings).numpy()
    if precision == "float32":
        return matrix.astype(np.float32)
    if precision in ("int8", "uint8"):
        ranges = quantization_ranges(matrix) if ranges is None else ranges.astype(np.float32)
        buckets = np.clip(np.floor((matrix - ranges[0]) / _steps(ranges)), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    if precision in ("binary", "ubinary"):
        bits = np.packbits(matrix > 0, axis=-1)  # 1 where positive, 8 dimensions a byte
        return bits if precision == "ubinary" else (bits.astype(np.int16) - 128).astype(np.int8)
    raise ValueError(f"Unknown precision {precision!r}; choose float32, int8, uint8, binary or ubinary.")


def dequantize_int8(quantized: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """int8 buckets -> float32 values at each bucket's lower edge (the inverse of quantizing, up to a bucket)."""
    return ((quantized.astype(np.float32) + 128) * _steps(ranges) + ranges[0]).astype(np.float32)


def unpack_binary(packed: np.ndarray, dimension: int) -> np.ndarray:
    """binary (n, dim / 8) int8 -> (n, dim) float32 of +1 (positive) and -1 (not)."""
    bits = np.unpackbits(packed.view(np.uint8) ^ 0x80, axis=-1)[..., :dimension]  # undo the -128 shift
    return bits.astype(np.float32) * 2 - 1


def hamming_top_k(query_bits: np.ndarray, corpus_bits: np.ndarray, k: int, query_chunk_size: int = 16):
    """Packed bits -> for each query the ``k`` corpus rows with the fewest differing bits: (ids, distances)."""
    ids, distances = [], []
    for start in range(0, len(query_bits), query_chunk_size):
        chunk = query_bits[start:start + query_chunk_size, None, :].view(np.uint8)  # (q, 1, bytes)
        differ = np.bitwise_count(chunk ^ corpus_bits.view(np.uint8)[None]).sum(axis=-1, dtype=np.int32)
        top = torch.from_numpy(differ).topk(k, dim=1, largest=False)  # (q, k), fewest differences first
        ids.append(top.indices)
        distances.append(top.values)
    return torch.cat(ids), torch.cat(distances)
