"""minist.bert, the from-scratch BERT, against transformers' BertModel on the same weights."""

import json
import shutil

import numpy as np
import pytest
import torch
from test_real_model import SENTENCES
from transformers import AutoModel, AutoTokenizer

from minist import SentenceTransformer
from minist.bert import BertModel


def both_models(folder):
    theirs = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    return BertModel.from_pretrained(folder), theirs, AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_last_hidden_state_matches_transformers_with_padding(which, tiny_hf_dir, real_model_dir):
    ours, theirs, tokenizer = both_models(tiny_hf_dir if which == "tiny" else real_model_dir)
    features = tokenizer(SENTENCES[:64], padding=True, truncation=True, max_length=64, return_tensors="pt")
    if which == "tiny":  # exercise the token type embeddings too
        features["token_type_ids"][:, 3:] = 1
    with torch.no_grad():
        got, expected = ours(**features), theirs(**features).last_hidden_state
    assert got.shape == expected.shape and features["attention_mask"].min() == 0  # the batch is padded
    # Real tokens are compared; at padding positions even transformers' eager and sdpa paths differ by ~5e-5.
    real = features["attention_mask"].bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-5


def test_attention_weights_match_and_ignore_padding(real_model_dir):
    ours, theirs, tokenizer = both_models(real_model_dir)
    features = tokenizer(["A short one.", "A longer sentence that needs more tokens."], padding=True,
                         return_tensors="pt")
    with torch.no_grad():
        ours(**features)
        expected = theirs(**features, output_attentions=True).attentions
    assert len(ours.attentions) == 6 and ours.attentions[0].shape == (2, 12, 11, 11)
    for got, want in zip(ours.attentions, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.attentions[0].sum(-1), torch.ones(2, 12, 11))
    assert ours.attentions[0][0, :, :, 6:].max() == 0  # the short sentence's padding gets no weight


def test_sentence_embeddings_through_the_minist_backend(real_model, real_model_dir):
    default = real_model.encode(SENTENCES)
    scratch = SentenceTransformer(real_model_dir, device="cpu", backend="minist")
    assert isinstance(scratch[0].auto_model, BertModel)
    assert np.abs(scratch.encode(SENTENCES) - default).max() <= 1e-5


def test_minist_backend_saves_a_model_sentence_transformers_loads(tmp_path, tiny_st_dir):
    from sentence_transformers import SentenceTransformer as STModel

    texts = ["the cat sat", "a dog runs fast", ""]
    SentenceTransformer(tiny_st_dir, device="cpu", backend="minist").save(tmp_path / "m")
    np.testing.assert_allclose(STModel(str(tmp_path / "m"), device="cpu").encode(texts),
                               STModel(str(tiny_st_dir), device="cpu").encode(texts), atol=1e-6)


def test_bad_input(tmp_path, tiny_hf_dir, tiny_st_dir):
    folder = shutil.copytree(tiny_hf_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(ValueError, match=r"'roberta' model; minist\.bert reads BERT only"):
        BertModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="backend must be"):
        SentenceTransformer(tiny_st_dir, backend="openvino")
