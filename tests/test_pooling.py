"""Pooling: every mode equals sentence-transformers' Pooling module, plus hand-computed cases."""

import json

import pytest
import torch
from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

from minist.pooling import MODES, Pooling, pool


def random_batch(padding_side: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(4, 7, 5, generator=generator)
    lengths = torch.tensor([7, 3, 1, 5])
    positions = torch.arange(7).expand(4, 7)
    mask = positions < lengths[:, None] if padding_side == "right" else positions >= 7 - lengths[:, None]
    return tokens, mask.long()


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("mode", MODES)
def test_each_mode_matches_sentence_transformers(mode, padding_side):
    tokens, mask = random_batch(padding_side)
    expected = STPooling(5, pooling_mode=mode)({"token_embeddings": tokens, "attention_mask": mask})
    ours = Pooling(5, mode)({"token_embeddings": tokens, "attention_mask": mask})
    torch.testing.assert_close(ours["sentence_embedding"], expected["sentence_embedding"], rtol=0, atol=1e-6)


def test_several_modes_concatenate_in_order_like_sentence_transformers():
    tokens, mask = random_batch("right")
    expected = STPooling(5, pooling_mode=("cls", "mean", "max"))({"token_embeddings": tokens, "attention_mask": mask})
    ours = Pooling(5, ["cls", "mean", "max"])
    torch.testing.assert_close(ours({"token_embeddings": tokens, "attention_mask": mask})["sentence_embedding"],
                               expected["sentence_embedding"])
    assert ours.get_sentence_embedding_dimension() == 15


def test_hand_computed_cases():
    tokens = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]]])  # the last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert pool(tokens, mask, "cls").tolist() == [[1.0, -2.0]]
    assert pool(tokens, mask, "mean").tolist() == [[2.0, 1.0]]
    assert pool(tokens, mask, "max").tolist() == [[3.0, 4.0]]
    assert pool(tokens, mask, "lasttoken").tolist() == [[3.0, 4.0]]
    torch.testing.assert_close(pool(tokens, mask, "mean_sqrt_len_tokens"), torch.tensor([[4.0, 2.0]]) / 2**0.5)
    # weights 1 and 2: (1*1 + 2*3) / 3, (1*-2 + 2*4) / 3
    torch.testing.assert_close(pool(tokens, mask, "weightedmean"), torch.tensor([[7 / 3, 2.0]]))


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="median"):
        Pooling(4, "median")


@pytest.mark.parametrize("modes", [["mean"], ["lasttoken"], ["cls", "max"], ["max", "cls"]])
def test_config_round_trip_through_sentence_transformers(tmp_path, modes):
    Pooling(6, modes, include_prompt=False).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    theirs = STPooling.load(str(tmp_path))
    assert list(theirs.pooling_mode if isinstance(theirs.pooling_mode, tuple) else [theirs.pooling_mode]) == modes
    assert config["word_embedding_dimension"] == 6 and theirs.include_prompt is False
    (tmp_path / "v6").mkdir()
    theirs.save(str(tmp_path / "v6"))  # sentence-transformers 6 writes `pooling_mode`; read that back too
    assert Pooling.load(tmp_path / "v6").modes == modes
