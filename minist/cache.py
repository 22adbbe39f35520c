"""Cache a corpus's embeddings on disk: encode once, load back memory-mapped, grow without re-encoding.

``EmbeddingCache(folder, model)`` opens the cache in ``folder`` (or starts one); ``add(texts)`` encodes
only the texts it has not seen yet and appends them. The folder holds:

- ``embeddings.f32``: float32 rows, back to back (read with ``numpy.memmap``, so a large corpus is
  paged in from disk as it is used rather than read whole);
- ``texts.jsonl``: the texts, one JSON string a line, in row order;
- ``meta.json``: what made the rows: the model's fingerprint and name, normalization, dimension, and the
  committed row count and text bytes. It is replaced atomically after each append, so rows past it (left
  by a crash mid-append) are ignored and overwritten.

A cache made by another model (another fingerprint) is refused: its vectors would be meaningless here.
Left out: deleting or editing rows, several writers at once, compression.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from minist.search import semantic_search


def model_fingerprint(model) -> str:
    """sha256 of everything that decides a model's embeddings: its steps, settings and weights."""
    settings = f"{model!r} max_seq_length={model.max_seq_length}"
    if getattr(model, "quantize", None):  # bf16/fp16 autocast change the numbers but no weight
        settings += f" quantize={model.quantize}"
    digest = hashlib.sha256(settings.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """The texts and embeddings of one corpus, made by one model, kept in ``folder``."""

    def __init__(self, folder: str | Path, model, normalize_embeddings: bool = True,
                 batch_size: int | None = None):
        self.folder, self.model, self.batch_size = Path(folder), model, batch_size
        expected = {"model": getattr(model, "name_or_path", None), "fingerprint": model_fingerprint(model),
                    "normalize_embeddings": normalize_embeddings,
                    "dimension": model.get_sentence_embedding_dimension()}
        meta_file = self.folder / "meta.json"
        if meta_file.is_file():
            self.meta = json.loads(meta_file.read_text())
            if self.meta["fingerprint"] != expected["fingerprint"]:
                raise ValueError(
                    f"{self.folder} holds embeddings made by another model ({self.meta['model']!r}, fingerprint "
                    f"{self.meta['fingerprint'][:12]}), not by this one ({expected['model']!r}, fingerprint "
                    f"{expected['fingerprint'][:12]}). Open it with the model that made it, or use a new folder.")
            if self.meta["normalize_embeddings"] != normalize_embeddings:
                raise ValueError(f"{self.folder} holds embeddings made with normalize_embeddings="
                                 f"{self.meta['normalize_embeddings']}; open it with the same setting.")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.meta = {**expected, "rows": 0, "text_bytes": 0}
            self._commit()
        with open(self.folder / "texts.jsonl", "rb") as f:
            committed = f.read(self.meta["text_bytes"]).decode("utf-8")
        self.texts: list[str] = [json.loads(line) for line in committed.splitlines()]
        self._row_of = {text: i for i, text in enumerate(self.texts)}

    def __len__(self) -> int:
        return self.meta["rows"]

    @property
    def embeddings(self) -> np.ndarray:
        """(rows, dimension) float32, memory-mapped from ``embeddings.f32``.

        Pages are read from disk as they are used. Writing into the array changes this copy only
        (copy-on-write), never the file.
        """
        shape = (len(self), self.meta["dimension"])
        if not len(self):
            return np.zeros(shape, np.float32)
        return np.memmap(self.folder / "embeddings.f32", dtype=np.float32, mode="c", shape=shape)

    def add(self, texts: list[str]) -> int:
        """Encode and append the texts not cached yet (each once); returns how many were new."""
        new = [t for t in dict.fromkeys(texts) if t not in self._row_of]
        if not new:
            return 0
        vectors = self.model.encode(new, batch_size=self.batch_size, normalize_embeddings=self.meta[
            "normalize_embeddings"]).astype(np.float32)
        lines = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in new).encode("utf-8")
        rows_bytes = len(self) * self.meta["dimension"] * 4
        for name, committed, data in (("embeddings.f32", rows_bytes, vectors.tobytes()),
                                      ("texts.jsonl", self.meta["text_bytes"], lines)):
            with open(self.folder / name, "r+b") as f:
                f.truncate(committed)  # drop anything a crashed append left past the committed end
                f.seek(committed)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        self.meta["rows"] += len(new)
        self.meta["text_bytes"] += len(lines)
        self._commit()
        self._row_of.update({t: len(self.texts) + i for i, t in enumerate(new)})
        self.texts += new
        return len(new)

    def search(self, queries: str | list[str], top_k: int = 10) -> list[list[dict]]:
        """Encode the queries and search the cache: per query, hits with ``corpus_id``, ``score`` and ``text``."""
        single = isinstance(queries, str)
        query_embeddings = self.model.encode([queries] if single else queries, convert_to_tensor=True,
                                             normalize_embeddings=self.meta["normalize_embeddings"]).cpu()
        hits = semantic_search(query_embeddings, torch.from_numpy(self.embeddings), top_k=top_k)
        hits = [[{**hit, "text": self.texts[hit["corpus_id"]]} for hit in row] for row in hits]
        return hits[0] if single else hits

    def _commit(self) -> None:
        for name in ("embeddings.f32", "texts.jsonl"):
            (self.folder / name).touch()
        tmp = self.folder / "meta.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=2))
        os.replace(tmp, self.folder / "meta.json")  # atomic: readers see the old or the new, never half
