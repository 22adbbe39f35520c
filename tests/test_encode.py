"""encode on tiny random models: equal to sentence-transformers, and every promise of its signature."""

import logging

import numpy as np
import pytest
import torch
from conftest import TINY_SENTENCES, build_st_model
from model_families import build
from sentence_transformers import SentenceTransformer as STModel

from minist import SentenceTransformer
from minist.inputs import text_list
from minist.pooling import MODES


@pytest.fixture(scope="module")
def pair(tiny_st_dir):
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


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
@pytest.mark.parametrize("truncate_dim", [None, 4])
@pytest.mark.parametrize("device", [None, ["cpu"]])  # ["cpu"]: the pool's path, which returns before starting one
def test_empty_list_gives_the_dtype_and_width_of_its_precision(pair, precision, truncate_dim, device):
    model, _ = pair
    options = dict(precision=precision, truncate_dim=truncate_dim)
    two = model.encode(["a cat", "a dog"], **options)  # the reference: int8 (2, 8); ubinary (2, 1) packed bits
    empty = model.encode([], device=device, **options)
    assert (empty.shape, empty.dtype) == ((0, two.shape[1]), two.dtype)
    assert np.concatenate([two, empty]).dtype == two.dtype  # an empty batch no longer turns int8 into float32
    two = model.encode(["a cat", "a dog"], convert_to_tensor=True, **options)
    empty = model.encode([], convert_to_tensor=True, device=device, **options)
    assert (empty.shape, empty.dtype, empty.device) == ((0, two.shape[1]), two.dtype, two.device)
    assert model.encode([], convert_to_numpy=False, device=device, **options) == []  # a list of rows: none


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
    with pytest.raises(TypeError, match=r"not a bytes \(decode bytes first"):
        model.encode(b"the cat")  # else read as a list of ints
    with pytest.raises(ValueError, match="output_value"):
        model.encode(["x"], output_value="cls")
    with pytest.raises(ValueError, match="batch_size"):
        model.encode(["x"], batch_size=0)


@pytest.mark.parametrize("text", ["ok\ud800", "ok\udc80 tail", "ok\ud83d\ude42"])  # lone, escaped byte, split pair
def test_a_lone_surrogate_is_named_by_index_before_any_work(pair, monkeypatch, text):
    model, _ = pair
    monkeypatch.setattr(model[0], "tokenize", lambda *a, **k: pytest.fail("tokenized before the texts were checked"))
    named = rf"item 3 holds a lone surrogate \(U\+{ord(text[2]):04X}\) at character 2, which is not valid"
    with pytest.raises(ValueError, match=named):
        model.encode(["fine", "Zoé", "🙂", text])
    with pytest.raises(ValueError, match="item 0 holds a lone surrogate"):
        model.encode(text)
    with pytest.raises(UnicodeEncodeError):  # what the check stands for: Python's own UTF-8 encoder refuses it
        text.encode("utf-8")


@pytest.mark.parametrize(("call", "named"), [
    (lambda model: model.encode(["a cat"], prompt="q\ud800: "), "prompt"),
    (lambda model: model.encode(["a cat"], prompt_name="query"), "prompt 'query'"),
    (lambda model: model.encode_query("a cat"), "prompt 'query'"),
    (lambda model: model.encode(["a cat"], device=["cpu"], prompt_name="query"), "prompt 'query'"),  # no pool started
], ids=["prompt", "prompt_name", "encode_query", "pool"])
def test_a_prompt_with_a_lone_surrogate_is_named_before_any_work(tiny_st_dir, monkeypatch, call, named):
    model = SentenceTransformer(tiny_st_dir, device="cpu", prompts={"query": "q\ud800: ", "document": "d: "})
    monkeypatch.setattr(model[0], "tokenize", lambda *a, **k: pytest.fail("tokenized before the prompt was checked"))
    with pytest.raises(ValueError, match=rf"^{named} holds a lone surrogate \(U\+D800\) at character 1, which is not"):
        call(model)
    model.default_prompt_name = "query"
    with pytest.raises(ValueError, match=r"^prompt 'query' holds a lone surrogate"):
        model.encode("a cat")  # the default prompt, given no other
    monkeypatch.undo()
    assert model.encode_document(["a cat"]).shape == (1, 8)  # the other prompts work as before


def test_text_list_is_the_check_other_modules_share():
    assert text_list("a cat") == ["a cat"]
    assert text_list(t for t in ("a", "Zoé 🙂")) == ["a", "Zoé 🙂"]
    with pytest.raises(TypeError, match="item 1 is a int"):
        text_list(["a", 1])
    with pytest.raises(ValueError, match=r"item 1 holds a lone surrogate \(U\+DFFF\) at character 3"):
        text_list(["a", "abc\udfff"])


def wrong(count) -> type[Exception]:
    """What minist.inputs.check_count raises: a TypeError for what is not an int (True included), else a ValueError."""
    return TypeError if isinstance(count, bool) or not isinstance(count, int) else ValueError


@pytest.mark.parametrize("texts", [[], ["the cat sat"]])
@pytest.mark.parametrize("bad", [0, -1, 9, 2.5, "4", True])
def test_truncate_dim_outside_the_embedding_is_refused(pair, texts, bad):
    model, _ = pair
    with pytest.raises(wrong(bad), match="truncate_dim must be"):
        model.encode(texts, truncate_dim=bad)


def test_truncate_dim_matches_sentence_transformers(pair):
    ours, theirs = pair
    np.testing.assert_allclose(ours.encode(TINY_SENTENCES, truncate_dim=3),
                               theirs.encode(TINY_SENTENCES, truncate_dim=3), atol=1e-6)
    assert ours.encode([], truncate_dim=np.int64(8)).shape == (0, 8)  # numpy ints are ints


@pytest.mark.parametrize(("name", "bad"), [("batch_size", "4"), ("batch_size", 2.5), ("batch_size", True),
                                           ("max_batch_tokens", "5"), ("max_batch_tokens", 0),
                                           ("max_batch_tokens", 1.5)])
def test_batch_settings_must_be_positive_ints(pair, name, bad):
    model, _ = pair
    with pytest.raises(wrong(bad), match=f"{name} must be"):
        model.encode(["x"], **{name: bad})


@pytest.mark.parametrize(("device", "named"), [("gpu", "not a device torch knows"), ("cuda:99", "CUDA GPU"),
                                               (3.5, "not a device torch knows")])
def test_a_device_this_machine_lacks_is_named(pair, tiny_st_dir, device, named):
    model, _ = pair
    with pytest.raises(ValueError, match=f"device={device!r}.*{named}"):
        model.encode(["x"], device=device)
    with pytest.raises(ValueError, match=f"device={device!r}.*{named}"):
        SentenceTransformer(tiny_st_dir, device=device)
    assert model.device == torch.device("cpu")


@pytest.mark.parametrize("bad", [0, -3, "16", 16.0, True, None])
def test_max_seq_length_must_be_a_positive_int(pair, bad):
    model, _ = pair
    with pytest.raises(wrong(bad), match="max_seq_length must be"):
        model.max_seq_length = bad
    with pytest.raises(wrong(bad), match="max_seq_length must be"):
        model[0].max_seq_length = bad
    assert model.max_seq_length == 16


@pytest.fixture(scope="module", params=["bert", "roberta", "mpnet", "xlm-roberta"])
def family_dir(request, tmp_path_factory):
    return build(request.param, tmp_path_factory.mktemp(request.param) / "hf")


def test_max_seq_length_stops_exactly_at_the_position_table(family_dir):
    """BERT's 64 positions hold 64 tokens; RoBERTa's and XLM-R's 66 hold 64 (ids start after pad_token_id 1),
    MPNet's too (its padding index is 1 whatever the config says)."""
    ours, theirs = SentenceTransformer(family_dir, device="cpu"), STModel(str(family_dir), device="cpu")
    long_text = "the cat " * 100
    ours.max_seq_length = theirs.max_seq_length = 64  # the limit: the whole table is used, and it works
    assert ours.tokenize([long_text])["input_ids"].shape == (1, 64)
    np.testing.assert_allclose(ours.encode(long_text), theirs.encode(long_text), atol=1e-5)
    with pytest.raises(ValueError, match=r"from 1 to 64 \(the most tokens this model's position table holds\)"):
        ours.max_seq_length = 65
    assert ours.max_seq_length == 64
    ours.tokenizer.model_max_length = 65  # past the check, one token more does break the model
    with pytest.raises((IndexError, RuntimeError)):
        ours.encode(long_text)


def test_the_limit_is_kept_when_the_model_is_swapped(tiny_st_dir):
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    model[0].auto_model = torch.nn.Identity()  # as backend="onnx" does: no config to read any more
    with pytest.raises(ValueError, match="from 1 to 64"):
        model.max_seq_length = 65


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
