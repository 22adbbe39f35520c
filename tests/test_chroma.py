"""minist in Chroma (minist/integrations/chroma.py), embedded and as a real `chroma run` server, vs exact search."""

import copy
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("chromadb", reason='the chroma extra: pip install "minist[chroma]"')
import chromadb

from minist import SentenceTransformer
from minist.integrations.chroma import (
    ChromaServer,
    ChromaWriter,
    MinistEmbeddingFunction,
    connect,
    open_collection,
    search,
    sync,
    text_id,
)
from minist.integrations.chroma_server import free_port
from minist.search import semantic_search

DATA = Path(__file__).parent.parent / "data"
CORPUS = [json.loads(line) for line in (DATA / "corpus.jsonl").read_text().splitlines()]
QUERIES = [json.loads(line)["query"] for line in (DATA / "queries.jsonl").read_text().splitlines()]
pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def function(real_model):
    return MinistEmbeddingFunction(real_model)


@pytest.fixture
def client(tmp_path):
    return connect(tmp_path / "db")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ChromaServer(tmp_path_factory.mktemp("chroma-server")) as server:
        yield server
    assert server.process.poll() is not None, "the server outlived its fixture"


def exact(model, queries, top_k=5):
    """minist's exact search over the corpus, ids as the records' ids."""
    hits = semantic_search(model.encode_query(queries, convert_to_tensor=True),
                           model.encode_document([r["text"] for r in CORPUS], convert_to_tensor=True), top_k=top_k)
    return [[(CORPUS[h["corpus_id"]]["id"], h["score"]) for h in row] for row in hits]


def synced(collection, function):
    return sync(collection, function, [r["text"] for r in CORPUS], ids=[r["id"] for r in CORPUS],
                metadatas=[{"topic": r["topic"]} for r in CORPUS])


def assert_equals_exact(collection, function, model):
    found = search(collection, function, QUERIES, top_k=5)
    for row, reference in zip(found, exact(model, QUERIES), strict=True):
        assert [h["corpus_id"] for h in row] == [id for id, _ in reference]
        np.testing.assert_allclose([h["score"] for h in row], [s for _, s in reference], atol=1e-5)


# --- the embedding function ------------------------------------------------------------------------------
def test_the_function_encodes_documents_and_queries_as_the_model_does(function, real_model):
    texts = ["Oil the chain.", "Pump the tyres."]
    np.testing.assert_allclose(np.stack(function(texts)), real_model.encode_document(texts, normalize_embeddings=True))
    np.testing.assert_allclose(np.stack(function.embed_query(texts)), real_model.encode_query(texts,
                                                                                              normalize_embeddings=True))
    config = function.get_config()
    assert config["model"] == real_model.name_or_path and config["dimension"] == 384
    assert MinistEmbeddingFunction.build_from_config(config).get_config() == config
    from chromadb.utils.embedding_functions import known_embedding_functions
    assert known_embedding_functions["minist"] is MinistEmbeddingFunction  # chromadb can rebuild it by name


def test_fine_tuning_in_place_changes_the_fingerprint(real_model):
    model = copy.deepcopy(real_model)
    function = MinistEmbeddingFunction(model)
    before = function.get_config()["fingerprint"]
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    assert function.get_config()["fingerprint"] != before


# --- embedded: sync, search, the wrong model --------------------------------------------------------------
def test_a_synced_collection_answers_as_exact_search_does(client, function, real_model):
    collection = open_collection(client, "corpus", function)
    assert collection.configuration_json["hnsw"]["space"] == "cosine"
    assert synced(collection, function) == {"added": 320, "updated": 0, "deleted": 0, "unchanged": 0}
    assert_equals_exact(collection, function, real_model)
    # where= filters by metadata, as Chroma does
    hits = search(collection, function, "How long should I rest a steak?", top_k=3, where={"topic": "cooking"})
    assert [h["metadata"]["topic"] for h in hits] == ["cooking"] * 3


@pytest.mark.slow
def test_a_reopened_collection_rebuilds_its_embedding_function_from_its_config(tmp_path, function, real_model):
    collection = open_collection(chromadb.PersistentClient(str(tmp_path)), "corpus", function)
    synced(collection, function)
    code = f"""
        import chromadb, json
        import minist.integrations.chroma  # registers MinistEmbeddingFunction with chromadb
        collection = chromadb.PersistentClient({str(tmp_path)!r}).get_collection("corpus")
        found = collection.query(query_texts={QUERIES[:3]!r}, n_results=5)
        print(json.dumps([collection._embed(["x"])[0].shape[0], found["ids"]]))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    dimension, ids = json.loads(out.stdout.splitlines()[-1])
    assert dimension == 384 and ids == [[id for id, _ in row] for row in exact(real_model, QUERIES[:3])]


def test_sync_writes_only_what_changed_and_nothing_the_second_time(client, function, monkeypatch):
    collection = open_collection(client, "faq", function)
    texts = ["Oil the chain.", "Pump the tyres.", "Lower the saddle.", "Oil the chain."]  # a repeat: one record
    assert sync(collection, function, texts) == {"added": 3, "updated": 0, "deleted": 0, "unchanged": 0}
    assert sorted(collection.get()["ids"]) == sorted({text_id(t) for t in texts})
    for name in ("upsert", "update", "delete"):
        monkeypatch.setattr(type(collection), name, lambda *a, **k: pytest.fail("a sync in a row wrote"))
    assert sync(collection, function, texts) == {"added": 0, "updated": 0, "deleted": 0, "unchanged": 3}
    monkeypatch.undo()
    ids = ["chain", "tyres", "saddle"]
    sync(collection, function, texts[:3], ids=ids, metadatas=[{"part": "chain", "km": 200}, None, None])
    embedded = []
    encode_document = function.model.encode_document
    monkeypatch.setattr(function.model, "encode_document",
                        lambda texts, **kwargs: embedded.append(list(texts)) or encode_document(texts, **kwargs))
    counts = sync(collection, function, ["Oil the chain every 200 km.", "Pump the tyres.", "Bleed the brakes."],
                  ids=["chain", "tyres", "brakes"], metadatas=[{"part": "chain"}, {"part": "tyres"}, None])
    assert counts == {"added": 1, "updated": 2, "deleted": 1, "unchanged": 0}
    assert embedded == [["Bleed the brakes.", "Oil the chain every 200 km."]]  # the new, the changed; not "tyres"
    got = collection.get(ids=["chain", "tyres"], include=["documents", "metadatas"])
    assert dict(zip(got["ids"], got["metadatas"], strict=True)) == {"chain": {"part": "chain"},
                                                                    "tyres": {"part": "tyres"}}  # km dropped


def test_sync_writes_in_batches_chroma_accepts(client, function, monkeypatch):
    collection = open_collection(client, "batches", function)
    sizes = []
    upsert = type(collection).upsert
    monkeypatch.setattr(type(collection), "upsert", lambda self, **k: sizes.append(len(k["ids"])) or upsert(self, **k))
    monkeypatch.setattr(type(collection._client), "get_max_batch_size", lambda self: 7)
    sync(collection, function, [r["text"] for r in CORPUS[:20]])
    assert sizes == [7, 7, 6] and collection.count() == 20
    sizes.clear()
    sync(collection, function, [r["text"] for r in CORPUS[:25]], batch_size=2)
    assert sizes == [2, 2, 1]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"documents": ["fine", "bad \ud800"]}, "lone surrogate|UTF-8"),
    ({"documents": ["a", "b"], "ids": ["x", "x"]}, "'x' is given twice"),
    ({"documents": ["a", "a"], "metadatas": [{"k": 1}, {"k": 2}]}, r"given twice \(items 0 and 1\), with other"),
    ({"documents": ["a"], "ids": [""]}, "non-empty string"),
    ({"documents": ["a", "b"], "ids": ["x"]}, "2 documents, 1 ids"),
    ({"documents": ["a"], "metadatas": [{"k": None}]}, "metadata 'k' of id"),
    ({"documents": ["a"], "metadatas": [{"k": {"nested": 1}}]}, "nested dicts"),
    ({"documents": ["a"], "metadatas": [{"k": [1, "two"]}]}, "list of one of them"),
    ({"documents": ["a"], "metadatas": [{"k": []}]}, "non-empty list")])
def test_bad_records_are_refused_by_name_before_anything_is_written(client, function, kwargs, message):
    collection = open_collection(client, "bad", function)
    sync(collection, function, ["kept"])
    with pytest.raises((ValueError, TypeError), match=message):
        sync(collection, function, **kwargs)
    assert collection.get()["documents"] == ["kept"]


def test_a_collection_of_another_model_is_refused_before_anything_is_written(client, function, real_model,
                                                                             tiny_st_dir):
    collection = open_collection(client, "corpus", function)
    sync(collection, function, ["Oil the chain."])
    changed = copy.deepcopy(real_model)
    with torch.no_grad():
        next(changed.parameters()).add_(0.01)
    fingerprint = function.get_config()["fingerprint"][:12]
    for other in (changed, SentenceTransformer(tiny_st_dir)):
        with pytest.raises(ValueError, match=rf"made by '.*/model' \(fingerprint {fingerprint}.*not by this model"):
            open_collection(client, "corpus", other)
        with pytest.raises(ValueError, match="not by this model"):
            sync(collection, MinistEmbeddingFunction(other), ["Pump the tyres."])
    # a collection written without a config (as LangChain's Chroma does) is checked by its vectors' dimension
    bare = client.create_collection("bare", embedding_function=None)
    bare.add(ids=["a"], embeddings=[[0.5] * 8], documents=["eight dimensions"])
    with pytest.raises(ValueError, match=r"holds 8-dimensional vectors; this model .* makes 384"):
        open_collection(client, "bare", function)
    assert collection.get()["documents"] == ["Oil the chain."] and bare.count() == 1


def test_an_empty_collection_and_top_k_past_its_size(client, function):
    collection = open_collection(client, "small", function)
    assert search(collection, function, "anything") == [] and search(collection, function, ["a", "b"]) == [[], []]
    sync(collection, function, ["Oil the chain.", "Pump the tyres."])
    assert len(search(collection, function, "chain", top_k=10)) == 2
    assert len(collection.query(query_texts=["chain"], n_results=10)["ids"][0]) == 2  # Chroma's own query too
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        search(collection, function, "chain", top_k=0)


def test_scores_are_cosine_in_every_space(client, function, real_model):
    texts = [r["text"] for r in CORPUS[:30]]
    query = "How do I keep bread fresh?"
    cosine = (real_model.encode_document(texts, normalize_embeddings=True)
              @ real_model.encode_query(query, normalize_embeddings=True))
    for space in ("cosine", "l2", "ip"):
        collection = open_collection(client, f"space-{space}", function, space=space)
        sync(collection, function, texts)
        hits = search(collection, function, query, top_k=5)
        np.testing.assert_allclose([h["score"] for h in hits], np.sort(cosine)[::-1][:5], atol=1e-5)
        raw = collection.query(query_embeddings=function.embed_query([query]), n_results=1)["distances"][0][0]
        assert raw == pytest.approx({"cosine": 1, "ip": 1, "l2": 2}[space] * (1 - cosine.max()), abs=1e-5)


# --- LangChain and LlamaIndex ------------------------------------------------------------------------------
def test_langchain_chroma_from_documents_and_its_scores(client, real_model):
    from langchain_chroma import Chroma
    from langchain_core.documents import Document

    from minist.integrations.langchain import MinistEmbeddings

    docs = [Document(page_content=r["text"], metadata={"id": r["id"]}) for r in CORPUS]
    query = QUERIES[0]
    reference = exact(real_model, [query])[0]
    for space in ("l2", "cosine"):
        store = Chroma.from_documents(documents=docs, embedding=MinistEmbeddings(real_model), client=client,
                                      collection_name=f"langchain-{space}",
                                      collection_configuration={"hnsw": {"space": space}})
        scored = store.similarity_search_with_score(query, k=5)
        relevance = store.similarity_search_with_relevance_scores(query, k=5)
        assert [d.metadata["id"] for d, _ in scored] == [id for id, _ in reference]
        cosine = np.array([s for _, s in reference])
        distance = 2 - 2 * cosine if space == "l2" else 1 - cosine
        np.testing.assert_allclose([s for _, s in scored], distance, atol=1e-5)
        # LangChain's l2 relevance is 1 - d / sqrt(2) on Chroma's squared distance: not the cosine
        expected = 1 - distance / np.sqrt(2) if space == "l2" else cosine
        np.testing.assert_allclose([s for _, s in relevance], expected, atol=1e-5)


def test_llama_index_chroma_vector_store(client, function, real_model):
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from minist.integrations.llama_index import MinistEmbedding

    store = ChromaVectorStore(chroma_collection=open_collection(client, "llama", function))
    nodes = [TextNode(text=r["text"], id_=r["id"]) for r in CORPUS]
    index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store),
                             embed_model=MinistEmbedding(real_model))
    found = index.as_retriever(similarity_top_k=5).retrieve(QUERIES[1])
    reference = exact(real_model, [QUERIES[1]])[0]
    assert [n.node.node_id for n in found] == [id for id, _ in reference]
    # LlamaIndex's ChromaVectorStore reports exp(-distance): in the cosine space, exp(cosine - 1)
    np.testing.assert_allclose([n.score for n in found], np.exp([s - 1 for _, s in reference]), atol=1e-5)


# --- a real server ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_server_is_shared_by_two_clients_and_survives_a_restart(tmp_path, function, real_model):
    with ChromaServer(tmp_path) as first:
        collection = open_collection(first.client(), "corpus", function)
        synced(collection, function)
        other = connect(first.url).get_collection("corpus", embedding_function=function)
        assert other.count() == 320
    assert first.process.poll() is not None
    with pytest.raises(ConnectionError, match=rf"No Chroma server answers at {first.url}.*chroma run"):
        search(collection, function, "the server is gone")
    with ChromaServer(tmp_path) as second:
        collection = open_collection(second.client(), "corpus", function)
        assert synced(collection, function)["unchanged"] == 320
        assert_equals_exact(collection, function, real_model)


def test_no_server_is_named_with_how_to_start_one():
    port = free_port()
    with pytest.raises(ConnectionError, match=rf"http://127.0.0.1:{port} .*chroma run --path DIR --host 127.0.0.1 "
                                              rf"--port {port}"):
        connect(f"http://127.0.0.1:{port}")


@pytest.mark.slow
def test_a_server_that_cannot_start_fails_clearly(server, tmp_path):
    with pytest.raises(RuntimeError, match=f"Port {server.port} of 127.0.0.1 is taken"):
        ChromaServer(tmp_path, port=server.port)
    (tmp_path / "a-file").write_text("not a folder")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)did not answer at http://127.0.0.1:\d+ \(it exited with code 1\)"
                                           r".*Not a directory"):
        ChromaServer(tmp_path / "a-file" / "db")
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_a_sync_killed_part_way_is_completed_by_the_next(server, function, real_model):
    code = f"""
        from minist import SentenceTransformer
        from minist.integrations.chroma import connect, open_collection, sync
        texts = {[r["text"] for r in CORPUS]!r}
        model = SentenceTransformer({str(real_model.name_or_path)!r})
        collection = open_collection(connect({server.url!r}), "killed", model)
        sync(collection, model, texts, ids={[r["id"] for r in CORPUS]!r}, batch_size=8)
    """
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stderr=subprocess.PIPE)
    collection = open_collection(server.client(), "killed", function)
    deadline = time.monotonic() + 300
    while collection.count() < 40 and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    stored = collection.count()
    assert 0 < stored < 320, f"the kill came too late or too early ({stored} stored); {writer.stderr.read()[-500:]}"
    counts = synced(collection, function)
    assert counts["added"] == 320 - stored and counts["unchanged"] + counts["updated"] == stored
    assert_equals_exact(collection, function, real_model)


def test_the_ray_sink_writes_each_id_once_and_resumes(server, function, real_model):
    writer = ChromaWriter(server.url, "sink", function)
    batch = {"id": np.array([r["id"] for r in CORPUS[:10]]), "text": np.array([r["text"] for r in CORPUS[:10]])}
    half = {key: value[:5] for key, value in batch.items()}
    assert writer(half)["written"].tolist() == [True] * 5
    assert writer(batch)["written"].tolist() == [False] * 5 + [True] * 5  # resumed: the first five not again
    stored = writer.collection.get(ids=[r["id"] for r in CORPUS[:10]], include=["embeddings", "documents"])
    order = np.argsort(stored["ids"])
    np.testing.assert_allclose(np.asarray(stored["embeddings"])[order],
                               real_model.encode_document([r["text"] for r in CORPUS[:10]], normalize_embeddings=True),
                               atol=1e-6)


@pytest.mark.parametrize("module", ["minist.integrations.chroma", "minist.integrations.chroma_server"])
def test_missing_extra_names_it(monkeypatch, module):
    monkeypatch.setitem(sys.modules, "chromadb", None)
    for name in ("minist.integrations.chroma", "minist.integrations.chroma_server"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ImportError, match=r"minist\[chroma\]"):
        importlib.import_module(module)
