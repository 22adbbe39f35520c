"""save: sentence-transformers' layout, round trips with sentence-transformers, and all-or-nothing writes."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SENTENCES, build_st_model

import minist.dense
from minist import SentenceTransformer
from minist.pooling import MODES


def test_layout_is_sentence_transformers(tmp_path, tiny_st_dir):
    SentenceTransformer(tiny_st_dir, device="cpu").save(tmp_path / "saved")
    files = {p.relative_to(tmp_path / "saved").as_posix() for p in (tmp_path / "saved").rglob("*") if p.is_file()}
    assert {"modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "config.json",
            "model.safetensors", "tokenizer.json", "tokenizer_config.json", "1_Pooling/config.json",
            "2_Dense/config.json", "2_Dense/model.safetensors"} <= files
    modules = json.loads((tmp_path / "saved" / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense", "3_Normalize"]
    assert json.loads((tmp_path / "saved" / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 16, "do_lower_case": False}


@pytest.mark.parametrize("mode", MODES)
def test_minist_saves_and_sentence_transformers_loads_the_same_model(tmp_path, tiny_hf_dir, mode):
    from sentence_transformers import SentenceTransformer as STModel

    build_st_model(tiny_hf_dir, pooling_mode=mode).save(str(tmp_path / "st"))
    ours = SentenceTransformer(tmp_path / "st", device="cpu")
    ours.save(tmp_path / "minist")
    theirs = STModel(str(tmp_path / "minist"), device="cpu")
    assert theirs.max_seq_length == 16
    np.testing.assert_allclose(theirs.encode(TINY_SENTENCES), ours.encode(TINY_SENTENCES), atol=1e-6)
    reloaded = SentenceTransformer(tmp_path / "minist", device="cpu")
    np.testing.assert_array_equal(reloaded.encode(TINY_SENTENCES), ours.encode(TINY_SENTENCES))


def test_a_failed_save_leaves_no_model_behind(tmp_path, tiny_st_dir, monkeypatch):
    model = SentenceTransformer(tiny_st_dir, device="cpu")

    def fail(self, folder):
        raise OSError("disk full")

    monkeypatch.setattr(minist.dense.Dense, "save", fail)  # fails after the transformer's weights are written
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_over_a_model_keeps_the_old_one(tmp_path, tiny_st_dir, monkeypatch):
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    model.save(tmp_path / "out")
    before = SentenceTransformer(tmp_path / "out", device="cpu").encode(TINY_SENTENCES)
    monkeypatch.setattr(minist.dense.Dense, "save", lambda self, folder: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        model.save(tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    np.testing.assert_array_equal(SentenceTransformer(tmp_path / "out", device="cpu").encode(TINY_SENTENCES), before)


def test_saving_over_a_model_replaces_it(tmp_path, tiny_st_dir, tiny_hf_dir):
    SentenceTransformer(tiny_st_dir, device="cpu").save(tmp_path / "out")
    plain = SentenceTransformer(tiny_hf_dir, device="cpu")
    plain.save(tmp_path / "out")
    assert not (tmp_path / "out" / "2_Dense").exists()
    np.testing.assert_array_equal(SentenceTransformer(tmp_path / "out", device="cpu").encode(TINY_SENTENCES),
                                  plain.encode(TINY_SENTENCES))


def test_saving_keeps_the_other_files_of_the_folder(tmp_path, tiny_st_dir, tiny_hf_dir):
    (tmp_path / "out" / "eval").mkdir(parents=True)
    (tmp_path / "out" / "eval" / "results.csv").write_text("epoch,score")
    (tmp_path / "out" / "notes.txt").write_text("precious")
    SentenceTransformer(tiny_st_dir, device="cpu").save(tmp_path / "out")
    SentenceTransformer(tiny_hf_dir, device="cpu").save(tmp_path / "out")  # over a model: its files go
    assert (tmp_path / "out" / "notes.txt").read_text() == "precious"
    assert (tmp_path / "out" / "eval" / "results.csv").read_text() == "epoch,score"
    assert not (tmp_path / "out" / "2_Dense").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        SentenceTransformer(tiny_st_dir, device="cpu").save(tmp_path / "file")


def test_a_failed_swap_puts_the_old_model_back(tmp_path, tiny_st_dir, tiny_hf_dir, monkeypatch):
    SentenceTransformer(tiny_st_dir, device="cpu").save(tmp_path / "out")
    before = SentenceTransformer(tmp_path / "out", device="cpu").encode(TINY_SENTENCES)
    real_rename, calls = Path.rename, []

    def rename_failing_the_second_time(self, target):  # 1: old model aside, 2: new model in place
        calls.append(self)
        if len(calls) == 2:
            raise OSError("rename failed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_failing_the_second_time)
    with pytest.raises(OSError, match="rename failed"):
        SentenceTransformer(tiny_hf_dir, device="cpu").save(tmp_path / "out")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    np.testing.assert_array_equal(SentenceTransformer(tmp_path / "out", device="cpu").encode(TINY_SENTENCES), before)
