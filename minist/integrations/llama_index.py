"""minist in LlamaIndex: ``MinistEmbedding`` (a ``BaseEmbedding``) and ``MinistRerank`` (a node postprocessor
that reranks retrieved nodes with a minist ``CrossEncoder``, as llama-index-core's ``SentenceTransformerRerank`` does).

    pip install "minist[llama-index]"

>>> from llama_index.core import VectorStoreIndex  # doctest: +SKIP
>>> embed_model = MinistEmbedding("all-MiniLM-L6-v2")  # doctest: +SKIP
>>> index = VectorStoreIndex.from_documents(documents, embed_model=embed_model)  # doctest: +SKIP
>>> rerank = MinistRerank("path/to/cross-encoder", top_n=2)  # doctest: +SKIP
>>> engine = index.as_query_engine(similarity_top_k=10, node_postprocessors=[rerank])  # doctest: +SKIP

LlamaIndex's async methods run the same (blocking) encode: on a CPU there is nothing to overlap.
Queries go through ``encode_query`` and texts through ``encode_document``, so a model's prompts apply.
The reranker leaves out ``SentenceTransformerRerank``'s ``keep_retrieval_score``; it returns new ``NodeWithScore``s
rather than overwriting the retriever's scores, and emits no RERANKING callback event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
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


class MinistRerank(BaseNodePostprocessor):
    """The ``top_n`` nodes a cross-encoder scores highest for the query (given, or loaded by name or path)."""

    model: str  # the model's name, as in SentenceTransformerRerank; the model itself is ``_model``
    top_n: int = 2
    _model: Any = PrivateAttr()  # anything with sentence-transformers' CrossEncoder.rank

    def __init__(self, model: Any, top_n: int = 2, device: str | None = None, **kwargs: Any):
        if isinstance(model, (str, Path)):
            from minist.cross_encoder import CrossEncoder  # only when loading by name: a model object needs no import

            model = CrossEncoder(model, device=device)
        name = getattr(model, "name_or_path", None) or type(model).__name__  # upstream's CrossEncoder has no name
        super().__init__(model=name, top_n=top_n, **kwargs)  # **kwargs: BaseNodePostprocessor's callback_manager
        self._model = model

    @classmethod
    def class_name(cls) -> str:
        return "MinistRerank"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        """Best first: at most ``top_n`` nodes, each scored by the cross-encoder."""
        if query_bundle is None:
            raise ValueError("MinistRerank needs the query: postprocess_nodes(nodes, query_str=...).")
        if not nodes:
            return []
        # The text with the metadata an embedding model sees, as SentenceTransformerRerank scores it.
        texts = [node.node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]
        hits = self._model.rank(query_bundle.query_str, texts, top_k=self.top_n)
        return [NodeWithScore(node=nodes[hit["corpus_id"]].node, score=float(hit["score"])) for hit in hits]
