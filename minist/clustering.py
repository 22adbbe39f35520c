"""Community detection: groups of embeddings that are all close to one centre.

The fast clustering of sentence-transformers' ``util.community_detection``: every item whose
``min_community_size``-th nearest neighbour (itself included) is at least ``threshold`` similar
(cosine) is a candidate centre, with all items above the threshold as its community. Candidates are
taken largest first; an item already claimed by a larger community is not given to a later one, and a
community left with fewer than ``min_community_size`` items is dropped. Items in no community are left
out. For a fixed number of clusters use k-means (scikit-learn), as notebook 05 shows.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from minist.inputs import ArrayLike, as_matrix, check_finite
from minist.similarity import normalize_embeddings


def community_detection(embeddings: ArrayLike, threshold: float = 0.75, min_community_size: int = 10,
                        batch_size: int = 1024, show_progress_bar: bool = False) -> list[list[int]]:
    """Embeddings -> communities, largest first: ``[[centre, member, member, ...], ...]``.

    Each community lists its centre first, then its members from most to least similar.
    """
    if len(embeddings) == 0:
        return []
    matrix = as_matrix(embeddings, "embeddings")
    check_finite(matrix, "embeddings")
    unit = normalize_embeddings(matrix)
    if len(unit) < min_community_size:
        return []
    threshold = torch.tensor(threshold, dtype=unit.dtype)  # compare in the embeddings' precision
    candidates = []  # (centre, members sorted by similarity)
    for start in tqdm(range(0, len(unit), batch_size), desc="Finding clusters", disable=not show_progress_bar):
        scores = unit[start:start + batch_size] @ unit.T  # (batch, n) cosine similarities
        counts = (scores >= threshold).sum(dim=1)
        for row in (counts >= min_community_size).nonzero().flatten().tolist():
            members = scores[row].topk(int(counts[row])).indices  # exactly those above the threshold
            candidates.append((start + row, members.numpy()))

    communities, claimed = [], np.zeros(len(unit), dtype=bool)
    for centre, members in sorted(candidates, key=lambda c: len(c[1]), reverse=True):
        if claimed[centre]:
            continue
        free = members[~claimed[members]]
        if len(free) >= min_community_size:
            community = [centre, *free[free != centre].tolist()]
            communities.append(community)
            claimed[community] = True
    return sorted(communities, key=len, reverse=True)
