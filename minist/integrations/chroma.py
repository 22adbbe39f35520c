"""minist in Chroma: an embedding function whose collections remember their model, a corpus kept in sync, a server.

    pip install "minist[chroma]"

>>> ef = MinistEmbeddingFunction(model)  # doctest: +SKIP
>>> collection = open_collection(chromadb.PersistentClient("db"), "faq", ef)  # doctest: +SKIP
>>> sync(collection, ef, ["Oil the chain.", "Pump the tyres."])  # doctest: +SKIP
{'added': 2, 'updated': 0, 'deleted': 0, 'unchanged': 0}
>>> search(collection, ef, "my chain squeaks", top_k=1)  # doctest: +SKIP
[{'corpus_id': '3f5d...', 'score': 0.62, 'text': 'Oil the chain.', 'metadata': None}]

- ``MinistEmbeddingFunction`` is chromadb's embedding-function protocol: documents through ``encode_document``,
  queries through ``encode_query`` (``embed_query``), normalized. Its ``get_config`` (the model's name, weights
  fingerprint and dimension) is stored with each collection, so a collection remembers which model made it.
- ``open_collection`` opens or creates a collection in the cosine space, and refuses one made by another model
  (another fingerprint or dimension) before anything is written. Chroma itself compares only the function's
  name, so two minist models would pass its check.
- ``sync`` makes a collection hold exactly the given documents: new ones added, changed ones re-embedded, gone
  ones deleted, in batches Chroma accepts. Ids are the caller's, or a hash of the text. A sync killed part way
  leaves a store that the next sync completes; a second sync in a row writes nothing.
- ``search`` answers in ``semantic_search``'s shape, ``score`` being cosine similarity in any of Chroma's spaces.
- ``ChromaWriter`` is a Ray Data sink into a server; ``ChromaServer`` and ``connect`` (from ``chroma_server``,
  re-exported here) start one on a free local port and open a client of a folder or a URL.

Chroma's default space is squared L2: with unit vectors its ranking is cosine's, but its distance is
``2 - 2 * cosine``. Always pass an embedding function: Chroma's default one downloads a model.
Left out: Chroma Cloud, multi-modal collections, sparse vectors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

try:
    import chromadb
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
    from chromadb.utils.embedding_functions import register_embedding_function
except ImportError as error:
    raise ImportError('minist.integrations.chroma needs chromadb: pip install "minist[chroma]"') from error

from minist.cache import model_fingerprint, model_state
from minist.inputs import check_count, text_list
from minist.integrations.chroma_server import ChromaServer, connect, server_errors
from minist.model import SentenceTransformer

__all__ = ["ChromaServer", "ChromaWriter", "MinistEmbeddingFunction", "connect", "open_collection", "search", "sync",
           "text_id"]

SCALARS = (str, int, float, bool)


@register_embedding_function  # so chromadb can rebuild it from a collection's stored config
class MinistEmbeddingFunction(EmbeddingFunction[Documents]):
    """A minist ``SentenceTransformer`` (given, or loaded by name or path) as a chromadb embedding function."""

    def __init__(self, model: str | Path | SentenceTransformer = "all-MiniLM-L6-v2",
                 normalize_embeddings: bool = True, batch_size: int | None = None, device: str | None = None):
        self.model = model if isinstance(model, SentenceTransformer) else SentenceTransformer(model, device=device)
        self.normalize_embeddings, self.batch_size = normalize_embeddings, batch_size
        self._fingerprint: tuple | None = None  # (model_state, fingerprint): hashing the weights once

    def __call__(self, input: Documents) -> Embeddings:
        """Documents -> a list of (dim,) float32 arrays, through ``encode_document``."""
        return list(self.model.encode_document(text_list(input), batch_size=self.batch_size, show_progress_bar=False,
                                               normalize_embeddings=self.normalize_embeddings))

    def embed_query(self, input: Documents) -> Embeddings:
        """Queries -> a list of (dim,) float32 arrays, through ``encode_query`` (the model's query prompt)."""
        return list(self.model.encode_query(text_list(input), batch_size=self.batch_size, show_progress_bar=False,
                                            normalize_embeddings=self.normalize_embeddings))

    @staticmethod
    def name() -> str:
        return "minist"

    def default_space(self) -> str:
        return "cosine"

    def get_config(self) -> dict[str, Any]:
        """What made the vectors: the model's name, a fingerprint of its weights and settings, the dimension."""
        state = model_state(self.model)
        if self._fingerprint is None or self._fingerprint[0] != state:  # fit() changes the weights in place
            self._fingerprint = state, model_fingerprint(self.model)
        return {"model": self.model.name_or_path, "fingerprint": self._fingerprint[1],
                "dimension": self.model.get_sentence_embedding_dimension(),
                "normalize_embeddings": self.normalize_embeddings}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MinistEmbeddingFunction:
        """Load the model a collection names, and refuse it if its weights are not the ones that made the vectors."""
        function = MinistEmbeddingFunction(config["model"], normalize_embeddings=config["normalize_embeddings"])
        check_same_model(config, function.get_config(), "the collection")
        return function

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        check_same_model(old_config, new_config, "the collection")


def check_same_model(made_by: dict, this: dict, what: str) -> None:
    """Raise a ValueError naming both models unless ``this`` config makes the vectors ``made_by`` made."""
    keys = ("fingerprint", "dimension", "normalize_embeddings")
    if any(made_by.get(key) != this.get(key) for key in keys):
        def describe(config):
            return (f"{config.get('model')!r} (fingerprint {str(config.get('fingerprint'))[:12]}, dimension "
                    f"{config.get('dimension')}, normalize_embeddings={config.get('normalize_embeddings')})")
        raise ValueError(f"{what} holds vectors made by {describe(made_by)}, not by this model {describe(this)}. "
                         "Open it with the model that made it, or use another collection.")


def as_function(model: str | Path | SentenceTransformer | MinistEmbeddingFunction) -> MinistEmbeddingFunction:
    return model if isinstance(model, MinistEmbeddingFunction) else MinistEmbeddingFunction(model)


# --- collections ------------------------------------------------------------------------------------------
def open_collection(client, name: str, model, space: str = "cosine", metadata: dict | None = None):
    """The collection ``name`` (created in ``space`` if new), refused if another model made its vectors."""
    function = as_function(model)
    with server_errors(client):
        try:
            collection = client.get_collection(name, embedding_function=function)
        except chromadb.errors.NotFoundError:
            collection = client.get_or_create_collection(name, embedding_function=function, metadata=metadata,
                                                         configuration={"hnsw": {"space": space}})
        except ValueError as error:  # Chroma's own check: another embedding function's name
            raise ValueError(f"Collection {name!r} was made by another embedding function: {error}") from None
        check_collection(collection, function)
    return collection


def check_collection(collection, function: MinistEmbeddingFunction) -> None:
    """Refuse a collection whose stored config or vectors come from another model than ``function``'s."""
    ours = function.get_config()
    stored = collection.configuration_json.get("embedding_function") or {}
    if stored.get("name") == "minist":
        check_same_model(stored["config"], ours, f"Collection {collection.name!r}")
    elif stored.get("type") == "known":
        raise ValueError(f"Collection {collection.name!r} was made by Chroma's {stored.get('name')!r} embedding "
                         f"function, not by minist's {ours['model']!r}. Use another collection.")
    vectors = collection.peek(1)["embeddings"]  # made without a config (LangChain's, say): check the dimension
    if vectors is not None and len(vectors) and len(vectors[0]) != ours["dimension"]:
        raise ValueError(f"Collection {collection.name!r} holds {len(vectors[0])}-dimensional vectors; this model "
                         f"{ours['model']!r} makes {ours['dimension']}. Open it with the model that made it.")


def text_id(text: str) -> str:
    """A stable id for a text: the first 32 hex digits of its sha256 (the same text, the same id, anywhere)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def check_records(documents, ids, metadatas) -> tuple[list[str], list[str], list[dict | None]]:
    """Documents, ids and metadatas as lists, every fault named (by id) before anything is written."""
    documents = text_list(documents)
    ids = [text_id(text) for text in documents] if ids is None else list(ids)
    metadatas = [None] * len(documents) if metadatas is None else list(metadatas)
    if not len(ids) == len(documents) == len(metadatas):
        raise ValueError(f"{len(documents)} documents, {len(ids)} ids and {len(metadatas)} metadatas: one each.")
    seen = {}
    for index, (id, text, metadata) in enumerate(zip(ids, documents, metadatas, strict=True)):
        if not isinstance(id, str) or not id:
            raise TypeError(f"ids[{index}] is {id!r}; an id must be a non-empty string.")
        if seen.setdefault(id, (text, metadata)) != (text, metadata):  # a text repeated whole is one record
            raise ValueError(f"id {id!r} is given twice (items {ids.index(id)} and {index}), with other text or "
                             "metadata; ids must be unique.")
        for key, value in (metadata or {}).items():
            if not isinstance(value, SCALARS) and not (isinstance(value, list) and value and
                                                       len({type(v) for v in value}) == 1 and
                                                       isinstance(value[0], SCALARS)):
                raise ValueError(f"metadata {key!r} of id {id!r} is {value!r:.60}: Chroma stores str, int, float, bool "
                                 "or a non-empty list of one of them (not None, nor nested dicts).")
    return ids, documents, [metadata or None for metadata in metadatas]


def chunks(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def stored_records(collection, page: int = 10_000) -> dict[str, tuple[str | None, dict | None]]:
    """Every id in the collection -> (document, metadata), read a page at a time."""
    records = {}
    while True:
        got = collection.get(include=["documents", "metadatas"], limit=page, offset=len(records))
        records.update(zip(got["ids"], zip(got["documents"], got["metadatas"], strict=True), strict=True))
        if len(got["ids"]) < page:
            return records


def sync(collection, model, documents, ids: list[str] | None = None, metadatas: list[dict] | None = None,
         batch_size: int | None = None) -> dict[str, int]:
    """Make ``collection`` hold exactly these documents; returns counts of added, updated, deleted and unchanged.

    Only new and changed texts are embedded (a changed metadata alone is updated in place); ids no longer
    given are deleted. ``ids`` default to ``text_id(text)``; ``batch_size`` to Chroma's ``max_batch_size``.
    """
    function = as_function(model)
    ids, documents, metadatas = check_records(documents, ids, metadatas)
    check_count("batch_size", batch_size, optional=True)
    with server_errors(collection._client):
        check_collection(collection, function)
        stored = stored_records(collection)
        step = batch_size or collection._client.get_max_batch_size()
        records = dict(zip(ids, zip(documents, metadatas, strict=True), strict=True))  # a repeated text: one record
        new, retext, remeta = [], [], []
        for id, (text, metadata) in records.items():
            if id not in stored:
                new.append(id)
            elif stored[id][0] != text:
                retext.append(id)
            elif (stored[id][1] or {}) != (metadata or {}):
                remeta.append(id)
        gone = [id for id in stored if id not in records]

        def replacing(id):  # upsert and update merge metadata: a key no longer given is set to None, which drops it
            old, metadata = (stored[id][1] if id in stored else None) or {}, records[id][1] or {}
            return {**dict.fromkeys(old), **metadata} or None

        for batch in chunks(new + retext, step):
            texts = [records[id][0] for id in batch]
            collection.upsert(ids=batch, documents=texts, embeddings=np.asarray(function(texts)),
                              metadatas=[replacing(id) for id in batch])
        for batch in chunks(remeta, step):
            collection.update(ids=batch, metadatas=[replacing(id) for id in batch])
        for batch in chunks(gone, step):
            collection.delete(ids=batch)
    return {"added": len(new), "updated": len(retext) + len(remeta), "deleted": len(gone),
            "unchanged": len(records) - len(new) - len(retext) - len(remeta)}


def search(collection, model, queries: str | list[str], top_k: int = 10, where: dict | None = None) -> list:
    """Per query, the ``top_k`` hits best first: ``{"corpus_id": id, "score": cosine, "text", "metadata"}``.

    A string is one query (one list back). An empty collection gives no hits; ``top_k`` past its size, all.
    """
    function, single = as_function(model), isinstance(queries, str)
    check_count("top_k", top_k)
    queries = text_list(queries)
    if not queries:
        return []
    # No count() first: Chroma returns what it holds, up to n_results, and at 100k vectors a count() costs more
    # than the query itself (benchmarks/README.md).
    with server_errors(collection._client):
        found = collection.query(query_embeddings=np.asarray(function.embed_query(queries)), n_results=top_k,
                                 where=where)
    # Chroma's distances: cosine and ip give 1 - cos, squared L2 gives 2 - 2 cos (for unit vectors).
    halve = (collection.configuration_json.get("hnsw") or {}).get("space", "l2") == "l2"
    hits = [[{"corpus_id": id, "score": 1 - (d / 2 if halve else d), "text": text, "metadata": metadata}
             for id, d, text, metadata in zip(*row, strict=True)]
            for row in zip(found["ids"], found["distances"], found["documents"], found["metadatas"], strict=True)]
    return hits[0] if single else hits


class ChromaWriter:
    """A Ray Data sink: ``ds.map_batches(ChromaWriter, fn_constructor_kwargs=...)`` embeds and upserts each batch.

    Resumable by id: a batch's ids already in the collection are not embedded again, so re-running a job
    that died writes only what is missing. Each batch comes back as ``id`` and ``written`` (True if new).
    """

    def __init__(self, url: str, collection: str, model, id_column: str = "id", text_column: str = "text"):
        self.function = as_function(model)
        self.collection = open_collection(connect(url), collection, self.function)
        self.id_column, self.text_column = id_column, text_column

    def __call__(self, batch: dict) -> dict:
        ids = [str(id) for id in batch[self.id_column]]
        with server_errors(self.collection._client):
            stored = set(self.collection.get(ids=ids, include=[])["ids"])
            todo = [i for i, id in enumerate(ids) if id not in stored]
            if todo:
                texts = [str(batch[self.text_column][i]) for i in todo]
                self.collection.upsert(ids=[ids[i] for i in todo], documents=texts,
                                       embeddings=np.asarray(self.function(texts)))
        return {"id": np.array(ids), "written": np.isin(np.arange(len(ids)), todo)}
