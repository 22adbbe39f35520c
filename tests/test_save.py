"""save: sentence-transformers' layout, round trips with sentence-transformers, and all-or-nothing writes."""

import builtins
import io
import json
import os
import random
import signal
import stat
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SENTENCES, build_st_model

import minist.dense
import minist.saving
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

    def fail(self, folder, *args):
        raise OSError("disk full")

    monkeypatch.setattr(minist.dense.Dense, "save", fail)  # fails after the transformer's weights are written
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_over_a_model_keeps_the_old_one(tmp_path, tiny_st_dir, monkeypatch):
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    model.save(tmp_path / "out")
    before = SentenceTransformer(tmp_path / "out", device="cpu").encode(TINY_SENTENCES)
    monkeypatch.setattr(minist.dense.Dense, "save", lambda self, folder, *args: 1 / 0)
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
    """Where the system has no atomic exchange, saving is two renames; a failure of the second undoes the first."""
    SentenceTransformer(tiny_st_dir, device="cpu").save(tmp_path / "out")
    before = SentenceTransformer(tmp_path / "out", device="cpu").encode(TINY_SENTENCES)
    real_rename, calls = os.rename, []

    def rename_failing_the_second_time(source, destination):  # 1: old model aside, 2: new model in place
        calls.append(source)
        if len(calls) == 2:
            raise OSError("rename failed")
        return real_rename(source, destination)

    monkeypatch.setattr(minist.saving, "exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", rename_failing_the_second_time)
    with pytest.raises(OSError, match="rename failed"):
        SentenceTransformer(tiny_hf_dir, device="cpu").save(tmp_path / "out")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    np.testing.assert_array_equal(SentenceTransformer(tmp_path / "out", device="cpu").encode(TINY_SENTENCES), before)


# --- the user's files, links, permissions ---------------------------------------------------------------
USER_FILES = {"README.md": "# my model\n", "notes.txt": "precious", "eval/results.csv": "epoch,score\n0,0.5\n"}


def add_user_files(folder: Path) -> None:
    for name, text in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def assert_user_files(folder: Path) -> None:
    assert {name: (folder / name).read_text() for name in USER_FILES} == USER_FILES


@pytest.mark.parametrize("before", ["a model", "not a model", "a plain Hugging Face model"])
def test_the_users_readme_and_notes_survive_every_save(tmp_path, tiny_st_dir, tiny_hf_dir, before):
    out = tmp_path / "out"
    out.mkdir()
    if before == "a model":
        SentenceTransformer(tiny_st_dir, device="cpu").save(out)
    elif before == "a plain Hugging Face model":
        build_st_model(tiny_hf_dir)[0].auto_model.save_pretrained(out)
    add_user_files(out)
    plain = SentenceTransformer(tiny_hf_dir, device="cpu")
    plain.save(out)
    assert_user_files(out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    np.testing.assert_array_equal(SentenceTransformer(out, device="cpu").encode(TINY_SENTENCES),
                                  plain.encode(TINY_SENTENCES))


def test_a_folder_whose_files_the_model_would_overwrite_is_refused_untouched(tmp_path, tiny_st_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tokenizer.json").write_text("my own tokenizer notes")  # no model here: this file is someone's
    with pytest.raises(FileExistsError, match=r"tokenizer\.json"):
        SentenceTransformer(tiny_st_dir, device="cpu").save(out)
    assert [p.name for p in out.iterdir()] == ["tokenizer.json"]
    assert (out / "tokenizer.json").read_text() == "my own tokenizer notes"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_symlink_stays_a_link_and_the_save_goes_into_its_folder(tmp_path, tiny_st_dir, tiny_hf_dir):
    real = tmp_path / "models" / "real"
    SentenceTransformer(tiny_st_dir, device="cpu").save(real)
    add_user_files(real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    plain = SentenceTransformer(tiny_hf_dir, device="cpu")
    plain.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert_user_files(real)
    assert not (real / "2_Dense").exists()
    np.testing.assert_array_equal(SentenceTransformer(link, device="cpu").encode(TINY_SENTENCES),
                                  plain.encode(TINY_SENTENCES))


def modes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def test_saved_folders_and_files_get_the_usual_permissions(tmp_path, tiny_hf_dir):
    """0755 and 0644 under umask 022, as sentence-transformers gives its folders and JSON files (its weights
    come out 0600, through transformers' private temporary file: minist gives them 0644 too)."""
    umask = os.umask(0o022)
    try:
        theirs = build_st_model(tiny_hf_dir)
        theirs.save(str(tmp_path / "st"))
        SentenceTransformer(tmp_path / "st", device="cpu").save(tmp_path / "minist")
    finally:
        os.umask(umask)
    st_modes, our_modes = modes(tmp_path / "st"), modes(tmp_path / "minist")
    shared = [name for name in st_modes if name in our_modes and not name.endswith(".safetensors")]
    assert {name: our_modes[name] for name in shared} == {name: st_modes[name] for name in shared}
    assert {name for name, mode in our_modes.items() if mode == 0o755} == {".", "1_Pooling", "2_Dense", "3_Normalize"}
    assert set(our_modes.values()) == {0o755, 0o644}
    assert our_modes["1_Pooling"] == 0o755 and our_modes["config.json"] == 0o644


def test_a_folder_the_process_may_not_write_is_refused_before_anything_changes(tiny_st_dir, tiny_hf_dir):
    """As root every write is allowed, so the save runs in a child process that becomes the user nobody."""
    base = Path(tempfile.mkdtemp())
    try:
        os.chmod(base, 0o755)
        SentenceTransformer(tiny_st_dir, device="cpu").save(base / "model")  # owned by us, 0755: not nobody's
        before = snapshot(base)
        plain = SentenceTransformer(tiny_hf_dir, device="cpu")
        root = os.getuid() == 0
        for target in (base / "model", base / "new"):  # a model folder, then a new folder in the parent
            error = run_forked(lambda t=target: plain.save(t), as_user=65534 if root else None,
                               unwritable=() if root else (base, base / "model"))
            assert error.startswith("PermissionError") and "may not write" in error, error
            assert snapshot(base) == before
    finally:
        os.chmod(base, 0o755)
        shutil_rmtree(base)


# --- crashes: the path always holds the old model or the new one ---------------------------------------
FILE_OPERATIONS = [(os, "rename"), (os, "replace"), (os, "link"), (os, "symlink"), (os, "mkdir"), (os, "unlink"),
                   (os, "rmdir"), (os, "chmod"), (os, "open"), (builtins, "open"), (io, "open"),
                   (minist.saving, "exchange")]


def run_forked(action, crash_at: int | None = None, as_user: int | None = None, unwritable=()) -> str:
    """Run ``action`` in a forked child; ``crash_at=N`` kills it just before its N-th file operation.
    ``as_user``: the uid (and gid) the child takes first; ``unwritable``: folders it makes read-only first.

    Returns what the child reports: "ok <number of file operations>", "<ExceptionType>: <message>", or ""
    when it was killed.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count (and maybe crash at) file operations, then report through the pipe
        os.close(read)
        count = 0

        def counting(operation):
            def wrapper(*args, **kwargs):
                nonlocal count
                count += 1
                if count == crash_at:
                    os._exit(0)  # as abrupt as a kill: no cleanup, no exception handlers
                return operation(*args, **kwargs)
            return wrapper

        for module, name in FILE_OPERATIONS:
            setattr(module, name, counting(getattr(module, name)))
        try:
            for folder in unwritable:
                os.chmod(folder, 0o555)
            if as_user is not None:
                os.setgid(as_user)
                os.setuid(as_user)
            action()
            report = f"ok {count}"
        except BaseException as error:  # reported to the parent
            report = f"{type(error).__name__}: {error}"
        os.write(write, report.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        return pipe.read().decode()


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def two_models(tiny_st_dir, tiny_hf_dir):
    """Two models of different layouts (with and without Dense) and their embeddings."""
    models = [SentenceTransformer(tiny_st_dir, device="cpu"), SentenceTransformer(tiny_hf_dir, device="cpu")]
    return models, [model.encode(TINY_SENTENCES) for model in models]


def assert_old_or_new(folder: Path, embeddings: list[np.ndarray]) -> None:
    found = SentenceTransformer(folder, device="cpu").encode(TINY_SENTENCES)
    assert any(found.shape == e.shape and np.allclose(found, e, atol=1e-6) for e in embeddings)


@pytest.mark.parametrize("atomic_exchange", [True, False])
@pytest.mark.slow
def test_a_crash_at_every_file_operation_leaves_a_model_and_the_users_files(tmp_path, two_models,
                                                                             monkeypatch, atomic_exchange):
    (old, new), embeddings = two_models
    out = tmp_path / "out"
    if not atomic_exchange:  # macOS, Windows: two renames, and the next save repairs a crash between them
        monkeypatch.setattr(minist.saving, "exchange", lambda a, b: False)
    old.save(out)
    add_user_files(out)
    report = run_forked(lambda: new.save(out))
    operations = int(report.split()[1])
    assert operations > 20, report
    for crash_at in range(1, operations + 1):
        old.save(out)  # also cleans up what the previous crash left
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], crash_at
        assert_user_files(out)
        assert run_forked(lambda: new.save(out), crash_at=crash_at) == ""
        if atomic_exchange or out.exists():
            assert_old_or_new(out, embeddings)
            assert_user_files(out)
    new.save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert_user_files(out)
    assert_old_or_new(out, embeddings[1:])


@pytest.mark.slow
def test_killed_at_random_moments_the_folder_is_always_a_model(tmp_path, two_models):
    (first, second), embeddings = two_models
    out = tmp_path / "out"
    first.save(out)
    add_user_files(out)
    rng = random.Random(0)
    for _ in range(20):
        pid = os.fork()
        if pid == 0:
            while True:  # save the two models in turn until killed
                second.save(out)
                first.save(out)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert_old_or_new(out, embeddings)
        assert_user_files(out)
    first.save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
