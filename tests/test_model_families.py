"""Five model families, tiny and random, in both layouts: minist gives sentence-transformers' embeddings."""

import json
import shutil

import numpy as np
import pytest
from conftest import TINY_SENTENCES, build_st_model
from model_families import FAMILIES, build
from sentence_transformers import SentenceTransformer as STModel

from minist import SentenceTransformer


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    return build(request.param, tmp_path_factory.mktemp(request.param) / "hf")


def assert_same(folder, batch_size=4):
    ours = SentenceTransformer(folder, device="cpu").encode(TINY_SENTENCES, batch_size=batch_size)
    theirs = STModel(str(folder), device="cpu").encode(TINY_SENTENCES, batch_size=batch_size)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-5


def test_plain_hugging_face_layout(family_dir):
    assert_same(family_dir)


@pytest.mark.parametrize(("pooling", "dense"), [("mean", True), ("cls", False), ("max", True)])
def test_sentence_transformers_layout(family_dir, tmp_path, pooling, dense):
    build_st_model(family_dir, pooling_mode=pooling, dense=dense).save(str(tmp_path / "st"))
    assert_same(tmp_path / "st")


def test_saved_by_minist_loads_in_sentence_transformers(family_dir, tmp_path):
    build_st_model(family_dir, dense=True).save(str(tmp_path / "st"))
    model = SentenceTransformer(tmp_path / "st", device="cpu")
    model.save(tmp_path / "minist")
    np.testing.assert_allclose(STModel(str(tmp_path / "minist"), device="cpu").encode(TINY_SENTENCES),
                               model.encode(TINY_SENTENCES), atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_left_padding_with_lasttoken_pooling(family, tmp_path):
    folder = build(family, tmp_path / "hf", padding_side="left")
    build_st_model(folder, pooling_mode="lasttoken", dense=False).save(str(tmp_path / "st"))
    model = SentenceTransformer(tmp_path / "st", device="cpu")
    batch = model.tokenize(["a", "the cat sat on the mat"])
    assert batch["attention_mask"][0, 0] == 0  # padded on the left
    # With left padding, BERT-style position ids start in the padding, so a text's embedding depends on how
    # much padding its batch adds: compare one batch that both libraries form alike.
    assert_same(tmp_path / "st", batch_size=len(TINY_SENTENCES))


def test_families_without_token_type_ids_get_none(tmp_path):
    folder = build("distilbert", tmp_path / "hf")
    assert "token_type_ids" not in SentenceTransformer(folder, device="cpu").tokenize(["a b"])
    # A tokenizer that makes token_type_ids for a model that takes none: they are left out of the call.
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "model_input_names": ["input_ids", "token_type_ids",
                                                                       "attention_mask"]}))
    model = SentenceTransformer(folder, device="cpu")
    assert "token_type_ids" in model.tokenize(["a b"])
    assert_same(folder)


def test_an_architecture_transformers_cannot_load_is_named(tmp_path, tiny_hf_dir):
    folder = shutil.copytree(tiny_hf_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "quantum-bert"}))
    with pytest.raises(ValueError, match=r"quantum-bert.*transformers .* cannot load"):
        SentenceTransformer(folder)


def test_only_bert_runs_on_the_from_scratch_model_and_the_others_run_through_transformers(family_dir):
    """``backend="minist"`` is BERT's teaching twin; every other family, MPNet included, runs on transformers'
    own class (MPNet would need its relative position buckets added to minist.bert: notebook 10's exercise)."""
    family = SentenceTransformer(family_dir, device="cpu").transformers_model.config.model_type
    if family == "bert":
        assert SentenceTransformer(family_dir, device="cpu", backend="minist").transformers_model is None
        return
    with pytest.raises(ValueError, match=rf"'{family}' model; minist\.bert reads BERT only; load it with "
                                         r"backend='hf'"):
        SentenceTransformer(family_dir, device="cpu", backend="minist")
    model = SentenceTransformer(family_dir, device="cpu")
    assert type(model.transformers_model).__module__.startswith(f"transformers.models.{family.replace('-', '_')}.")
