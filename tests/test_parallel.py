"""Beyond one process: the multi-process pool and Ray Data give single-process ``encode``'s numbers (within 1e-5,
in input order) and sentence-transformers' pool's; a killed worker raises instead of hanging; a killed
EmbeddingCache job resumes, encoding only what is missing. ``-m ray`` selects the Ray tests."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SENTENCES

import minist.parallel
from minist import SentenceTransformer
from minist.cache import EmbeddingCache
from minist.parallel import WorkerDiedError

ROOT = Path(__file__).resolve().parent.parent
CORPUS = [json.loads(line) for line in (ROOT / "data" / "corpus.jsonl").read_text().splitlines()]
TEXTS = [row["text"] for row in CORPUS] + TINY_SENTENCES  # 330 texts, a few words to past max_seq_length


def within(seconds: float, call):
    """``call()``'s result or exception, or a failure if it has not returned after ``seconds`` (a hang)."""
    done = {}

    def run():
        try:
            done["result"] = call()
        except BaseException as error:
            done["error"] = error

    thread = threading.Thread(target=run, daemon=True)  # daemon: a hung call cannot keep pytest from exiting
    thread.start()
    thread.join(seconds)
    assert done, f"no answer within {seconds} s: it hangs"
    if "error" in done:
        raise done["error"]
    return done["result"]


def reaped(pids: list[int]) -> bool:
    """True once no process has these pids: terminated *and* waited for (a zombie still answers kill(pid, 0))."""
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


@pytest.fixture(scope="module")
def tiny(tiny_st_dir):
    return SentenceTransformer(tiny_st_dir, device="cpu")


@pytest.fixture(scope="module")
def tiny_pool(tiny):
    with tiny.start_multi_process_pool(["cpu", "cpu"]) as pool:
        yield pool


# --- the pool -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [None, 7, 1000])
@pytest.mark.slow
def test_pool_gives_encodes_numbers_in_input_order(tiny, tiny_pool, chunk_size):
    pooled = tiny.encode(TEXTS, pool=tiny_pool, chunk_size=chunk_size)
    assert pooled.shape == (len(TEXTS), 8) and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, tiny.encode(TEXTS), atol=1e-5)


@pytest.mark.slow
def test_pool_passes_encodes_options(tiny, tiny_pool):
    texts = TEXTS[:50]
    for options in [{"prompt": "the cat: "}, {"normalize_embeddings": True, "truncate_dim": 4}, {"batch_size": 3},
                    {"convert_to_tensor": True}, {"convert_to_numpy": False}]:
        pooled, single = tiny.encode(texts, pool=tiny_pool, **options), tiny.encode(texts, **options)
        assert type(pooled) is type(single), options
        np.testing.assert_allclose(np.stack(pooled), np.stack(single), atol=1e-5, err_msg=str(options))
    # int8 takes its ranges from all texts together, after the chunks are back, as single-process encode does
    pooled, single = tiny.encode(texts, pool=tiny_pool, precision="int8"), tiny.encode(texts, precision="int8")
    assert pooled.dtype == np.int8 and np.abs(pooled.astype(int) - single).max() <= 1  # a rounding apart at most
    for pooled_tokens, tokens in zip(tiny.encode(texts, pool=tiny_pool, output_value="token_embeddings"),
                                     tiny.encode(texts, output_value="token_embeddings"), strict=True):
        torch.testing.assert_close(pooled_tokens, tokens, atol=1e-5, rtol=0)
    assert tiny.encode("the cat", pool=tiny_pool).shape == (8,)
    assert tiny.encode([], pool=tiny_pool).shape == (0, 8)


@pytest.mark.slow
def test_progress_bar_counts_chunks(tiny, tiny_pool, capsys):
    tiny.encode(TEXTS[:50], pool=tiny_pool, chunk_size=10, show_progress_bar=True)
    err = capsys.readouterr().err
    assert "Chunks: 100%" in err and "5/5" in err


@pytest.mark.slow
def test_encode_multi_process_is_encode_with_a_pool(tiny, tiny_pool):
    np.testing.assert_allclose(tiny.encode_multi_process(TEXTS, tiny_pool, chunk_size=40, normalize_embeddings=True),
                               tiny.encode(TEXTS, normalize_embeddings=True), atol=1e-5)


@pytest.mark.slow
def test_bad_input_is_refused_by_name_before_any_work(tiny, tiny_pool):
    with pytest.raises(TypeError, match="item 2 is a int"):
        tiny.encode(["a", "b", 3], pool=tiny_pool)
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        tiny.encode(["a"], pool=tiny_pool, chunk_size=0)
    with pytest.raises(TypeError, match="start_multi_process_pool"):
        tiny.encode(["a"], pool={"input": None, "output": None, "processes": []})
    with pytest.raises(ValueError, match="CUDA GPU"):
        tiny.start_multi_process_pool(["cpu", "cuda:99"])
    assert not tiny_pool.stopped  # refused before any chunk was queued: the pool still serves
    assert tiny.encode(["a", "b"], pool=tiny_pool).shape == (2, 8)


@pytest.mark.slow
def test_the_context_manager_stops_its_workers(tiny):
    with tiny.start_multi_process_pool(["cpu"]) as pool:
        pids = [process.pid for process in pool["processes"]]
        np.testing.assert_allclose(tiny.encode(TEXTS[:20], pool=pool), tiny.encode(TEXTS[:20]), atol=1e-5)
    assert pool.stopped and reaped(pids)
    with pytest.raises(ValueError, match="pool was stopped"):
        tiny.encode(["a"], pool=pool)


@pytest.mark.parametrize("when", ["before the call", "during the call"])
@pytest.mark.slow
def test_a_killed_worker_raises_instead_of_hanging(tiny, when):
    pool = tiny.start_multi_process_pool(["cpu"])
    pids = [process.pid for process in pool["processes"]]
    if when == "before the call":
        os.kill(pids[0], signal.SIGKILL)  # as the out-of-memory killer would
    else:
        tiny.encode(["started"], pool=pool)  # the worker is up; the next call takes it seconds
        threading.Timer(0.5, os.kill, (pids[0], signal.SIGKILL)).start()
    with pytest.raises(WorkerDiedError, match=f"pid {pids[0]} \\(killed by SIGKILL\\)"):
        within(30, lambda: tiny.encode(TEXTS * 40, pool=pool, chunk_size=50))
    assert pool.stopped and reaped(pids)


def test_ctrl_c_while_waiting_stops_the_pool(tiny, monkeypatch):
    pool = tiny.start_multi_process_pool(["cpu"])
    pids = [process.pid for process in pool["processes"]]

    def interrupted(pool):
        raise KeyboardInterrupt

    monkeypatch.setattr(minist.parallel, "_next_result", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny.encode(TEXTS, pool=pool)
    assert pool.stopped and reaped(pids)  # terminated and waited for: no zombies


# --- faults and concurrency: a death at any moment is named within seconds; calls never mix -----------------------
def gone(pid: int) -> bool:
    """True once ``pid`` has exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def writing_to_a_pipe(pid: int) -> bool:
    """True while a thread of ``pid`` is blocked in write(2) on a full pipe (Linux's /proc wchan)."""
    return any("pipe_write" in wchan.read_text() for wchan in Path(f"/proc/{pid}/task").glob("*/wchan"))


def test_threads_hammering_one_pool_each_get_their_own_vectors(tiny, tiny_pool):
    expected = dict(zip(TEXTS, tiny.encode(TEXTS), strict=True))
    errors = []

    def caller(seed: int):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(5):
                texts = list(rng.choice(TEXTS, size=rng.integers(1, 40)))
                got = tiny.encode(texts, pool=tiny_pool, chunk_size=int(rng.choice([3, 50])))
                np.testing.assert_allclose(got, np.stack([expected[text] for text in texts]), atol=1e-5)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=caller, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert not tiny_pool.stopped


def test_a_pool_refuses_a_model_it_was_not_started_from(tiny, tiny_pool, tiny_st_dir, tmp_path):
    other = SentenceTransformer(tiny_st_dir, device="cpu")  # the same files, but not the pool's model
    with pytest.raises(ValueError, match="pool was started from another model"):
        other.encode(["a cat"], pool=tiny_pool)
    with pytest.raises(ValueError, match="pool was started from another model"):
        EmbeddingCache(tmp_path / "cache", other).add(["a cat"], pool=tiny_pool)
    tiny.max_seq_length, max_seq_length = 4, tiny.max_seq_length  # the workers still hold the old setting
    try:
        with pytest.raises(ValueError, match="pool was started from another model"):
            tiny.encode(["a cat"], pool=tiny_pool)
    finally:
        tiny.max_seq_length = max_seq_length
    assert not tiny_pool.stopped  # refused before any work: the pool still serves its own model
    np.testing.assert_allclose(tiny.encode(["a cat"], pool=tiny_pool), tiny.encode(["a cat"]), atol=1e-5)


def test_a_pool_inside_a_daemonic_process_is_a_named_error(tiny, monkeypatch):
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True)  # as inside a daemonic Process
    with pytest.raises(RuntimeError, match=r"daemonic processes are not allowed to have children.*daemon=False"):
        tiny.encode(["a cat"], device=["cpu"])


def kill_later(seconds: float, pid: int) -> list[float]:
    """SIGKILL ``pid`` after ``seconds``, as the out-of-memory killer would; the list gets the moment of the kill."""
    killed = []
    threading.Timer(seconds, lambda: killed.append(time.monotonic()) or os.kill(pid, signal.SIGKILL)).start()
    return killed


def test_a_random_kill_during_a_call_is_named_within_seconds(tiny):
    rng = np.random.default_rng(27)
    pool = tiny.start_multi_process_pool(["cpu", "cpu"])
    pids = [process.pid for process in pool["processes"]]
    tiny.encode(TEXTS[:20], pool=pool, chunk_size=1)  # up: from now on results keep coming
    victim = int(rng.choice(pids))
    killed = kill_later(rng.uniform(0, 1), victim)  # encoding, sending or waiting: any moment
    with pytest.raises(WorkerDiedError, match=f"pid {victim} \\(killed by SIGKILL\\)"):
        within(60, lambda: tiny.encode(TEXTS * 10, pool=pool, chunk_size=10))
    assert time.monotonic() - killed[0] < 2, "the death was named late"
    assert pool.stopped and reaped(pids)


@pytest.mark.slow
def test_a_worker_killed_mid_send_is_named_instead_of_hanging(tiny, monkeypatch):
    pool = tiny.start_multi_process_pool(["cpu"])
    pid = pool["processes"][0].pid
    tiny.encode(["started"], pool=pool)
    tqdm, killed = minist.parallel.tqdm, []

    def late_reader(iterable, **kwargs):  # the caller reads late: the worker fills the pipe and blocks in write
        deadline = time.monotonic() + 30
        while not writing_to_a_pipe(pid):
            assert time.monotonic() < deadline, "the worker never blocked in write"
            time.sleep(0.05)
        killed.append(time.monotonic())
        os.kill(pid, signal.SIGKILL)  # mid-message: part of a result far larger than the 64 KB pipe is sent
        yield from tqdm(iterable, **kwargs)

    monkeypatch.setattr(minist.parallel, "tqdm", late_reader)
    with pytest.raises(WorkerDiedError, match=f"pid {pid} \\(killed by SIGKILL\\)"):
        within(20, lambda: tiny.encode(TEXTS * 4, pool=pool, chunk_size=len(TEXTS) * 4,
                                       output_value="token_embeddings"))  # one chunk: about 600 KB back
    assert time.monotonic() - killed[0] < 2 and pool.stopped and reaped([pid])


@pytest.mark.slow
def test_a_dead_worker_is_named_while_the_others_keep_sending(tiny):
    pool = tiny.start_multi_process_pool(["cpu", "cpu"])
    pids = [process.pid for process in pool["processes"]]
    tiny.encode(TEXTS[:20], pool=pool, chunk_size=1)  # both workers up
    killed = kill_later(1, pids[0])
    with pytest.raises(WorkerDiedError, match=f"pid {pids[0]} \\(killed by SIGKILL\\)"):
        within(120, lambda: tiny.encode(TEXTS * 40, pool=pool, chunk_size=20))
    assert time.monotonic() - killed[0] < 2, "noticed only once the other worker drained the queue"


OWNER = """
import sys, time
from minist import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
pool = model.start_multi_process_pool(["cpu", "cpu"])
model.encode(["started"] * 20, pool=pool, chunk_size=1)
print(*(process.pid for process in pool["processes"]), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.slow
def test_workers_exit_when_their_owner_is_killed(tiny_st_dir, signum):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, tiny_st_dir], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in within(120, owner.stdout.readline).split()]
    finally:
        owner.send_signal(signum)  # SIGTERM with its default action: no Python code of the owner runs
        owner.wait()
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while not all(map(gone, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [pid for pid in pids if not gone(pid)]
    for pid in orphans:  # leave no orphans behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not orphans, f"workers {orphans} outlived their owner"


@pytest.mark.real_model
@pytest.mark.slow
def test_real_model_pool_equals_encode_and_sentence_transformers_pool(real_model_dir):
    from sentence_transformers import SentenceTransformer as STModel

    model = SentenceTransformer("all-MiniLM-L6-v2", device="cpu")
    texts = TEXTS[:200]
    reference = model.encode(texts)
    ours = model.encode(texts, device=["cpu", "cpu"], chunk_size=16)  # a pool for this one call, as upstream
    st = STModel(str(real_model_dir), device="cpu")
    st_pool = st.start_multi_process_pool(["cpu"])
    try:
        theirs = st.encode(texts, pool=st_pool, chunk_size=50)
    finally:
        st.stop_multi_process_pool(st_pool)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


# --- EmbeddingCache: a killed job resumes ------------------------------------------------------------------------
CHILD = """
import sys, time
from minist import SentenceTransformer
from minist.cache import EmbeddingCache

model = SentenceTransformer(sys.argv[1], device="cpu")
texts = open(sys.argv[3], encoding="utf-8").read().split("\\n")
encode_document = model.encode_document
def slow_encode_document(*args, **kwargs):  # a large corpus's pace, so the kill lands midway
    time.sleep(0.2)
    return encode_document(*args, **kwargs)
model.encode_document = slow_encode_document
EmbeddingCache(sys.argv[2], model).add(texts, chunk_size=20)
"""


@pytest.mark.slow
def test_a_killed_cache_job_resumes_encoding_only_what_is_missing(tmp_path, tiny, tiny_st_dir, monkeypatch):
    texts = [row["text"] for row in CORPUS]  # 320: 16 chunks of 20
    (tmp_path / "texts.txt").write_text("\n".join(texts), encoding="utf-8")
    (tmp_path / "child.py").write_text(CHILD)
    folder = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, tmp_path / "child.py", tiny_st_dir, folder, tmp_path / "texts.txt"])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            meta = folder / "meta.json"
            if meta.exists() and json.loads(meta.read_text())["rows"] >= 60:  # three chunks committed
                break
            time.sleep(0.05)
        assert child.poll() is None, "the job ended before it could be killed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    committed = json.loads((folder / "meta.json").read_text())["rows"]
    assert 60 <= committed < len(texts)

    encoded, encode_document = [], tiny.encode_document
    monkeypatch.setattr(tiny, "encode_document", lambda new, **kw: encoded.extend(new) or encode_document(new, **kw))
    resumed = EmbeddingCache(folder, tiny)
    assert resumed.add(texts, chunk_size=20) == len(texts) - committed
    assert encoded == texts[committed:]  # only the missing texts were encoded, each once
    monkeypatch.undo()
    uninterrupted = EmbeddingCache(tmp_path / "uninterrupted", tiny)
    uninterrupted.add(texts)
    assert resumed.texts == uninterrupted.texts == texts
    np.testing.assert_allclose(resumed.embeddings, uninterrupted.embeddings, atol=1e-5)


@pytest.mark.slow
def test_cache_add_commits_every_chunk(tmp_path, tiny, tiny_pool, monkeypatch):
    commits = []
    cache = EmbeddingCache(tmp_path / "c", tiny)
    commit = cache._commit
    monkeypatch.setattr(cache, "_commit", lambda meta: commits.append(meta["rows"]) or commit(meta))
    assert cache.add(TEXTS[:45] + TEXTS[:5], chunk_size=20, pool=tiny_pool) == 45
    assert commits == [20, 40, 45]
    np.testing.assert_allclose(cache.embeddings, tiny.encode(TEXTS[:45], normalize_embeddings=True), atol=1e-5)


# --- Ray Data ---------------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_embedder_takes_numpy_and_pandas_batches(tiny):
    pytest.importorskip("ray.data")
    import pandas as pd

    from minist.integrations.ray import Embedder

    ids, texts = np.array([row["id"] for row in CORPUS[:30]]), np.array([row["text"] for row in CORPUS[:30]])
    out = Embedder(tiny)({"id": ids, "text": texts})
    assert list(out) == ["id", "text", "embedding"] and out["id"] is ids
    np.testing.assert_allclose(out["embedding"], tiny.encode(list(texts)), atol=1e-5)
    frame = Embedder(tiny, text_column="body", embedding_column="vector", precision="ubinary")(
        pd.DataFrame({"id": ids, "body": texts}))
    assert np.stack(frame["vector"]).dtype == np.uint8
    np.testing.assert_array_equal(np.stack(frame["vector"]), tiny.encode(list(texts), precision="ubinary"))
    with pytest.raises(KeyError, match="text_column"):
        Embedder(tiny)({"body": texts})


@pytest.mark.ray
@pytest.mark.slow
def test_ray_data_pipeline_writes_encodes_numbers_with_ids(ray_cluster, tiny, tiny_st_dir, tmp_path):
    import pyarrow.parquet as pq

    from minist.integrations.ray import Embedder

    rows = [{"id": row["id"], "text": row["text"]} for row in CORPUS]  # 320 rows
    ray_cluster.data.from_items(rows).map_batches(
        Embedder, fn_constructor_kwargs={"model": str(tiny_st_dir), "device": "cpu"},
        compute=ray_cluster.data.ActorPoolStrategy(size=1), num_cpus=1, batch_size=64,
    ).write_parquet(str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out").to_pydict()
    got = {row_id: np.asarray(vector, np.float32) for row_id, vector in zip(table["id"], table["embedding"],
                                                                                 strict=True)}
    assert sorted(got) == sorted(row["id"] for row in rows)  # every row once, its id kept
    expected = tiny.encode([row["text"] for row in rows])
    np.testing.assert_allclose(np.stack([got[row["id"]] for row in rows]), expected, atol=1e-5)
