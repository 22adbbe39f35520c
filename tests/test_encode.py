"""encode on tiny random models: equal to sentence-transformers, and every promise of its signature."""

import logging

import numpy as np
import pytest
import torch
from conftest import TINY_SENTENCES, build_st_model

from minist import SentenceTransformer
from minist.pooling import MODES


@pytest.fixture(scope="module")
def pair(tiny_st_dir):
    from sentence_transformers import SentenceTransformer as STModel

    return SentenceTransformer(tiny_st_dir, device="cpu"), STModel(str(tiny_st_dir), device="cpu")


def test_sentence_embeddings_match_sentence_transformers(pair):
    ours, theirs = pair
    expected = theirs.encode(TINY_SENTENCES, batch_size=4)
    got = ours.encode(TINY_SENTENCES, batch_size=4)
    assert got.shape == (len(TINY_SENTENCES), 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_token_embeddings_match_sentence_transformers(pair):
    ours, theirs = pair
    expected = theirs.encode(TINY_SENTENCES, output_value="token_embeddings")
    got = ours.encode(TINY_SENTENCES, output_value="token_embeddings")
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)
    assert ours.encode("the cat", output_value="token_embeddings").shape == (4, 32)  # [CLS] the cat [SEP]


@pytest.mark.parametrize("mode", MODES)
def test_every_pooling_mode_end_to_end(tmp_path, tiny_hf_dir, mode):
    st_model = build_st_model(tiny_hf_dir, pooling_mode=mode, dense=False, normalize=False)
    st_model.save(str(tmp_path / "m"))
    got = SentenceTransformer(tmp_path / "m", device="cpu").encode(TINY_SENTENCES)
    np.testing.assert_allclose(got, st_model.encode(TINY_SENTENCES), atol=1e-5, rtol=0)


def test_return_types_and_shapes(pair):
    model, _ = pair
    assert model.encode("a cat").shape == (8,)
    tensor = model.encode(["a cat", "a dog"], convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, 8)
    rows = model.encode(["a cat", "a dog"], convert_to_numpy=False)
    assert isinstance(rows, list) and all(r.shape == (8,) for r in rows)
    np.testing.assert_allclose(torch.stack(rows).numpy(), tensor.numpy())
    assert model.encode(("a cat", "a dog")).shape == (2, 8)  # any sequence of strings


def test_normalize_embeddings_matches_sentence_transformers(tmp_path, tiny_hf_dir):
    st_model = build_st_model(tiny_hf_dir, dense=False, normalize=False)
    st_model.save(str(tmp_path / "m"))
    got = SentenceTransformer(tmp_path / "m", device="cpu").encode(TINY_SENTENCES, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(got, st_model.encode(TINY_SENTENCES, normalize_embeddings=True), atol=1e-6)


def test_order_is_restored_and_batch_size_does_not_matter(pair):
    model, _ = pair
    one_by_one = np.stack([model.encode(text) for text in TINY_SENTENCES])
    for batch_size in (1, 3, 7, 32):
        np.testing.assert_allclose(model.encode(TINY_SENTENCES, batch_size=batch_size), one_by_one, atol=1e-6)


def test_empty_list_gives_an_empty_matrix(pair):
    model, _ = pair
    assert model.encode([]).shape == (0, 8)
    assert model.encode([], convert_to_tensor=True).shape == (0, 8)
    assert model.encode([], output_value="token_embeddings") == []


def test_empty_string_gives_a_real_embedding(pair):
    model, theirs = pair
    got = model.encode("")
    assert np.isfinite(got).all() and np.linalg.norm(got) == pytest.approx(1, abs=1e-6)
    np.testing.assert_allclose(got, theirs.encode(""), atol=1e-6)


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["nested"]])
def test_non_string_item_is_named_by_index(pair, bad):
    model, _ = pair
    with pytest.raises(TypeError, match=f"item 2 is a {type(bad).__name__}"):
        model.encode(["fine", "also fine", bad])


def test_bad_arguments_are_refused(pair):
    model, _ = pair
    with pytest.raises(TypeError, match="a string or a list of strings"):
        model.encode(42)
    with pytest.raises(ValueError, match="output_value"):
        model.encode(["x"], output_value="cls")
    with pytest.raises(ValueError, match="batch_size"):
        model.encode(["x"], batch_size=0)


def test_truncation_matches_and_warns_once_with_the_count(pair, caplog):
    model, theirs = pair
    long_texts = ["the cat " * 30, "dog", "the dog sat " * 20]
    with caplog.at_level(logging.WARNING, logger="minist"):
        got = model.encode(long_texts, batch_size=1)
    warnings = [r.getMessage() for r in caplog.records if r.name == "minist"]
    assert warnings == ["2 of 3 texts were longer than max_seq_length=16 tokens and were truncated."]
    assert model.tokenize(long_texts)["input_ids"].shape == (3, 16)
    np.testing.assert_allclose(got, theirs.encode(long_texts), atol=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minist"):
        model.encode(["dog"])
    assert not caplog.records


def test_max_seq_length_can_be_changed_like_in_sentence_transformers(tiny_st_dir):
    from sentence_transformers import SentenceTransformer as STModel

    ours, theirs = SentenceTransformer(tiny_st_dir, device="cpu"), STModel(str(tiny_st_dir), device="cpu")
    ours.max_seq_length = theirs.max_seq_length = 6
    text = "the cat sat on the mat again"
    assert ours.tokenize([text])["input_ids"].shape == (1, 6)
    np.testing.assert_allclose(ours.encode(text), theirs.encode(text), atol=1e-6)


def test_progress_bar_when_asked(pair, capsys):
    model, _ = pair
    model.encode(TINY_SENTENCES, batch_size=2, show_progress_bar=True)
    assert "Batches" in capsys.readouterr().err
    model.encode(TINY_SENTENCES, batch_size=2)
    assert "Batches" not in capsys.readouterr().err


def test_inference_mode_and_eval(pair):
    model, _ = pair
    model.train()
    first = model.encode(TINY_SENTENCES)  # dropout would make two runs differ
    np.testing.assert_array_equal(first, model.encode(TINY_SENTENCES))
    assert model.encode(["x"], convert_to_tensor=True).requires_grad is False


def test_pipeline_steps_can_be_run_by_hand(pair):
    model, _ = pair
    features = model.tokenize(["the cat sat", "a dog"])
    assert set(features) == {"input_ids", "token_type_ids", "attention_mask"}
    with torch.no_grad():
        for step in model:
            features = step(features)
    assert features["token_embeddings"].shape == (2, 5, 32)
    np.testing.assert_allclose(features["sentence_embedding"].numpy(), model.encode(["the cat sat", "a dog"]),
                               atol=1e-6)
