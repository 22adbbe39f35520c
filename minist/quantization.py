"""Quantization: of embeddings (int8 and binary, to store and search them) and of the model (int8 inference).

Embeddings: int8 (one byte a number, 4x smaller than float32) and binary (one bit, 32x).

- int8: each dimension's observed range [min, max] is cut into 256 equal buckets; a value is stored as
  its bucket number minus 128. The ranges come from the corpus itself or a calibration set.
- binary: keep only each number's sign, eight dimensions to a byte (``numpy.packbits``).

Both lose precision, so search over them runs in two phases: fetch ``top_k * rescore_multiplier``
candidates cheaply, then rescore those with the float query against the dequantized vectors
(https://huggingface.co/blog/embedding-quantization). ``minist.ann.VectorIndex`` does both phases.
The outputs equal sentence-transformers' ``quantize_embeddings``.

The model: ``Int8Linear`` runs a linear layer's matrix product in int8 (dynamic, vector-wise
quantization as in LLM.int8(), https://arxiv.org/abs/2208.07339, without its float16 outlier columns).
Weights get one scale per output row, fixed once; each token's activations get their own scale,
computed on the fly. Per-token
scales matter: torch's ``quantize_dynamic`` shares one scale over the whole batch, and a single outlier
token then costs every other token its precision (worst cosine to float32 0.76 on STS-B, against 0.98).
Left out: product quantization and learned codebooks; static (calibrated) activation scales; int4.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from minist.inputs import ArrayLike
from minist.similarity import to_tensor

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


# --- int8 inference: the model's linear layers -------------------------------------------------------
def quantize_rows(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, n) float -> (rows, n) int8 and (rows, 1) scales, so that ``int8 * scale`` ~ ``matrix``.

    Symmetric: each row's largest magnitude maps to 127 (zero stays zero exactly).
    >>> quantize_rows(torch.tensor([[0.5, -1.0, 0.25]]))[0]
    tensor([[  64, -127,   32]], dtype=torch.int8)
    """
    low, high = torch.aminmax(matrix, dim=1, keepdim=True)  # one pass for the largest magnitude
    scales = torch.maximum(high, -low).clamp(min=1e-12) / 127  # an all-zero row: any scale will do
    return matrix.div(scales).round_().to(torch.int8), scales


class Int8Linear(nn.Module):
    """A ``nn.Linear`` whose product runs in int8: x (..., in) -> (..., out), a few percent off float32.

    y = (x_int8 @ W_int8.T) * x_scale * w_scale + bias, with int32 sums (``torch._int_mm``).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight, scales = quantize_rows(linear.weight.detach().float())  # (out, in), (out, 1)
        self.register_buffer("weight_t", weight.t())  # (in, out) column-major view, as _int_mm takes it
        self.register_buffer("weight_scale", scales.t())  # (1, out)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
        x_int8, x_scale = quantize_rows(rows)  # one scale per token
        y = torch._int_mm(x_int8, self.weight_t).float()  # (tokens, out), exact integer sums
        y.mul_(x_scale).mul_(self.weight_scale)  # in place: these passes over y cost as much as the product
        if self.bias is not None:
            y.add_(self.bias)
        return y.reshape(*x.shape[:-1], -1)


def quantize_linear_layers(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by an ``Int8Linear``, in place; returns how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                setattr(parent, name, Int8Linear(child))
                count += 1
    return count
