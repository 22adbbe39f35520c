"""minist as LangChain embeddings: ``MinistEmbeddings`` implements ``langchain_core.embeddings.Embeddings``.

    pip install "minist[langchain]"

>>> from langchain_core.vectorstores import InMemoryVectorStore  # doctest: +SKIP
>>> store = InMemoryVectorStore(MinistEmbeddings("all-MiniLM-L6-v2"))  # doctest: +SKIP

Embeddings are normalized by default, so LangChain's cosine and dot-product stores agree.
Queries and documents go through ``encode_query`` and ``encode_document``, so a model's prompts apply.
Left out: multi-process encoding.
"""

from __future__ import annotations

from pathlib import Path

try:
    from langchain_core.embeddings import Embeddings
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
