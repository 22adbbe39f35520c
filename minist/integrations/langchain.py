"""minist in LangChain: ``MinistEmbeddings`` (``langchain_core.embeddings.Embeddings``) and ``MinistReranker``
(a ``BaseDocumentCompressor`` that reranks retrieved documents with a minist ``CrossEncoder``).

    pip install "minist[langchain]"

>>> from langchain_core.vectorstores import InMemoryVectorStore  # doctest: +SKIP
>>> store = InMemoryVectorStore(MinistEmbeddings("all-MiniLM-L6-v2"))  # doctest: +SKIP
>>> reranker = MinistReranker("path/to/cross-encoder", top_n=3)  # doctest: +SKIP
>>> best = reranker.compress_documents(store.similarity_search(query, k=20), query)  # doctest: +SKIP

Embeddings are normalized by default, so LangChain's cosine and dot-product stores agree.
Queries and documents go through ``encode_query`` and ``encode_document``, so a model's prompts apply.
The reranker mirrors langchain's ``CrossEncoderReranker`` (``model``, ``top_n=3``), which drops the scores; like
LangChain's other rerankers (Cohere, Jina, FlashRank) it keeps each in ``metadata["relevance_score"]``.
Left out: multi-process encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.embeddings import Embeddings
    from pydantic import ConfigDict
except ImportError as error:
    raise ImportError('minist.integrations.langchain needs langchain-core: pip install "minist[langchain]"') from error

from minist.model import SentenceTransformer


class MinistEmbeddings(Embeddings):
    """LangChain embeddings backed by a minist ``SentenceTransformer`` (given, or loaded by name or path)."""

    def __init__(self, model: str | Path | SentenceTransformer = "all-MiniLM-L6-v2", batch_size: int | None = None,
                 normalize_embeddings: bool = True, device: str | None = None):
        self.model = model if isinstance(model, SentenceTransformer) else SentenceTransformer(model, device=device)
        self.batch_size, self.normalize_embeddings = batch_size, normalize_embeddings

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Documents through ``encode_document`` (the model's document prompt, if it has one)."""
        return self.model.encode_document(list(texts), batch_size=self.batch_size,
                                          normalize_embeddings=self.normalize_embeddings).tolist()

    def embed_query(self, text: str) -> list[float]:
        """A query through ``encode_query`` (the model's query prompt, if it has one)."""
        return self.model.encode_query([text], batch_size=self.batch_size,
                                       normalize_embeddings=self.normalize_embeddings)[0].tolist()


class MinistReranker(BaseDocumentCompressor):
    """The ``top_n`` documents a cross-encoder scores highest for the query (given, or loaded by name or path)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    model: Any  # anything with sentence-transformers' CrossEncoder.rank: minist's CrossEncoder, or upstream's
    top_n: int = 3

    def __init__(self, model: Any, top_n: int = 3, device: str | None = None):
        if isinstance(model, (str, Path)):
            from minist.cross_encoder import CrossEncoder  # only when loading by name: a model object needs no import

            model = CrossEncoder(model, device=device)
        super().__init__(model=model, top_n=top_n)

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """Best first: copies of at most ``top_n`` documents, each with ``metadata["relevance_score"]`` set."""
        if not documents:
            return []
        hits = self.model.rank(query, [document.page_content for document in documents], top_k=self.top_n)
        best = [(documents[hit["corpus_id"]], float(hit["score"])) for hit in hits]
        # Copies, so the caller's documents keep their metadata (as CohereRerank does).
        return [document.model_copy(update={"metadata": {**document.metadata, "relevance_score": score}})
                for document, score in best]
