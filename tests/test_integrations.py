"""LangChain and LlamaIndex, the real packages, with minist as their embedding model and their reranker."""

import asyncio
import copy
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minist import SentenceTransformer

pytestmark = pytest.mark.real_model
DATA = Path(__file__).resolve().parent.parent / "data"
DOCS = [json.loads(line) for line in (DATA / "corpus.jsonl").read_text().splitlines()]
ANSWERS = [json.loads(line) for line in (DATA / "bikefix" / "answers.jsonl").read_text().splitlines()]
RERANK_QUERY = "My brakes squeal and barely slow me down, what should I change?"
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
    ("minist.integrations.langchain", "langchain_core.documents", "minist[langchain]"),
    ("minist.integrations.llama_index", "llama_index.core.base.embeddings.base", "minist[llama-index]"),
    ("minist.integrations.llama_index", "llama_index.core.postprocessor.types", "minist[llama-index]")])
def test_missing_extra_names_it(monkeypatch, module, dependency, extra):
    monkeypatch.setitem(sys.modules, dependency, None)  # as if the package were not installed
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        importlib.import_module(module)


@pytest.mark.slow
def test_the_core_never_imports_the_integrations():
    code = "import minist, sys; print(any(m.startswith(('langchain', 'llama_index')) for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.fixture(scope="session")
def rerankers(cross_encoder_dir):
    """minist's CrossEncoder and, as the reference, sentence-transformers' own, on the same folder."""
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from minist.cross_encoder import CrossEncoder

    return CrossEncoder(cross_encoder_dir, device="cpu"), STCrossEncoder(str(cross_encoder_dir), device="cpu")


def check_ranking(ranked: list[dict], expected: list[dict]) -> None:
    assert [hit["corpus_id"] for hit in ranked] == [hit["corpus_id"] for hit in expected]
    assert [hit["score"] for hit in ranked] == pytest.approx([hit["score"] for hit in expected], abs=1e-6)


@pytest.mark.slow
def test_langchain_reranker_reranks_what_a_vector_store_retrieved(model, rerankers, cross_encoder_dir):
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from minist.integrations.langchain import MinistEmbeddings, MinistReranker

    reranker, upstream = rerankers
    store = InMemoryVectorStore(MinistEmbeddings(model))
    store.add_documents([Document(page_content=a["text"], metadata={"id": a["id"]}) for a in ANSWERS])
    # langchain (with ContextualCompressionRetriever) is not installed, only langchain-core: retrieve, then compress.
    retrieved = store.as_retriever(search_kwargs={"k": 8}).invoke(RERANK_QUERY)
    texts = [document.page_content for document in retrieved]
    ranked = reranker.rank(RERANK_QUERY, texts, top_k=3)
    check_ranking(ranked, upstream.rank(RERANK_QUERY, texts, top_k=3))
    assert [hit["corpus_id"] for hit in ranked] != [0, 1, 2]  # the reranker changes the retriever's order
    by_model, by_path = MinistReranker(reranker), MinistReranker(cross_encoder_dir)  # top_n=3 by default
    for best in [by_model.compress_documents(retrieved, RERANK_QUERY),
                 asyncio.run(by_path.acompress_documents(retrieved, RERANK_QUERY))]:
        check_ranking([{"corpus_id": texts.index(document.page_content),
                        "score": document.metadata["relevance_score"]} for document in best], ranked)
        assert best[0].metadata["id"] == retrieved[ranked[0]["corpus_id"]].metadata["id"]
    assert all("relevance_score" not in document.metadata for document in retrieved)  # the reranker made copies
    assert by_model.compress_documents([], RERANK_QUERY) == []


@pytest.mark.slow
def test_llama_index_rerank_matches_its_sentence_transformer_rerank(model, rerankers, cross_encoder_dir):
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.llms.mock import MockLLM
    from llama_index.core.postprocessor import SentenceTransformerRerank
    from llama_index.core.schema import MetadataMode

    from minist.integrations.llama_index import MinistEmbedding, MinistRerank

    reranker, _ = rerankers
    index = VectorStoreIndex.from_documents(
        [Document(text=a["text"], doc_id=a["id"], metadata={"category": a["category"]}) for a in ANSWERS],
        embed_model=MinistEmbedding(model))
    retrieved = index.as_retriever(similarity_top_k=8).retrieve(RERANK_QUERY)
    retrieval_scores = [node.score for node in retrieved]
    # Both rerankers score the text with its metadata ("category: brakes ..."), as an embedding model sees it.
    ranked = reranker.rank(RERANK_QUERY, [node.node.get_content(metadata_mode=MetadataMode.EMBED)
                                          for node in retrieved], top_k=3)
    assert [hit["corpus_id"] for hit in ranked] != [0, 1, 2]  # the reranker changes the retriever's order
    # The reference overwrites the scores of the nodes it is given: it gets copies.
    reference = SentenceTransformerRerank(top_n=3, model=str(cross_encoder_dir), device="cpu").postprocess_nodes(
        copy.deepcopy(retrieved), query_str=RERANK_QUERY)
    ids = [node.node.node_id for node in retrieved]
    check_ranking([{"corpus_id": ids.index(node.node.node_id), "score": float(node.score)} for node in reference],
                  ranked)
    for rerank in [MinistRerank(reranker, top_n=3), MinistRerank(cross_encoder_dir, top_n=3)]:  # a model, or a path
        best = rerank.postprocess_nodes(retrieved, query_str=RERANK_QUERY)
        check_ranking([{"corpus_id": ids.index(node.node.node_id), "score": node.score} for node in best], ranked)
    assert [node.score for node in retrieved] == retrieval_scores  # new NodeWithScores: the retrieved ones stay
    assert rerank.model == str(cross_encoder_dir) and rerank.to_dict()["top_n"] == 3
    # In a query engine (MockLLM: no LLM to call), the reranked nodes are the response's sources.
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=8, node_postprocessors=[rerank])
    assert [node.node.node_id for node in engine.query(RERANK_QUERY).source_nodes] == [ids[h["corpus_id"]]
                                                                                         for h in ranked]
    assert rerank.postprocess_nodes([], query_str=RERANK_QUERY) == []
    with pytest.raises(ValueError, match="query"):
        rerank.postprocess_nodes(retrieved)
