"""Last step of the pipeline: scale each sentence embedding to unit length (L2 norm 1).

After it, the dot product of two embeddings equals their cosine similarity, which is why
models such as all-MiniLM-L6-v2 end with it. It has no weights and no settings to save.
Left out: other norms (such as L1), which sentence-transformers' Normalize does not offer either.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Normalize(nn.Module):
    """(batch, dim) ``sentence_embedding`` -> the same vectors divided by their L2 norms."""

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        features["sentence_embedding"] = F.normalize(features["sentence_embedding"], p=2, dim=1)
        return features
