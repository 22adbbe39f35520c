"""Loading by folder, plain Hugging Face folder, offline package, and Hugging Face cache; clear errors."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_SENTENCES
from model_families import build

import minist.model
from minist import SentenceTransformer
from minist.hub import ModelNotFoundError, hub_ids, offline_package_folder, resolve_model_folder
from minist.transformer import position_limit


def test_plain_hugging_face_folder_gets_mean_pooling_like_sentence_transformers(tiny_hf_dir, caplog):
    from sentence_transformers import SentenceTransformer as STModel

    with caplog.at_level(logging.WARNING, logger="minist"):
        model = SentenceTransformer(tiny_hf_dir, device="cpu")
    notes = [r.getMessage() for r in caplog.records if r.name == "minist"]
    assert len(notes) == 1 and "no modules.json" in notes[0] and "mean pooling" in notes[0]
    assert model[1].modes == ["mean"] and len(model) == 2
    np.testing.assert_allclose(model.encode(TINY_SENTENCES), STModel(str(tiny_hf_dir), device="cpu").encode(
        TINY_SENTENCES), atol=1e-6)


def test_short_name_and_hub_id_find_the_offline_package(real_model_dir):
    assert resolve_model_folder("all-MiniLM-L6-v2") == real_model_dir
    assert resolve_model_folder("sentence-transformers/all-MiniLM-L6-v2") == real_model_dir
    assert offline_package_folder("sentence-transformers/ALL-minilm-L6-v2") == real_model_dir
    assert hub_ids("all-MiniLM-L6-v2") == ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"]


HUB_SCRIPT = textwrap.dedent("""
    import json, sys
    from minist import SentenceTransformer
    from minist.hub import ModelNotFoundError
    out = {}
    for name in sys.argv[1:]:
        try:
            out[name] = SentenceTransformer(name, device="cpu").encode(["the cat sat"]).tolist()
        except ModelNotFoundError as error:
            out[name] = str(error)
    print(json.dumps(out))
""")


def lay_out_hub_cache(cache, repo_id, model_folder, commit="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.slow
def test_hub_ids_and_short_names_load_from_the_hugging_face_cache_offline(tmp_path, tiny_st_dir):
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, "minist-test/tiny-model", tiny_st_dir)
    lay_out_hub_cache(cache, "sentence-transformers/tiny-short", tiny_st_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    names = ["minist-test/tiny-model", "tiny-short", "minist-test/not-there"]
    run = subprocess.run([sys.executable, "-c", HUB_SCRIPT, *names], env=env, capture_output=True, text=True,
                         check=True)
    out = json.loads(run.stdout)
    expected = SentenceTransformer(tiny_st_dir, device="cpu").encode(["the cat sat"])
    np.testing.assert_allclose(out["minist-test/tiny-model"], expected, atol=1e-6)
    np.testing.assert_allclose(out["tiny-short"], expected, atol=1e-6)
    message = out["minist-test/not-there"]
    assert "Could not find the model 'minist-test/not-there'" in message
    assert "a local folder" in message and "offline model package" in message
    assert str(cache) in message and "HF_HUB_OFFLINE=1" in message


def test_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"No model folder at .*does-not-exist"):
        SentenceTransformer(str(tmp_path / "does-not-exist"))
    (tmp_path / "file.txt").write_text("not a model")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        SentenceTransformer(tmp_path / "file.txt")


@pytest.mark.parametrize(("remove", "named"), [("model.safetensors", "no weights"),
                                               ("tokenizer.json", "no a tokenizer"),
                                               ("config.json", "no a config")])
def test_folder_without_weights_tokenizer_or_config(tmp_path, tiny_hf_dir, remove, named):
    folder = shutil.copytree(tiny_hf_dir, tmp_path / "m")
    (folder / remove).unlink()
    with pytest.raises(FileNotFoundError, match=f"{folder}.*{named}"):
        SentenceTransformer(folder)


def test_a_saved_prompt_with_a_lone_surrogate_is_named_at_load(tmp_path, tiny_st_dir):
    folder = shutil.copytree(tiny_st_dir, tmp_path / "m")
    path = folder / "config_sentence_transformers.json"
    config = json.loads(path.read_text()) | {"prompts": {"query": "query: ", "document": "passage\udc80: "}}
    path.write_text(json.dumps(config))  # written as the escape \udc80, which JSON reads back as a lone surrogate
    assert json.loads(path.read_text())["prompts"]["document"] == "passage\udc80: "
    with pytest.raises(ValueError, match=re.escape(f"{path}: prompt 'document' holds a lone surrogate (U+DC80) at "
                                                   "character 7")):
        SentenceTransformer(folder)


def test_unknown_step_in_modules_json_is_named(tmp_path, tiny_st_dir):
    folder = shutil.copytree(tiny_st_dir, tmp_path / "m")
    entries = json.loads((folder / "modules.json").read_text())
    entries.append({"idx": 4, "name": "4", "path": "4_LSTM", "type": "sentence_transformers.models.LSTM"})
    (folder / "modules.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"sentence_transformers\.models\.LSTM"):
        SentenceTransformer(folder)


def test_older_dense_weights_in_pytorch_model_bin_load(tmp_path, tiny_st_dir):
    from safetensors.torch import load_file

    folder = shutil.copytree(tiny_st_dir, tmp_path / "m")
    dense = folder / "2_Dense"
    torch.save(load_file(dense / "model.safetensors"), dense / "pytorch_model.bin")
    (dense / "model.safetensors").unlink()
    np.testing.assert_array_equal(SentenceTransformer(folder, device="cpu").encode(TINY_SENTENCES),
                                  SentenceTransformer(tiny_st_dir, device="cpu").encode(TINY_SENTENCES))
    (dense / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="No Dense weights"):
        SentenceTransformer(folder)


def test_device_order_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert minist.model.default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert minist.model.default_device() == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert minist.model.default_device() == "cpu"


def test_device_is_honoured(tiny_st_dir):
    assert SentenceTransformer(tiny_st_dir, device="cpu").device == torch.device("cpu")


@pytest.mark.parametrize(("config", "limit"), [
    (dict(model_type="bert", max_position_embeddings=512, pad_token_id=0), 512),
    (dict(model_type="roberta", max_position_embeddings=514, pad_token_id=1), 512),  # ids start at pad + 1 = 2
    (dict(model_type="xlm-roberta", max_position_embeddings=8194, pad_token_id=1), 8192),  # bge-m3
    (dict(model_type="camembert", max_position_embeddings=514, pad_token_id=1), 512),
    (dict(model_type="mpnet", max_position_embeddings=514, pad_token_id=0), 512),  # MPNet's padding index is 1
    (dict(model_type="xlnet", max_position_embeddings=-1), None),  # XLNet's "no limit"
    (dict(model_type="t5"), None),  # relative positions: no table
])
def test_position_limit_by_hand(config, limit):
    assert position_limit(SimpleNamespace(**config)) == limit


def test_a_roberta_folder_gets_its_real_limit_not_max_position_embeddings(tmp_path):
    folder = build("roberta", tmp_path / "m")  # max_position_embeddings=66, pad_token_id=1
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    del config["model_max_length"]  # the tokenizer then sets no limit of its own
    config_file.write_text(json.dumps(config))
    model = SentenceTransformer(folder, device="cpu")
    assert model.max_seq_length == 64
    assert model.encode("the cat " * 100).shape == (32,)  # 64 tokens fill the table exactly


def test_a_saved_max_seq_length_past_the_position_table_is_capped_and_named(tmp_path, tiny_st_dir, caplog):
    folder = shutil.copytree(tiny_st_dir, tmp_path / "m")
    options = folder / "sentence_bert_config.json"
    options.write_text(json.dumps({**json.loads(options.read_text()), "max_seq_length": 100}))
    with caplog.at_level(logging.WARNING, logger="minist"):
        model = SentenceTransformer(folder, device="cpu")
    assert model.max_seq_length == 64
    assert [r.getMessage() for r in caplog.records if r.name == "minist"] == [
        f"{options} asks for max_seq_length=100, but the model's position table holds 64 tokens: using 64."]
