"""LangChain and LlamaIndex, the real packages, with minist as their embedding model."""

import asyncio
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minist import SentenceTransformer

pytestmark = pytest.mark.real_model
DOCS = [json.loads(line) for line in (Path(__file__).resolve().parent.parent / "data" / "corpus.jsonl")
        .read_text().splitlines()]
QUERIES = {"Which planet is the biggest?": "Jupiter is the largest planet in our solar system.",
           "Can dogs eat chocolate?": "Chocolate is poisonous to dogs."}


@pytest.fixture
def model(real_model):
    return real_model


def test_langchain_in_memory_vector_store(model):
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from minist.integrations.langchain import MinistEmbeddings

    embeddings = MinistEmbeddings(model)
    store = InMemoryVectorStore(embeddings)
    store.add_documents([Document(page_content=d["text"], metadata={"id": d["id"]}) for d in DOCS])
    for query, expected in QUERIES.items():
        assert store.similarity_search(query, k=1)[0].page_content == expected
    vector = embeddings.embed_query("hello")
    assert isinstance(vector, list) and len(vector) == 384 and np.isclose(np.linalg.norm(vector), 1)
    np.testing.assert_allclose(embeddings.embed_documents(["hello"])[0], model.encode("hello"), atol=1e-6)
    assert asyncio.run(embeddings.aembed_query("hello")) == pytest.approx(vector, abs=1e-6)


def test_llama_index_vector_store_index(model):
    from llama_index.core import Document, VectorStoreIndex

    from minist.integrations.llama_index import MinistEmbedding

    embed_model = MinistEmbedding(model)
    index = VectorStoreIndex.from_documents([Document(text=d["text"], doc_id=d["id"]) for d in DOCS],
                                            embed_model=embed_model)
    retriever = index.as_retriever(similarity_top_k=1)
    for query, expected in QUERIES.items():
        assert retriever.retrieve(query)[0].node.get_content() == expected
    query = embed_model.get_query_embedding("hello")
    np.testing.assert_allclose(query, model.encode("hello"), atol=1e-6)
    assert asyncio.run(embed_model.aget_query_embedding("hello")) == pytest.approx(query, abs=1e-6)
    assert len(embed_model.get_text_embedding_batch(["a", "b", "c"])) == 3


def test_the_adapters_encode_queries_and_documents_with_the_models_prompts(real_model_dir):
    """Queries go through encode_query and documents through encode_document, as upstream's adapters do."""
    from sentence_transformers import SentenceTransformer as STModel

    from minist.integrations.langchain import MinistEmbeddings
    from minist.integrations.llama_index import MinistEmbedding

    prompts = {"query": "query: ", "document": "passage: "}
    model = SentenceTransformer(real_model_dir, device="cpu", prompts=prompts)
    upstream = STModel(str(real_model_dir), device="cpu", prompts=prompts)
    query = upstream.encode_query(["hello"], normalize_embeddings=True)[0]
    documents = upstream.encode_document(["hello", "a cat"], normalize_embeddings=True)
    assert not np.allclose(query, documents[0], atol=1e-3)  # the prompts make a difference
    langchain, llama_index = MinistEmbeddings(model), MinistEmbedding(model)
    for embed_query, embed_documents in [(langchain.embed_query, langchain.embed_documents),
                                         (llama_index.get_query_embedding, llama_index.get_text_embedding_batch)]:
        np.testing.assert_allclose(embed_query("hello"), query, atol=1e-5)
        np.testing.assert_allclose(embed_documents(["hello", "a cat"]), documents, atol=1e-5)


@pytest.mark.parametrize(("module", "dependency", "extra"), [
    ("minist.integrations.langchain", "langchain_core.embeddings", "minist[langchain]"),
    ("minist.integrations.llama_index", "llama_index.core.base.embeddings.base", "minist[llama-index]")])
def test_missing_extra_names_it(monkeypatch, module, dependency, extra):
    monkeypatch.setitem(sys.modules, dependency, None)  # as if the package were not installed
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        importlib.import_module(module)


@pytest.mark.slow
def test_the_core_never_imports_the_integrations():
    code = "import minist, sys; print(any(m.startswith(('langchain', 'llama_index')) for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
