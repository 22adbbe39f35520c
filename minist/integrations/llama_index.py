"""minist as a LlamaIndex embed model: ``MinistEmbedding`` subclasses llama-index-core's ``BaseEmbedding``.

    pip install "minist[llama-index]"

>>> from llama_index.core import VectorStoreIndex  # doctest: +SKIP
>>> embed_model = MinistEmbedding("all-MiniLM-L6-v2")  # doctest: +SKIP
>>> index = VectorStoreIndex.from_documents(documents, embed_model=embed_model)  # doctest: +SKIP

LlamaIndex's async methods run the same (blocking) encode: on a CPU there is nothing to overlap.
Queries go through ``encode_query`` and texts through ``encode_document``, so a model's prompts apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from pydantic import PrivateAttr
except ImportError as error:
    raise ImportError('minist.integrations.llama_index needs llama-index-core: pip install "minist[llama-index]"'
                      ) from error

from minist.model import SentenceTransformer


class MinistEmbedding(BaseEmbedding):
    """LlamaIndex embeddings backed by a minist ``SentenceTransformer`` (given, or loaded by name or path)."""

    normalize: bool = True
    _model: SentenceTransformer = PrivateAttr()

    def __init__(self, model: str | Path | SentenceTransformer = "all-MiniLM-L6-v2", embed_batch_size: int = 32,
                 normalize: bool = True, device: str | None = None, **kwargs: Any):
        model = model if isinstance(model, SentenceTransformer) else SentenceTransformer(model, device=device)
        # **kwargs: BaseEmbedding's own settings (callback_manager, num_workers, ...), which it validates.
        super().__init__(model_name=model.name_or_path or "minist", embed_batch_size=embed_batch_size,
                         normalize=normalize, **kwargs)
        self._model = model

    @classmethod
    def class_name(cls) -> str:
        return "MinistEmbedding"

    def _encode(self, texts: list[str], kind: str = "document") -> list[list[float]]:
        """Texts through ``encode_document``, or ``encode_query`` for queries: the model's prompts apply."""
        encode = self._model.encode_query if kind == "query" else self._model.encode_document
        return encode(texts, batch_size=self.embed_batch_size, normalize_embeddings=self.normalize).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._encode([query], "query")[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._encode([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._encode(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embedding(text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._get_text_embeddings(texts)
