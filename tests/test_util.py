"""minist.util against sentence-transformers' util and numpy, for arrays, lists and tensors."""

import numpy as np
import pytest
import torch
from sentence_transformers import util as st_util

from minist import util

rng = np.random.default_rng(0)
A = rng.normal(size=(5, 16)).astype(np.float32)
B = rng.normal(size=(3, 16)).astype(np.float32)
FUNCTIONS = ["cos_sim", "dot_score", "euclidean_sim", "manhattan_sim"]


def as_kind(array, kind):
    return {"numpy": array, "tensor": torch.from_numpy(array), "list": array.tolist(),
            "list_of_rows": list(array), "half": torch.from_numpy(array).half()}[kind]


@pytest.mark.parametrize("kind", ["numpy", "tensor", "list", "list_of_rows", "half"])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_matrix_scores_match_sentence_transformers(name, kind):
    ours = getattr(util, name)(as_kind(A, kind), as_kind(B, kind))
    theirs = getattr(st_util, name)(as_kind(A, kind), as_kind(B, kind))
    assert isinstance(ours, torch.Tensor) and ours.shape == (5, 3) and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("kind", ["numpy", "tensor", "list"])
@pytest.mark.parametrize("name", ["pairwise_cos_sim", "pairwise_dot_score", "pairwise_euclidean_sim",
                                  "pairwise_manhattan_sim"])
def test_pairwise_scores_match_sentence_transformers(name, kind):
    ours = getattr(util, name)(as_kind(A[:3], kind), as_kind(B, kind))
    torch.testing.assert_close(ours, getattr(st_util, name)(as_kind(A[:3], kind), as_kind(B, kind)))
    assert ours.shape == (3,)


def test_against_numpy_and_one_vector_inputs():
    expected = (A / np.linalg.norm(A, axis=1, keepdims=True)) @ (B / np.linalg.norm(B, axis=1, keepdims=True)).T
    np.testing.assert_allclose(util.cos_sim(A, B).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(util.dot_score(A[0], B).numpy(), A[:1] @ B.T, rtol=1e-6)
    assert util.cos_sim(A[0], B[0]).shape == (1, 1)


def test_normalize_embeddings_gives_unit_rows_and_keeps_zero_rows():
    out = util.normalize_embeddings(np.vstack([A, np.zeros((1, 16), np.float32)]))
    np.testing.assert_allclose(out.norm(dim=1).numpy(), [1] * 5 + [0], atol=1e-6)
    torch.testing.assert_close(out[:5], st_util.normalize_embeddings(torch.from_numpy(A)))


def test_hand_computed():
    assert util.dot_score([[1.0, 2.0]], [[3.0, 4.0]]).item() == 11.0
    assert util.euclidean_sim([0.0, 0.0], [[3.0, 4.0]]).item() == -5.0
    assert util.manhattan_sim([0.0, 0.0], [[3.0, -4.0]]).item() == -7.0
    assert util.pairwise_euclidean_sim([[1.0, 1.0]], [[4.0, 5.0]]).tolist() == [-5.0]
    assert util.cos_sim([1.0, 0.0], [[0.0, 3.0], [-2.0, 0.0]]).tolist() == [[0.0, -1.0]]


def test_mismatched_sizes_are_named():
    with pytest.raises(ValueError, match=r"dimension 16.*has 8"):
        util.cos_sim(A, B[:, :8])
    with pytest.raises(ValueError, match=r"\(5, 16\).*\(3, 16\)"):
        util.pairwise_cos_sim(A, B)
