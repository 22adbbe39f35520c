"""A damaged model folder: every broken file is named in the error, with what is wrong in it.

The folder is one that sentence-transformers saved (Transformer -> Pooling -> Dense -> Normalize), copied,
then one file is damaged: cut in half, overwritten with junk, or edited into something malformed.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from minist import SentenceTransformer
from minist.inputs import json_field, read_json


def truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path):
    path.write_bytes(bytes(range(256)) * 4)


def text(content):
    return lambda path: path.write_text(content)


def edited(change):
    """Rewrite a JSON file as ``change(its value)``; ``change`` may edit a dict in place and return None."""
    def damage(path):
        value = json.loads(path.read_text())
        path.write_text(json.dumps(change(value) or value))
    return damage


def without(key):
    return edited(lambda config: config.pop(key) and None)


def entries(change):
    """Apply ``change`` to each entry of modules.json, in place."""
    def each(steps):
        for step in steps:
            change(step)
        return steps
    return edited(each)


def weights(change):
    def damage(path):
        save_file(change(load_file(path)), path)
    return damage


DAMAGE = [  # (file, damage, what the message says besides the file's path)
    ("modules.json", text("[{"), "not valid JSON"),
    ("modules.json", garbage, "not valid JSON"),
    ("modules.json", text("{}"), "holds an object where a list belongs"),
    ("modules.json", text('["1_Pooling"]'), "entry 0 is '1_Pooling', not an object"),
    ("modules.json", entries(lambda step: step.pop("type")), "entry 0 has no 'type'"),
    ("modules.json", entries(lambda step: step.pop("path")), "entry 0 has no 'path'"),
    ("modules.json", entries(lambda step: step.update(path=1)), "entry 0: 'path' must be a string, not 1"),
    ("modules.json", entries(lambda step: step.update(path="../elsewhere") if step["idx"] == 1 else None),
     "entry 1 points outside the model folder"),
    ("modules.json", entries(lambda step: step.update(path="/etc") if step["idx"] == 1 else None),
     "entry 1 points outside the model folder"),
    ("modules.json", edited(lambda steps: steps[1:]), "must list a Transformer step first"),
    ("config_sentence_transformers.json", truncated, "not valid JSON"),
    ("config_sentence_transformers.json", text("[]"), "holds a list where an object belongs"),
    ("config_sentence_transformers.json", edited(lambda c: c.update(similarity_fn_name="cos")),
     "unknown similarity_fn_name 'cos'"),
    ("sentence_bert_config.json", garbage, "not valid JSON"),
    ("sentence_bert_config.json", text('{"max_seq_length": "long"}'), "'max_seq_length' must be an integer"),
    ("sentence_bert_config.json", text('{"max_seq_length": 0}'), "max_seq_length must be at least 1"),
    ("sentence_bert_config.json", text('{"do_lower_case": "yes"}'), "'do_lower_case' must be true or false"),
    ("config.json", truncated, "not valid JSON"),
    ("config.json", text("[1, 2]"), "holds a list where an object belongs"),
    ("config.json", without("model_type"), "has no 'model_type'"),
    ("config.json", edited(lambda c: c.update(hidden_size="big")), "hidden_size"),
    ("1_Pooling/config.json", garbage, "not valid JSON"),
    ("1_Pooling/config.json", without("embedding_dimension"), "has no 'embedding_dimension'"),
    ("1_Pooling/config.json", edited(lambda c: c.update(embedding_dimension="32")),
     "'embedding_dimension' must be an integer"),
    ("1_Pooling/config.json", edited(lambda c: c.update(embedding_dimension=31)),
     "takes vectors of size 31, but the steps before it give 32"),
    ("1_Pooling/config.json", edited(lambda c: c.update(pooling_mode="median")), "Invalid pooling mode: 'median'"),
    ("1_Pooling/config.json", without("pooling_mode"), "No pooling mode"),
    ("2_Dense/config.json", truncated, "not valid JSON"),
    ("2_Dense/config.json", without("in_features"), "has no 'in_features'"),
    ("2_Dense/config.json", edited(lambda c: c.update(out_features=[8])), "'out_features' must be an integer"),
    ("2_Dense/config.json", edited(lambda c: c.update(in_features=0)), "must be at least 1"),
    ("2_Dense/config.json", edited(lambda c: c.update(in_features=16)), r"asks for \{'linear.weight': \(8, 16\)"),
    ("2_Dense/config.json", edited(lambda c: c.update(activation_function="torch.nn.Linear")),
     "Unsupported activation_function 'torch.nn.Linear'"),
    ("2_Dense/config.json", edited(lambda c: c.update(activation_function="torch.nn.nothing.Here")),
     "Unsupported activation_function"),
    ("2_Dense/model.safetensors", truncated, "not a readable weights file"),
    ("2_Dense/model.safetensors", garbage, "not a readable weights file"),
    ("2_Dense/model.safetensors", weights(lambda state: {**state, "linear.weight": torch.zeros(32, 8)}),
     r"holds \{'linear.bias': \(8,\), 'linear.weight': \(32, 8\)\}"),
    ("2_Dense/model.safetensors", weights(lambda state: {"linear.weight": state["linear.weight"]}),
     r"holds \{'linear.weight': \(8, 32\)\}"),
    ("tokenizer.json", garbage, "not valid JSON"),
    ("tokenizer.json", truncated, "not valid JSON"),
    ("tokenizer.json", text("{}"), "building the tokenizer failed"),
    ("tokenizer_config.json", truncated, "not valid JSON"),
    ("model.safetensors", truncated, "loading the weights failed"),
    ("model.safetensors", garbage, "loading the weights failed"),
    ("model.safetensors", weights(lambda state: {k: v for k, v in state.items() if "layer.1.output.dense" not in k}),
     "lacks 2 of the model's weights .*encoder.layer.1.output.dense.bias"),
    ("model.safetensors", weights(lambda state: {**state, "embeddings.word_embeddings.weight": torch.zeros(3, 32)}),
     "loading the weights failed"),
]


@pytest.mark.parametrize(("name", "damage", "what"), DAMAGE)
def test_a_damaged_file_is_named_with_what_is_wrong(tmp_path, tiny_st_dir, name, damage, what):
    folder = shutil.copytree(tiny_st_dir, tmp_path / "model")
    damage(folder / name)
    with pytest.raises((ValueError, OSError), match=what) as caught:
        SentenceTransformer(folder, device="cpu")
    assert str(folder / name) in str(caught.value)


def test_a_failure_inside_transformers_keeps_its_cause(tmp_path, tiny_st_dir):
    folder = shutil.copytree(tiny_st_dir, tmp_path / "model")
    truncated(folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: loading the weights failed") as caught:
        SentenceTransformer(folder, device="cpu")
    assert caught.value.__cause__ is not None  # raised "from" the loader's own error, for the full story


def test_older_dense_weights_in_pytorch_model_bin_are_named_too(tmp_path, tiny_st_dir):
    folder = shutil.copytree(tiny_st_dir, tmp_path / "model")
    dense = folder / "2_Dense"
    (dense / "model.safetensors").unlink()
    garbage(dense / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is damaged: not a readable weights file"):
        SentenceTransformer(folder, device="cpu")


def test_the_undamaged_folder_loads(tiny_st_dir):
    assert SentenceTransformer(tiny_st_dir, device="cpu").encode(["the cat"]).shape == (1, 8)


def test_read_json_and_json_field(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"size": 3, "flag": true}')
    config = read_json(path)
    assert json_field(config, "size", int, path) == 3 and json_field(config, "name", str, path, "x") == "x"
    with pytest.raises(ValueError, match=r"config.json: 'flag' must be an integer, not True"):
        json_field(config, "flag", int, path)  # a bool is not taken for a number
    with pytest.raises(ValueError, match=r"config.json is damaged: it holds an object where a list belongs"):
        read_json(path, list)
    path.write_bytes("{\"name\": \"caf\xe9\"}".encode("latin-1"))  # not UTF-8
    with pytest.raises(ValueError, match=r"config\.json is damaged: not valid JSON"):
        read_json(path)
