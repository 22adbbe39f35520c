"""Cache a corpus's embeddings on disk: encode once, load back memory-mapped, grow without re-encoding.

``EmbeddingCache(folder, model)`` opens the cache in ``folder`` (or starts one); ``add(texts)`` encodes
only the texts it has not seen yet and appends them (``encode_document``: with the model's document prompt,
if it has one; ``search`` encodes queries with ``encode_query``). The folder holds:

- ``embeddings.f32``: float32 rows, back to back (read with ``numpy.memmap``, so a large corpus is
  paged in from disk as it is used rather than read whole);
- ``texts.jsonl``: the texts, one JSON string a line, in row order. Lines end at ``"\\n"`` only: JSON
  escapes that one inside a string, while U+2028, U+0085 and the other breaks that ``str.splitlines`` cuts
  at are kept as they are, inside their text;
- ``meta.json``: what made the rows (the model's fingerprint and name, normalization, dimension) and the
  committed row count and text bytes;
- ``.lock``: the lock file that writers take turns on.

What it guarantees, and how:

- Nothing acknowledged is lost. ``add`` encodes ``chunk_size`` new texts at a time; for each chunk it
  appends the rows past the committed end, flushes them to disk, then replaces ``meta.json`` atomically.
  A crash (or ``kill -9``) at any point leaves every chunk committed before it; a half-written tail is
  ignored and overwritten by the next ``add``. So a long job is resumable: run the same ``add`` again and
  it encodes only the texts still missing.
- Several writers (processes or threads) take turns: ``add`` holds an exclusive file lock (``filelock``)
  while it reads what others committed, encodes what is still new and appends it. A second writer waits
  for the first, then sees its rows, so no text is encoded or stored twice. Readers take no lock: they
  read only committed rows, which no writer changes.
- Damage is refused at open, naming the file: a missing ``meta.json`` beside stored rows, a ``meta.json``
  that is not the cache's JSON, files shorter than ``meta.json`` records, texts that are not JSON lines.
- Rows of one model only: a cache made by another model (another fingerprint) is refused, and so is one
  whose model changed since it was opened (``fit`` updates the weights in place), before any row is mixed.

Left out: deleting or editing rows, compression, caches on network file systems without working locks.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from minist.inputs import check_count, text_list
from minist.search import semantic_search

META_TYPES = {"model": (str, type(None)), "fingerprint": str, "normalize_embeddings": bool, "dimension": int,
              "rows": int, "text_bytes": int}


class DamagedCacheError(ValueError):
    """A cache file is missing, cut short or garbled; the message names the file and what is wrong."""


def _settings(model) -> str:
    settings = f"{model!r} max_seq_length={model.max_seq_length}"
    if getattr(model, "quantize", None):  # bf16/fp16 autocast change the numbers but no weight
        settings += f" quantize={model.quantize}"
    return settings


def model_fingerprint(model) -> str:
    """sha256 of everything that decides a model's embeddings: its steps, settings and weights."""
    digest = hashlib.sha256(_settings(model).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_state(model) -> tuple:
    """A cheap token that changes whenever the weights may have: each tensor's address and in-place
    version counter (which every optimizer step and ``load_state_dict`` bumps), plus the settings."""
    tensors = [*model.parameters(), *model.buffers()]
    return _settings(model), tuple((t.data_ptr(), t._version) for t in tensors)


class EmbeddingCache:
    """The texts and embeddings of one corpus, made by one model, kept in ``folder``.

    >>> import tempfile
    >>> from minist import SentenceTransformer
    >>> cache = EmbeddingCache(tempfile.mkdtemp(), SentenceTransformer("all-MiniLM-L6-v2", device="cpu"))
    >>> cache.add(["A cat sleeps.", "A kitten naps."]), cache.embeddings.shape
    (2, (2, 384))
    """

    def __init__(self, folder: str | Path, model, normalize_embeddings: bool = True,
                 batch_size: int | None = None):
        self.folder, self.model, self.batch_size = Path(folder), model, batch_size
        self.texts: list[str] = []
        self._row_of: dict[str, int] = {}
        self.meta = {"model": getattr(model, "name_or_path", None), "fingerprint": model_fingerprint(model),
                     "normalize_embeddings": normalize_embeddings,
                     "dimension": model.get_sentence_embedding_dimension(), "rows": 0, "text_bytes": 0}
        self._model_state = model_state(model)
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder} is a file; an EmbeddingCache is a folder.")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.folder / ".lock")
        if not (self.folder / "meta.json").exists():
            with self._lock:  # two processes starting the same cache: one writes meta.json, the other reads it
                if not (self.folder / "meta.json").exists():
                    self._refuse_orphaned_rows()
                    self._commit(self.meta)
        meta = self._read_meta()
        if meta["fingerprint"] != self.meta["fingerprint"]:
            raise ValueError(
                f"{self.folder} holds embeddings made by another model ({meta['model']!r}, fingerprint "
                f"{meta['fingerprint'][:12]}), not by this one ({self.meta['model']!r}, fingerprint "
                f"{self.meta['fingerprint'][:12]}). Open it with the model that made it, or use a new folder.")
        if meta["normalize_embeddings"] != normalize_embeddings:
            raise ValueError(f"{self.folder} holds embeddings made with normalize_embeddings="
                             f"{meta['normalize_embeddings']}; open it with the same setting.")
        if meta["dimension"] != self.meta["dimension"]:
            raise DamagedCacheError(f"{self.folder / 'meta.json'} records dimension {meta['dimension']}, but "
                                    f"the model that made the cache gives {self.meta['dimension']}.")
        self._read_new_texts(meta)

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

    def add(self, texts: str | list[str], chunk_size: int | None = 1024, pool=None) -> int:
        """Encode and append the texts not cached yet (each once); returns how many were new.

        A string is one text, as in ``encode``. Texts that are not valid Unicode are refused before anything
        is written (a ValueError naming the item). Every ``chunk_size`` new texts are committed as they are
        encoded (None: all at once), so an interrupted ``add`` loses at most one chunk's work.
        ``pool`` (from ``model.start_multi_process_pool()``) encodes each chunk in worker processes.
        """
        texts = text_list(texts)
        check_count("chunk_size", chunk_size, optional=True)
        self._check_model()
        with self._lock:
            self._refresh()  # rows that other writers committed since we last looked
            new = [t for t in dict.fromkeys(texts) if t not in self._row_of]
            step = chunk_size or max(len(new), 1)
            for start in range(0, len(new), step):
                self._add_chunk(new[start:start + step], pool)
        return len(new)

    def _add_chunk(self, new: list[str], pool) -> None:
        """Encode ``new`` (texts not in the cache), append their rows and commit them."""
        vectors = self.model.encode_document(new, batch_size=self.batch_size, pool=pool, normalize_embeddings=self.meta[
            "normalize_embeddings"], show_progress_bar=False).astype(np.float32)
        lines = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in new).encode("utf-8")
        self._append("embeddings.f32", len(self) * self.meta["dimension"] * 4, vectors.tobytes())
        self._append("texts.jsonl", self.meta["text_bytes"], lines)
        meta = {**self.meta, "rows": len(self) + len(new), "text_bytes": self.meta["text_bytes"] + len(lines)}
        self._commit(meta)  # the moment the rows count: until meta.json names them, they are not there
        self._remember(new)
        self.meta = meta

    def search(self, queries: str | list[str], top_k: int = 10) -> list[list[dict]]:
        """Encode the queries and search the cache: per query, hits with ``corpus_id``, ``score`` and ``text``."""
        single = isinstance(queries, str)
        self._check_model()
        self._refresh()
        query_embeddings = self.model.encode_query([queries] if single else queries, convert_to_tensor=True,
                                                   normalize_embeddings=self.meta["normalize_embeddings"]).cpu()
        hits = semantic_search(query_embeddings, torch.from_numpy(self.embeddings), top_k=top_k)
        hits = [[{**hit, "text": self.texts[hit["corpus_id"]]} for hit in row] for row in hits]
        return hits[0] if single else hits

    # --- reading ------------------------------------------------------------------------------------
    def _refuse_orphaned_rows(self) -> None:
        stored = [name for name in ("embeddings.f32", "texts.jsonl")
                  if (self.folder / name).is_file() and (self.folder / name).stat().st_size]
        if stored:
            raise DamagedCacheError(f"{self.folder / 'meta.json'} is missing, but {' and '.join(stored)} hold rows: "
                                    "without it the rows cannot be read. Restore meta.json, or use a new folder.")

    def _read_meta(self) -> dict:
        path = self.folder / "meta.json"
        try:
            meta = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError as error:
            raise DamagedCacheError(f"{path} is missing; the cache's rows cannot be read without it.") from error
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
            raise DamagedCacheError(f"{path} is damaged: not valid JSON ({error}).") from error
        if not isinstance(meta, dict):
            raise DamagedCacheError(f"{path} is damaged: it holds a {type(meta).__name__}, not a JSON object.")
        for key, kind in META_TYPES.items():
            value = meta.get(key)
            try:
                if kind is int:
                    check_count(key, value, least=0)
                elif not isinstance(value, kind):
                    raise TypeError(f"{key} is {value!r}")
            except (TypeError, ValueError) as error:
                raise DamagedCacheError(f"{path} is damaged: {error}") from None
        for name, needed in (("embeddings.f32", meta["rows"] * meta["dimension"] * 4),
                             ("texts.jsonl", meta["text_bytes"])):
            size = (self.folder / name).stat().st_size if (self.folder / name).is_file() else None
            if needed and size is None:
                raise DamagedCacheError(f"{self.folder / name} is missing; meta.json records {meta['rows']} rows.")
            if needed and size < needed:
                raise DamagedCacheError(f"{self.folder / name} is truncated: it holds {size} bytes, but meta.json "
                                        f"records {meta['rows']} rows, which take {needed} bytes.")
        return meta

    def _read_new_texts(self, meta: dict) -> None:
        """Read the texts that ``meta`` commits past those already in memory, checking each line."""
        path, start, stop = self.folder / "texts.jsonl", self.meta["text_bytes"], meta["text_bytes"]
        data = b""
        if stop > start:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(stop - start)
        try:
            lines = data.decode("utf-8").split("\n")
        except UnicodeDecodeError as error:
            raise DamagedCacheError(f"{path} is damaged: not UTF-8 at byte {start + error.start}.") from error
        if lines.pop() != "":  # committed text always ends at a line's end
            raise DamagedCacheError(f"{path} is damaged: its committed text does not end with a line break.")
        texts = []
        for number, line in enumerate(lines, start=len(self.texts) + 1):
            try:
                text = json.loads(line)
            except ValueError:
                text = None
            if not isinstance(text, str):
                raise DamagedCacheError(f"{path} is damaged: line {number} is not a JSON string: {line!r:.60}.")
            texts.append(text)
        if len(self.texts) + len(texts) != meta["rows"]:
            raise DamagedCacheError(f"{path} holds {len(self.texts) + len(texts)} texts, but meta.json records "
                                    f"{meta['rows']} rows.")
        self._remember(texts)
        self.meta = meta

    def _remember(self, texts: list[str]) -> None:
        self._row_of.update({t: len(self.texts) + i for i, t in enumerate(texts)})
        self.texts += texts

    def _refresh(self) -> None:
        meta = self._read_meta()
        if meta["rows"] != len(self.texts):
            self._read_new_texts(meta)

    def _check_model(self) -> None:
        """Refuse to mix rows of two models: the weights may have changed in place since the cache was opened."""
        state = model_state(self.model)
        if state == self._model_state:
            return
        if model_fingerprint(self.model) != self.meta["fingerprint"]:
            raise ValueError(f"The model changed since {self.folder} was opened (new weights, e.g. after fit, or "
                             "other settings): its rows were made by the model as it was. Open a new cache with "
                             "the changed model, or reload the old one.")
        self._model_state = state  # changed and changed back: the same model

    # --- writing -------------------------------------------------------------------------------------
    def _append(self, name: str, committed: int, data: bytes) -> None:
        """Write ``data`` at the committed end of ``name``, dropping what a crashed append left past it."""
        fd = os.open(self.folder / name, os.O_RDWR | os.O_CREAT, 0o666)
        with open(fd, "r+b") as f:
            f.truncate(committed)
            f.seek(committed)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _commit(self, meta: dict) -> None:
        tmp = self.folder / "meta.json.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(meta, indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / "meta.json")  # atomic: readers see the old or the new, never half
