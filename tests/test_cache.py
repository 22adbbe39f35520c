"""EmbeddingCache: what it stores equals a fresh encode, it grows without re-encoding, it refuses strangers."""

import itertools
import json
import os
import random
import signal
import threading
import time

import numpy as np
import pytest
import torch
import tqdm.auto
import tqdm.std
from conftest import TINY_SENTENCES, build_st_model
from torch.utils.data import DataLoader

from minist import InputExample, SentenceTransformer, losses
from minist.cache import DamagedCacheError, EmbeddingCache, model_fingerprint
from minist.search import semantic_search


@pytest.fixture(scope="module")
def model(tiny_st_dir):
    return SentenceTransformer(tiny_st_dir, device="cpu")


@pytest.fixture
def counting(model, monkeypatch):
    """Records every text the model is asked to encode."""
    seen, encode = [], model.encode

    def recording_encode(texts, **kwargs):
        seen.extend(texts)
        return encode(texts, **kwargs)

    monkeypatch.setattr(model, "encode", recording_encode)
    return seen


def test_stores_what_encode_gives_and_reopens_memory_mapped(tmp_path, model):
    cache = EmbeddingCache(tmp_path / "c", model)
    assert cache.add(TINY_SENTENCES[:6]) == 6
    expected = model.encode(TINY_SENTENCES[:6], normalize_embeddings=True)
    np.testing.assert_array_equal(cache.embeddings, expected)
    reopened = EmbeddingCache(tmp_path / "c", model)
    assert isinstance(reopened.embeddings, np.memmap) and reopened.texts == TINY_SENTENCES[:6]
    np.testing.assert_array_equal(reopened.embeddings, expected)


def test_documents_are_stored_with_the_document_prompt_and_searched_with_the_query_prompt(tmp_path, tiny_st_dir):
    prompts = {"query": "query: ", "document": "passage: "}
    model = SentenceTransformer(tiny_st_dir, device="cpu", prompts=prompts)
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES)
    np.testing.assert_array_equal(cache.embeddings, model.encode(TINY_SENTENCES, prompt="passage: ",
                                                                 normalize_embeddings=True))
    queries = model.encode(TINY_SENTENCES[:2], prompt="query: ", normalize_embeddings=True, convert_to_tensor=True)
    assert cache.search(TINY_SENTENCES[:2], top_k=3) == [
        [{**hit, "text": TINY_SENTENCES[hit["corpus_id"]]} for hit in row]
        for row in semantic_search(queries, torch.from_numpy(cache.embeddings), top_k=3)]
    plain = SentenceTransformer(tiny_st_dir, device="cpu")
    assert model_fingerprint(plain) != model_fingerprint(model)  # other prompts, other rows
    with pytest.raises(ValueError, match="another model"):
        EmbeddingCache(tmp_path / "c", plain)


def test_grows_without_re_encoding(tmp_path, model, counting):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES[:5])
    counting.clear()
    assert EmbeddingCache(tmp_path / "c", model).add(TINY_SENTENCES + TINY_SENTENCES[:2]) == 5
    assert counting == TINY_SENTENCES[5:]  # only the unseen texts, each once
    reopened = EmbeddingCache(tmp_path / "c", model)
    assert len(reopened) == len(TINY_SENTENCES) and reopened.texts == TINY_SENTENCES
    np.testing.assert_allclose(reopened.embeddings, model.encode(TINY_SENTENCES, normalize_embeddings=True),
                               atol=1e-6)


def test_refuses_a_cache_made_by_another_model(tmp_path, model, tiny_hf_dir):
    EmbeddingCache(tmp_path / "c", model).add(["the cat"])
    other_folder = tmp_path / "other"
    build_st_model(tiny_hf_dir, seed=1).save(str(other_folder))  # same architecture, other Dense weights
    other = SentenceTransformer(other_folder, device="cpu")
    assert model_fingerprint(other) != model_fingerprint(model)
    with pytest.raises(ValueError, match="embeddings made by another model"):
        EmbeddingCache(tmp_path / "c", other)
    with pytest.raises(ValueError, match="normalize_embeddings=True"):
        EmbeddingCache(tmp_path / "c", model, normalize_embeddings=False)


def test_fingerprint_sees_settings_too(model):
    before = model_fingerprint(model)
    model.max_seq_length = 8
    try:
        assert model_fingerprint(model) != before
    finally:
        model.max_seq_length = 16
    assert model_fingerprint(model) == before


def test_fingerprint_sees_quantize(tmp_path, model, tiny_st_dir, fake_cpu):
    """int8 changes weights; bf16 changes only the arithmetic, and must still count as another model."""
    fake_cpu("AVX2", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16")  # both run as asked
    EmbeddingCache(tmp_path / "c", model).add(["the cat"])
    for quantize in ("int8", "bf16"):
        other = SentenceTransformer(tiny_st_dir, device="cpu", quantize=quantize)
        assert model_fingerprint(other) != model_fingerprint(model)
        with pytest.raises(ValueError, match="embeddings made by another model"):
            EmbeddingCache(tmp_path / "c", other)


def test_a_crashed_append_is_ignored_and_overwritten(tmp_path, model):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES[:3])
    with open(tmp_path / "c" / "embeddings.f32", "ab") as f:  # half a row: the crash came mid-write
        f.write(b"\x00" * 20)
    with open(tmp_path / "c" / "texts.jsonl", "a") as f:
        f.write('"half writ')
    reopened = EmbeddingCache(tmp_path / "c", model)
    assert len(reopened) == 3 and reopened.texts == TINY_SENTENCES[:3]
    reopened.add(TINY_SENTENCES[3:5])
    again = EmbeddingCache(tmp_path / "c", model)
    assert again.texts == TINY_SENTENCES[:5]
    np.testing.assert_allclose(again.embeddings, model.encode(TINY_SENTENCES[:5], normalize_embeddings=True),
                               atol=1e-6)


def test_search_returns_texts_and_matches_semantic_search(tmp_path, model):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES)
    hits = cache.search("the cat sat on the mat", top_k=3)
    assert hits[0]["text"] == "the cat sat on the mat" and hits[0]["score"] == pytest.approx(1, abs=1e-5)
    direct = semantic_search(model.encode(["the cat sat on the mat"]), cache.embeddings, top_k=3)[0]
    assert [h["corpus_id"] for h in hits] == [h["corpus_id"] for h in direct]
    assert EmbeddingCache(tmp_path / "empty", model).search(["anything"]) == [[]]


# --- any text, any number of writers, crashes, damage, a changing model ----------------------------------
ODD_TEXTS = ["line\u2028separator", "paragraph\u2029separator", "next\u0085line", "carriage\rreturn", "crlf\r\n",
             "nul\x00byte", "file\x1cgroup\x1drecord\x1eseparators", "vertical\x0btab\x0cfeed", "emoji 🙂👩‍👩‍👧",
             "combining e\u0301", "\ufeffbom", "", " ", "\n", "\\n is not a newline", '"quoted"']


def test_any_unicode_text_round_trips(tmp_path, model):
    cache = EmbeddingCache(tmp_path / "c", model)
    assert cache.add(ODD_TEXTS) == len(ODD_TEXTS)
    reopened = EmbeddingCache(tmp_path / "c", model)
    assert reopened.texts == ODD_TEXTS and len(reopened) == len(ODD_TEXTS)
    np.testing.assert_allclose(reopened.embeddings, model.encode(ODD_TEXTS, normalize_embeddings=True), atol=1e-6)
    assert reopened.add(ODD_TEXTS) == 0  # each is recognised as already cached


def test_a_lone_surrogate_is_refused_at_add_before_anything_is_written(tmp_path, model):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(["kept"])
    files = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    with pytest.raises(ValueError, match="item 1"):
        cache.add(["fine", "broken \ud800 text"])
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()} == files
    assert EmbeddingCache(tmp_path / "c", model).texts == ["kept"]


def test_a_string_is_one_text(tmp_path, model):
    cache = EmbeddingCache(tmp_path / "c", model)
    assert cache.add("one text") == 1
    assert EmbeddingCache(tmp_path / "c", model).texts == ["one text"]


def damage(folder, name, how):
    path = folder / name
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(bytes(range(256)) * (len(data) // 256 + 1))
    elif how == "delete":
        path.unlink()
    elif how == "not an object":
        path.write_text("[1, 2, 3]")
    elif how == "wrong rows":
        path.write_text(json.dumps({**json.loads(data), "rows": -1}))
    elif how == "bad line":
        path.write_bytes(data.replace(b'"the cat sat on the mat"', b'{"not": "a string"}'.ljust(24)))


@pytest.mark.parametrize(("name", "how", "message"), [
    ("embeddings.f32", "truncate", "truncated"),
    ("embeddings.f32", "delete", "missing"),
    ("texts.jsonl", "truncate", "truncated"),
    ("texts.jsonl", "garbage", "damaged"),
    ("texts.jsonl", "bad line", "line 1 is not a JSON string"),
    ("texts.jsonl", "delete", "missing"),
    ("meta.json", "truncate", "not valid JSON"),
    ("meta.json", "garbage", "not valid JSON"),
    ("meta.json", "not an object", "not a JSON object"),
    ("meta.json", "wrong rows", "rows must be at least 0, not -1"),
    ("meta.json", "delete", "meta.json is missing"),
])
def test_a_damaged_cache_is_refused_at_open_naming_the_file(tmp_path, model, name, how, message):
    EmbeddingCache(tmp_path / "c", model).add(TINY_SENTENCES[:4])
    damage(tmp_path / "c", name, how)
    files = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    with pytest.raises(DamagedCacheError, match=message) as error:
        EmbeddingCache(tmp_path / "c", model)
    assert name in str(error.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()} == files  # never restarted over old rows


def in_child(action) -> int:
    """Fork; the child runs ``action`` on one thread (as DataLoader workers do) and exits. Returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            for bar in (tqdm.std.tqdm, tqdm.auto.tqdm):  # a lock of its own: tqdm's default one is shared across
                bar.set_lock(threading.RLock())  # fork, and a child killed while holding it hung the parent
            action()
            code = 0
        finally:
            os._exit(code)
    return pid


def killed_at_random(writer, rng: random.Random) -> str:
    """Run ``writer(write_fd)`` in a child, SIGKILL it at a random moment; returns what it wrote to the pipe."""
    read, write = os.pipe()
    pid = in_child(lambda: writer(write))
    os.close(write)
    time.sleep(rng.uniform(0.0, 0.3))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        return pipe.read()


def test_two_processes_adding_at_once_lose_nothing(tmp_path, model):
    EmbeddingCache(tmp_path / "c", model)
    shared = [f"shared text {i}" for i in range(12)]
    own = {side: [f"{side} text {i}" for i in range(24)] for side in ("left", "right")}

    def writer(side):
        cache = EmbeddingCache(tmp_path / "c", model)
        for start in range(0, 24, 3):
            cache.add(own[side][start:start + 3] + shared[start // 2:start // 2 + 2])

    pids = [in_child(lambda side=side: writer(side)) for side in own]
    assert all(os.waitpid(pid, 0)[1] == 0 for pid in pids)
    cache = EmbeddingCache(tmp_path / "c", model)
    assert sorted(cache.texts) == sorted(shared + own["left"] + own["right"])  # each once
    np.testing.assert_allclose(cache.embeddings, model.encode(cache.texts, normalize_embeddings=True), atol=1e-6)


def test_two_threads_adding_at_once_lose_nothing(tmp_path, model):
    caches = [EmbeddingCache(tmp_path / "c", model), EmbeddingCache(tmp_path / "c", model)]
    texts = [[f"thread {side} text {i}" for i in range(20)] + ["both"] for side in range(2)]

    def writer(side):  # each thread adds through its own EmbeddingCache of the same folder
        for start in range(0, 21, 4):
            caches[side].add(texts[side][start:start + 4])

    threads = [threading.Thread(target=writer, args=(side,)) for side in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cache = EmbeddingCache(tmp_path / "c", model)
    assert sorted(cache.texts) == sorted(set(texts[0] + texts[1]))
    np.testing.assert_allclose(cache.embeddings, model.encode(cache.texts, normalize_embeddings=True), atol=1e-6)


@pytest.mark.slow
def test_killed_at_random_moments_every_acknowledged_row_survives(tmp_path, model):
    EmbeddingCache(tmp_path / "c", model)
    rng, batch = random.Random(0), 0
    for _ in range(15):
        def writer(write, first=batch):
            cache = EmbeddingCache(tmp_path / "c", model)
            for number in itertools.count(first):
                cache.add([f"batch {number} text {i}" for i in range(3)])
                os.write(write, f"{number}\n".encode())  # acknowledged: add returned

        acknowledged = [int(line) for line in killed_at_random(writer, rng).split()]
        cache = EmbeddingCache(tmp_path / "c", model)
        assert set(cache.texts) >= {f"batch {n} text {i}" for n in acknowledged for i in range(3)}
        batch = (acknowledged[-1] if acknowledged else batch) + 2  # past anything the killed add may have kept
    cache = EmbeddingCache(tmp_path / "c", model)
    np.testing.assert_allclose(cache.embeddings, model.encode(cache.texts, normalize_embeddings=True), atol=1e-6)


def test_a_model_changed_in_place_is_noticed(tmp_path, tiny_st_dir):
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(["the cat"])
    weight = model[0].auto_model.embeddings.word_embeddings.weight
    row = weight[5].clone()
    with torch.no_grad():
        weight[5] += 1.0  # what an optimizer step does
    with pytest.raises(ValueError, match="model changed since"):
        cache.add(["the dog"])
    with pytest.raises(ValueError, match="model changed since"):
        cache.search("the dog")
    with torch.no_grad():
        weight[5] = row  # back to the very same numbers: the same model again
    assert cache.add(["the dog"]) == 1


def test_fine_tuning_the_model_of_an_open_cache_is_noticed(tmp_path, tiny_st_dir):
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(["the cat"])
    examples = [InputExample(texts=["the cat", "a dog"], label=0.3),
                InputExample(texts=["a bird", "the mat"], label=0.9)]
    model.fit([(DataLoader(examples, batch_size=2), losses.CosineSimilarityLoss(model))], epochs=1, warmup_steps=0,
              show_progress_bar=False)
    with pytest.raises(ValueError, match="model changed since"):
        cache.add(["the dog"])
    assert EmbeddingCache(tmp_path / "c", SentenceTransformer(tiny_st_dir, device="cpu")).texts == ["the cat"]


# --- remove: rows dropped all at once, the rest untouched ------------------------------------------------
def files_of(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_remove_drops_the_rows_of_those_texts_and_keeps_the_others_byte_for_byte(tmp_path, model):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES)
    before = np.array(cache.embeddings)
    gone = random.Random(0).sample(TINY_SENTENCES, 4)
    assert cache.remove([*gone, gone[0], "never added"]) == 4  # a repeat and an unknown text count for nothing
    kept = [row for row, text in enumerate(TINY_SENTENCES) if text not in gone]
    for reader in (cache, EmbeddingCache(tmp_path / "c", model)):  # this object, and a reopened one
        assert reader.texts == [TINY_SENTENCES[row] for row in kept] and len(reader) == len(kept)
        assert reader.embeddings.tobytes() == before[kept].tobytes()  # copied, never re-encoded
        np.testing.assert_allclose(reader.embeddings, model.encode(reader.texts, normalize_embeddings=True), atol=1e-6)
        hits = reader.search(gone, top_k=len(TINY_SENTENCES))  # every row, for each removed text
        assert [len(row) for row in hits] == [len(kept)] * 4
        assert not {hit["text"] for row in hits for hit in row} & set(gone)
    assert sorted(files_of(tmp_path / "c")) == [".lock", "embeddings.1.f32", "meta.json", "texts.1.jsonl"]
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["generation"] == 1
    assert cache.remove("the cat sat on the mat") == (TINY_SENTENCES[0] not in gone)  # a string is one text


def test_removing_texts_not_cached_returns_0_and_writes_nothing(tmp_path, model):
    empty = EmbeddingCache(tmp_path / "empty", model)
    assert empty.remove(["anything"]) == 0 and len(empty) == 0
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES[:3])
    files = files_of(tmp_path / "c")
    assert cache.remove(["never added", TINY_SENTENCES[5]]) == 0 and cache.remove([]) == 0
    assert files_of(tmp_path / "c") == files and cache.texts == TINY_SENTENCES[:3]


def test_removing_every_row_leaves_an_empty_cache_that_grows_again(tmp_path, model):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES[:3])
    assert cache.remove(TINY_SENTENCES[:3]) == 3 and len(cache) == 0 and cache.embeddings.shape == (0, 8)
    assert cache.search("the cat") == [] and EmbeddingCache(tmp_path / "c", model).texts == []
    assert cache.add(TINY_SENTENCES[:2]) == 2 and EmbeddingCache(tmp_path / "c", model).texts == TINY_SENTENCES[:2]


def test_add_after_remove_appends_and_encodes_a_removed_text_again(tmp_path, model, counting):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES[:5])
    assert cache.remove(TINY_SENTENCES[1]) == 1
    counting.clear()
    assert cache.add([TINY_SENTENCES[1], TINY_SENTENCES[0], TINY_SENTENCES[5]]) == 2
    assert counting == [TINY_SENTENCES[1], TINY_SENTENCES[5]]  # the removed text is encoded again, the kept one not
    expected = [TINY_SENTENCES[i] for i in (0, 2, 3, 4, 1, 5)]
    assert EmbeddingCache(tmp_path / "c", model).texts == cache.texts == expected
    np.testing.assert_allclose(cache.embeddings, model.encode(expected, normalize_embeddings=True), atol=1e-6)
    assert cache.remove(TINY_SENTENCES[2]) == 1  # a second remove: generation 2, the files of 1 deleted
    assert sorted(files_of(tmp_path / "c")) == [".lock", "embeddings.2.f32", "meta.json", "texts.2.jsonl"]


def test_other_open_caches_see_a_remove_on_their_next_search_or_add(tmp_path, model, counting):
    writer = EmbeddingCache(tmp_path / "c", model)
    writer.add(TINY_SENTENCES[:6])
    searcher, adder = EmbeddingCache(tmp_path / "c", model), EmbeddingCache(tmp_path / "c", model)
    before = np.array(searcher.embeddings)
    assert writer.remove(TINY_SENTENCES[:2]) == 2
    # Until it looks again, the searcher keeps the rows it read: its file is open, though its name is gone.
    assert not (tmp_path / "c" / "embeddings.f32").exists() and searcher.texts == TINY_SENTENCES[:6]
    np.testing.assert_array_equal(searcher.embeddings, before)
    hits = searcher.search(TINY_SENTENCES[0], top_k=10)
    assert searcher.texts == TINY_SENTENCES[2:6] and {hit["text"] for hit in hits} == set(TINY_SENTENCES[2:6])
    counting.clear()
    assert adder.add(TINY_SENTENCES[:8]) == 4 and counting == [*TINY_SENTENCES[:2], *TINY_SENTENCES[6:8]]
    assert EmbeddingCache(tmp_path / "c", model).texts == [*TINY_SENTENCES[2:6], *TINY_SENTENCES[:2],
                                                           *TINY_SENTENCES[6:8]]


def test_a_remove_between_a_readers_look_at_meta_json_and_its_read_is_caught(tmp_path, model, monkeypatch):
    reader, writer = EmbeddingCache(tmp_path / "c", model), EmbeddingCache(tmp_path / "c", model)
    writer.add(TINY_SENTENCES[:4])
    read_meta, removed = reader._read_meta, []

    def read_meta_then_remove():  # the reader has read meta.json (generation 0); now a writer removes
        meta = read_meta()
        if not removed:
            removed.append(writer.remove(TINY_SENTENCES[0]))
        return meta

    monkeypatch.setattr(reader, "_read_meta", read_meta_then_remove)
    assert [hit["text"] for hit in reader.search(TINY_SENTENCES[1], top_k=1)] == [TINY_SENTENCES[1]]
    assert removed == [1] and reader.texts == TINY_SENTENCES[1:4]  # it read generation 1, not the deleted 0


class Crash(Exception):
    pass


@pytest.mark.parametrize("stop", ["before the commit", "after the commit"])
def test_a_remove_stopped_before_or_after_its_commit_leaves_the_old_or_the_new_cache(tmp_path, model, monkeypatch,
                                                                                      stop):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES[:5])
    before = np.array(cache.embeddings)

    def crash(*args, **kwargs):
        raise Crash

    if stop == "before the commit":  # the new generation's files are written, meta.json not yet replaced
        monkeypatch.setattr(EmbeddingCache, "_commit", crash)
    else:  # meta.json replaced, the old generation's files not yet deleted
        monkeypatch.setattr(type(tmp_path), "unlink", crash)
    with pytest.raises(Crash):
        cache.remove(TINY_SENTENCES[1:3])
    monkeypatch.undo()
    assert {"embeddings.f32", "texts.jsonl", "embeddings.1.f32", "texts.1.jsonl"} <= set(files_of(tmp_path / "c"))
    reopened = EmbeddingCache(tmp_path / "c", model)
    kept, generation = ([0, 1, 2, 3, 4], 1) if stop == "before the commit" else ([0, 3, 4], 2)
    assert reopened.texts == [TINY_SENTENCES[row] for row in kept]
    np.testing.assert_array_equal(reopened.embeddings, before[kept])
    reopened.add(TINY_SENTENCES[5])
    assert reopened.remove(TINY_SENTENCES[0]) == 1  # the next remove overwrites or deletes what the crash left
    assert sorted(files_of(tmp_path / "c")) == [".lock", f"embeddings.{generation}.f32", "meta.json",
                                                f"texts.{generation}.jsonl"]
    again = EmbeddingCache(tmp_path / "c", model)
    assert again.texts == [TINY_SENTENCES[row] for row in kept[1:]] + [TINY_SENTENCES[5]]
    np.testing.assert_allclose(again.embeddings, model.encode(again.texts, normalize_embeddings=True), atol=1e-6)


def test_a_cache_written_before_remove_existed_opens_and_removes(tmp_path, model):
    EmbeddingCache(tmp_path / "c", model).add(TINY_SENTENCES[:3])
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    del meta["generation"]  # as every cache was written before
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    cache = EmbeddingCache(tmp_path / "c", model)
    assert cache.texts == TINY_SENTENCES[:3] and cache.remove(TINY_SENTENCES[0]) == 1
    assert EmbeddingCache(tmp_path / "c", model).texts == TINY_SENTENCES[1:3]


def test_a_lone_surrogate_is_refused_at_remove_before_anything_is_written(tmp_path, model):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(["kept", "fine"])
    files = files_of(tmp_path / "c")
    with pytest.raises(ValueError, match="item 1"):
        cache.remove(["fine", "broken \ud800 text"])
    assert files_of(tmp_path / "c") == files and EmbeddingCache(tmp_path / "c", model).texts == ["kept", "fine"]


def apply(texts: list[str], op: str, batch: list[str]) -> list[str]:
    """The texts after ``add`` or ``remove`` of ``batch``."""
    return [t for t in texts if t not in batch] if op == "remove" else list(dict.fromkeys(texts + batch))


@pytest.mark.slow
def test_killed_at_random_moments_while_removing_the_cache_is_the_old_or_the_new_one(tmp_path, model):
    pool = [f"text {i}" for i in range(30)]
    EmbeddingCache(tmp_path / "c", model).add(pool)
    rng = random.Random(0)
    for round_ in range(15):
        def writer(write, seed=round_):  # removes a few texts, adds them back, again and again
            cache, chooser = EmbeddingCache(tmp_path / "c", model), random.Random(seed)
            while True:
                batch = chooser.sample(cache.texts, 3)
                for op in ("remove", "add"):
                    os.write(write, (json.dumps([op, batch]) + "\n").encode())  # what it starts
                    getattr(cache, op)(batch)
                    os.write(write, b"done\n")  # acknowledged: it returned

        before = EmbeddingCache(tmp_path / "c", model).texts
        lines = killed_at_random(writer, rng).splitlines()
        done = before
        for started, finished in itertools.zip_longest(lines[::2], lines[1::2]):
            started = apply(done, *json.loads(started))
            if finished == "done":
                done = started
        cache = EmbeddingCache(tmp_path / "c", model)
        assert cache.texts in (done, started), f"round {round_}: neither the old nor the new cache"
        np.testing.assert_allclose(cache.embeddings, model.encode(cache.texts, normalize_embeddings=True), atol=1e-6)
        cache.add(pool)  # whole again for the next round


# --- each chunk checked before it is written; never a write through a link -------------------------------
@pytest.fixture(scope="module")
def wide_model(tmp_path_factory, tiny_hf_dir):
    """A model of another width (32, no Dense), as a pool started from another model would answer."""
    folder = tmp_path_factory.mktemp("wide") / "model"
    build_st_model(tiny_hf_dir, dense=False).save(str(folder))
    return SentenceTransformer(folder, device="cpu")


def poisoned(rows, value=np.nan):
    return np.where(np.arange(rows.size).reshape(rows.shape) == rows.size // 2, value, rows)


@pytest.mark.parametrize(("bad", "message"), [
    ("another model", r"shape \(2, 32\) for 2 texts, not \(2, 8\): another model's \(pool's\?\)"),
    ("a row short", r"shape \(1, 8\) for 2 texts"),
    ("NaN", "not finite.*'The dogs run fast!'"),
    ("inf", "not finite"),
    ("int8", "int8"),
])
def test_a_bad_chunk_is_refused_before_it_is_written_and_every_earlier_row_is_kept(tmp_path, model, wide_model,
                                                                                    monkeypatch, bad, message):
    cache = EmbeddingCache(tmp_path / "c", model)
    cache.add(TINY_SENTENCES[2:5])
    files, encode = files_of(tmp_path / "c"), model.encode_document
    answers = {"another model": wide_model.encode_document, "a row short": lambda texts, **kw: encode(texts[1:], **kw),
               "NaN": lambda texts, **kw: poisoned(encode(texts, **kw)),
               "inf": lambda texts, **kw: poisoned(encode(texts, **kw), -np.inf),
               "int8": lambda texts, **kw: encode(texts, precision="int8", **kw)}
    monkeypatch.setattr(model, "encode_document", answers[bad])
    with pytest.raises(ValueError, match=message):  # the first chunk of 2 goes through the bad encoder
        cache.add(TINY_SENTENCES[:2], chunk_size=2)
    monkeypatch.undo()
    assert files_of(tmp_path / "c") == files and cache.texts == TINY_SENTENCES[2:5]  # nothing written
    reopened = EmbeddingCache(tmp_path / "c", model)
    assert reopened.texts == TINY_SENTENCES[2:5]
    assert reopened.add(TINY_SENTENCES[:2]) == 2 and EmbeddingCache(tmp_path / "c", model).texts == [
        *TINY_SENTENCES[2:5], *TINY_SENTENCES[:2]]
    np.testing.assert_allclose(reopened.embeddings, model.encode(reopened.texts, normalize_embeddings=True), atol=1e-6)


def test_chunks_before_a_bad_one_are_committed_and_float64_or_float16_rows_are_stored_as_float32(tmp_path, model,
                                                                                                 monkeypatch):
    cache, encode, calls = EmbeddingCache(tmp_path / "c", model), model.encode_document, []

    def float64_then_float16_then_nan(texts, **kwargs):
        calls.append(texts)
        rows = encode(texts, **kwargs)
        return [rows.astype(np.float64), rows.astype(np.float16), poisoned(rows)][len(calls) - 1]

    monkeypatch.setattr(model, "encode_document", float64_then_float16_then_nan)
    with pytest.raises(ValueError, match="not finite"):
        cache.add(TINY_SENTENCES[:6], chunk_size=2)
    monkeypatch.undo()
    reopened = EmbeddingCache(tmp_path / "c", model)
    assert reopened.texts == TINY_SENTENCES[:4] and reopened.embeddings.dtype == np.float32
    expected = model.encode(TINY_SENTENCES[:4], normalize_embeddings=True)
    np.testing.assert_array_equal(reopened.embeddings[:2], expected[:2])
    np.testing.assert_array_equal(reopened.embeddings[2:], expected[2:].astype(np.float16))


@pytest.fixture
def victim(tmp_path):
    """A file outside the cache folder, that a link planted in the folder points at."""
    path = tmp_path / "victim.txt"
    path.write_bytes(b"precious, not the cache's\n" * 100)
    return path


@pytest.mark.parametrize(("name", "when"), [
    ("meta.json.tmp", "add"), ("embeddings.f32", "add"), ("texts.jsonl", "add"),  # a cache with 0 rows
    ("embeddings.1.f32", "remove"), ("texts.1.jsonl", "remove"), ("meta.json.tmp", "remove"),
])
def test_a_write_never_follows_a_planted_symlink(tmp_path, model, victim, name, when):
    cache = EmbeddingCache(tmp_path / "c", model)
    if when == "remove":
        cache.add(TINY_SENTENCES[:4])
    before = cache.texts[:]
    (tmp_path / "c" / name).symlink_to(victim)
    with pytest.raises(DamagedCacheError, match=rf"{name} is a symbolic link"):
        cache.add(TINY_SENTENCES[:4]) if when == "add" else cache.remove(TINY_SENTENCES[0])
    assert victim.read_bytes() == b"precious, not the cache's\n" * 100
    (tmp_path / "c" / name).unlink()  # the way out: remove the link
    reopened = EmbeddingCache(tmp_path / "c", model)  # the cache as it was (rows written, not committed, ignored)
    assert reopened.texts == before and reopened.add(TINY_SENTENCES[:5]) == 5 - len(before)
    np.testing.assert_allclose(reopened.embeddings, model.encode(reopened.texts, normalize_embeddings=True), atol=1e-6)


@pytest.mark.parametrize("name", ["meta.json", "embeddings.f32", "texts.jsonl"])
def test_a_data_file_that_is_a_symlink_is_refused_at_open_by_name(tmp_path, model, name):
    EmbeddingCache(tmp_path / "c", model).add(TINY_SENTENCES[:4])
    real = tmp_path / "c" / name
    real.rename(tmp_path / name)  # the same bytes, through a link
    real.symlink_to(tmp_path / name)
    with pytest.raises(DamagedCacheError, match=rf"{name} is a symbolic link"):
        EmbeddingCache(tmp_path / "c", model)
