"""Cache a corpus's embeddings on disk: encode once, load back memory-mapped, grow without re-encoding.

``EmbeddingCache(folder, model)`` opens the cache in ``folder`` (or starts one); ``add(texts)`` encodes the
texts it has not seen yet with ``encode_document`` and appends them; ``remove(texts)`` drops rows; ``search``
encodes queries with ``encode_query``. The folder holds ``embeddings.f32`` (float32 rows, back to back, read
with ``numpy.memmap``: paged in from disk as used), ``texts.jsonl`` (one JSON string a line, in row order,
split at ``"\\n"`` only: U+2028, U+0085 and the other breaks of ``str.splitlines`` stay inside their text),
``meta.json`` (the model's fingerprint and name, normalization, dimension, the committed rows and text bytes,
and the files' generation: ``texts.3.jsonl`` after 3 removes) and ``.lock``, which writers take turns on.

What it guarantees, and how:

- Nothing acknowledged is lost. For each chunk of ``chunk_size`` new texts, ``add`` appends the rows past the
  committed end, flushes them to disk, then replaces ``meta.json`` atomically. A crash (or ``kill -9``) keeps
  every chunk committed before it, and a half-written tail is ignored: the same ``add`` again resumes.
- A remove is all or nothing: it copies the rows it keeps into the next generation's files, flushes them,
  replaces ``meta.json``, then deletes the old files. A crash leaves the old cache or the new one.
- Writers (processes or threads) take turns on an exclusive file lock (``filelock``) and read what others
  committed before they write: no text is encoded or stored twice. Readers take no lock: they read committed
  rows only, and hold their embeddings file open (a remove deletes its name) until their next ``search``.
- Rows of one model only: a cache made by another model (another fingerprint), or whose model changed since
  it was opened (``fit`` updates the weights in place), is refused before any row is mixed. Each chunk is
  checked before it is written: rows of another width (another model's pool), NaN, inf or int8 are refused.
- Damage is refused at open, naming the file: a missing or garbled ``meta.json``, files shorter than it
  records, texts that are not JSON lines, a data file that is a symbolic link. No write follows a link
  (``O_NOFOLLOW``; ``meta.json.tmp`` is created exclusively): one planted in a shared folder is never written.

Left out: editing a row in place, compression, caches on network file systems without working locks.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from minist.inputs import check_count, text_list
from minist.search import semantic_search

META_TYPES = {"model": (str, type(None)), "fingerprint": str, "normalize_embeddings": bool, "dimension": int,
              "generation": int, "rows": int, "text_bytes": int}


class DamagedCacheError(ValueError):
    """A cache file is missing, cut short, garbled or a link; the message names the file and what is wrong."""


def file_names(generation: int) -> tuple[str, str]:
    """The embeddings and texts files of a generation; 0 keeps the names caches had before ``remove``."""
    suffix = f".{generation}" if generation else ""
    return f"embeddings{suffix}.f32", f"texts{suffix}.jsonl"


def _settings(model) -> str:  # quantize too: bf16/fp16 autocast change the numbers but no weight
    quantize = f" quantize={model.quantize}" if getattr(model, "quantize", None) else ""
    return f"{model!r} max_seq_length={model.max_seq_length}{quantize}"


def model_fingerprint(model) -> str:
    """sha256 of everything that decides a model's embeddings: its steps, settings and weights."""
    digest = hashlib.sha256(_settings(model).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_state(model) -> tuple:
    """A cheap token that changes whenever the weights may: the settings, each tensor's address and version."""
    return _settings(model), tuple((t.data_ptr(), t._version) for t in [*model.parameters(), *model.buffers()])


class EmbeddingCache:
    """The texts and embeddings of one corpus, made by one model, kept in ``folder``.

    >>> import tempfile
    >>> from minist import SentenceTransformer
    >>> cache = EmbeddingCache(tempfile.mkdtemp(), SentenceTransformer("all-MiniLM-L6-v2", device="cpu"))
    >>> cache.add(["A cat sleeps.", "A kitten naps."]), cache.remove("A cat sleeps."), cache.embeddings.shape
    (2, 1, (1, 384))
    """

    def __init__(self, folder: str | Path, model, normalize_embeddings: bool = True, batch_size: int | None = None):
        self.folder, self.model, self.batch_size = Path(folder), model, batch_size
        self.texts, self._cached = [], set()  # the texts in row order, and as a set
        self._vectors, self._close_vectors = None, lambda: None  # our generation's embeddings file, held open
        self.meta = {"model": getattr(model, "name_or_path", None), "fingerprint": model_fingerprint(model),
                     "normalize_embeddings": normalize_embeddings,
                     "dimension": model.get_sentence_embedding_dimension(), "generation": 0, "rows": 0, "text_bytes": 0}
        self._model_state = model_state(model)
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder} is a file; an EmbeddingCache is a folder.")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.folder / ".lock")
        if not (self.folder / "meta.json").exists():
            with self._lock:  # two processes starting the same cache: one writes meta.json, the other reads it
                if not (self.folder / "meta.json").exists():
                    if stored := [path.name for path in self._row_files() if path.is_file() and path.stat().st_size]:
                        raise DamagedCacheError(f"{self.folder / 'meta.json'} is missing, but {' and '.join(stored)} "
                                                "hold rows, unreadable without it. Restore it, or use a new folder.")
                    self._commit(self.meta)
        meta = self._read_meta()
        if meta["fingerprint"] != self.meta["fingerprint"]:
            raise ValueError(f"{self.folder} holds embeddings made by another model ({meta['model']!r}, fingerprint "
                             f"{meta['fingerprint'][:12]}), not by this one ({self.meta['model']!r}, fingerprint "
                             f"{self.meta['fingerprint'][:12]}). Open it with the model that made it, or a new folder.")
        if meta["normalize_embeddings"] != normalize_embeddings:
            raise ValueError(f"{self.folder} holds embeddings made with normalize_embeddings="
                             f"{meta['normalize_embeddings']}; open it with the same setting.")
        if meta["dimension"] != self.meta["dimension"]:
            raise DamagedCacheError(f"{self.folder / 'meta.json'} records dimension {meta['dimension']}, but "
                                    f"the model that made the cache gives {self.meta['dimension']}.")
        self._refresh()

    def __len__(self) -> int:
        return self.meta["rows"]

    @property
    def embeddings(self) -> np.ndarray:
        """(rows, dimension) float32, memory-mapped and copy-on-write: writing into it never changes the file."""
        shape = (len(self), self.meta["dimension"])
        return np.memmap(self._vectors, np.float32, "c", shape=shape) if len(self) else np.zeros(shape, np.float32)

    def add(self, texts: str | list[str], chunk_size: int | None = 1024, pool=None) -> int:
        """Encode and append the texts not cached yet (each once); returns how many were new.

        A string is one text, as in ``encode``; texts that are not valid Unicode are refused before anything is
        written. Every ``chunk_size`` new texts are checked and committed as they are encoded (None: all at once).
        ``pool`` (from ``model.start_multi_process_pool()``) encodes each chunk in worker processes."""
        texts = text_list(texts)
        check_count("chunk_size", chunk_size, optional=True)
        self._check_model()
        with self._lock:
            self._refresh()  # rows that other writers committed since we last looked
            new = [t for t in dict.fromkeys(texts) if t not in self._cached]
            step = chunk_size or max(len(new), 1)
            for chunk in (new[start:start + step] for start in range(0, len(new), step)):
                vectors = self.model.encode_document(chunk, batch_size=self.batch_size, pool=pool, normalize_embeddings=
                                                     self.meta["normalize_embeddings"], show_progress_bar=False)
                self._write(chunk, self._checked(chunk, vectors), self.meta["generation"])
        return len(new)

    def remove(self, texts: str | list[str]) -> int:
        """Drop the rows of these texts (those not cached are ignored); returns how many rows were dropped.
        The rows kept stay in order (``corpus_id`` shifts past a dropped one). To edit a text: remove, then add."""
        gone = set(text_list(texts))
        with self._lock:
            self._refresh()
            keep = [row for row, text in enumerate(self.texts) if text not in gone]
            dropped, generation = len(self) - len(keep), self.meta["generation"] + 1
            if dropped:  # the rows kept go into the next generation's files; then the old files go
                self._write([self.texts[row] for row in keep], self.embeddings[keep], generation)
                for path in (path for path in self._row_files() if path.name not in file_names(generation)):
                    path.unlink(missing_ok=True)  # the old generation's, and any that a crash left
        return dropped

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

    def _row_files(self) -> list[Path]:  # of every generation
        return [*self.folder.glob("embeddings*.f32"), *self.folder.glob("texts*.jsonl")]

    def _read_meta(self) -> dict:
        path = self.folder / "meta.json"
        try:
            with self._open("meta.json") as f:
                meta = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError as error:
            raise DamagedCacheError(f"{path} is missing; the cache's rows cannot be read without it.") from error
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
            raise DamagedCacheError(f"{path} is damaged: not valid JSON ({error}).") from error
        if not isinstance(meta, dict):
            raise DamagedCacheError(f"{path} is damaged: it holds a {type(meta).__name__}, not a JSON object.")
        meta.setdefault("generation", 0)  # written before remove existed
        for key, kind in META_TYPES.items():
            try:
                if kind is int:
                    check_count(key, meta.get(key), least=0)
                elif not isinstance(meta.get(key), kind):
                    raise TypeError(f"{key} is {meta.get(key)!r}")
            except (TypeError, ValueError) as error:
                raise DamagedCacheError(f"{path} is damaged: {error}") from None
        return meta

    def _refresh(self) -> None:  # read what other writers committed since we last looked
        try:
            if (meta := self._read_meta()) != self.meta:
                self._catch_up(meta)
        except FileNotFoundError as error:
            if self._read_meta()["generation"] != meta["generation"]:
                return self._refresh()  # a remove deleted the files as we opened them: read the ones it made
            raise DamagedCacheError(f"{error.filename} is missing; meta.json records {meta['rows']} rows.") from None

    def _catch_up(self, meta: dict) -> None:
        """Read what ``meta`` commits past what is in memory (a new generation: all), checking sizes and lines."""
        old = self.meta if meta["generation"] == self.meta["generation"] else {"rows": 0, "text_bytes": 0}
        vectors_name, texts_name = file_names(meta["generation"])
        path, start, stop, data = self.folder / texts_name, old["text_bytes"], meta["text_bytes"], b""
        if stop > start:
            with self._open(texts_name, needed=stop) as f:
                data = os.pread(f.fileno(), stop - start, start)
        try:
            lines = data.decode("utf-8").split("\n")
        except UnicodeDecodeError as error:
            raise DamagedCacheError(f"{path} is damaged: not UTF-8 at byte {start + error.start}.") from error
        if lines.pop() != "":  # committed text always ends at a line's end
            raise DamagedCacheError(f"{path} is damaged: its committed text does not end with a line break.")
        texts = []
        for number, line in enumerate(lines, start=old["rows"] + 1):
            try:
                text = json.loads(line)
            except ValueError:
                text = None
            if not isinstance(text, str):
                raise DamagedCacheError(f"{path} is damaged: line {number} is not a JSON string: {line!r:.60}.")
            texts.append(text)
        if (count := old["rows"] + len(texts)) != meta["rows"]:
            raise DamagedCacheError(f"{path} holds {count} texts, but meta.json records {meta['rows']} rows.")
        vectors = self._open(vectors_name, needed=meta["rows"] * meta["dimension"] * 4) if meta["rows"] else None
        self._close_vectors()  # the file we held, if any (a user's memmap of it keeps its own mapping)
        self._vectors, self._close_vectors = vectors, weakref.finalize(self, vectors.close) if vectors else lambda: None
        if old is not self.meta:
            self.texts, self._cached = [], set()
        self.texts += texts
        self._cached.update(texts)
        self.meta = meta

    def _open(self, name: str, flags: int = os.O_RDONLY, needed: int = 0):
        """A file of the folder, never opened through a link, checked to hold the ``needed`` bytes meta.json commits."""
        if (path := self.folder / name).is_symlink():  # named here; O_NOFOLLOW refuses one planted after this look
            raise DamagedCacheError(f"{path} is a symbolic link; a cache reads and writes its own files only. "
                                    "Remove the link, or use a folder only you can write.")
        f = open(os.open(path, flags | os.O_NOFOLLOW, 0o666), "r+b" if flags & os.O_RDWR else "rb")  # noqa: SIM115
        if (size := os.fstat(f.fileno()).st_size) < needed:  # f: held open, or closed by the caller's with
            f.close()
            raise DamagedCacheError(f"{path} is truncated: it holds {size} bytes, but meta.json commits {needed}.")
        return f

    def _check_model(self) -> None:
        """Refuse to mix rows of two models: the weights may have changed in place since the cache was opened."""
        state = model_state(self.model)
        if state != self._model_state and model_fingerprint(self.model) != self.meta["fingerprint"]:
            raise ValueError(f"The model changed since {self.folder} was opened (new weights, e.g. after fit, or other "
                             "settings); its rows were made by the old one. Open a new cache, or reload the old model.")
        self._model_state = state  # the same, or changed and changed back: the same model

    def _checked(self, texts: list[str], vectors) -> np.ndarray:
        """The chunk's rows as float32: one finite row of the cache's dimension per text, or a ValueError."""
        vectors, shape = np.asarray(vectors), (len(texts), self.meta["dimension"])
        with np.errstate(over="ignore"):  # a float64 too large for float32 becomes inf, refused below
            rows = vectors.astype(np.float32) if vectors.dtype.kind == "f" else None
        if rows is None:
            problem = f"gave {vectors.dtype} values; the cache stores float rows only (encode with float32 precision)"
        elif rows.shape != shape:
            problem = f"gave rows of shape {rows.shape} for {shape[0]} texts, not {shape}: another model's (pool's?)"
        elif not (finite := np.isfinite(rows).all(axis=1)).all():
            problem = f"gave values that are not finite (NaN or inf) for {texts[finite.argmin()]!r:.60}"
        else:
            return rows
        raise ValueError(f"The model {problem}. Nothing of it was written; the {len(self)} rows before are kept.")

    def _write(self, texts: list[str], vectors: np.ndarray, generation: int) -> None:
        """Write rows past the committed end of ``generation`` (a new one: from its start), then commit them."""
        rows, size = (len(self), self.meta["text_bytes"]) if generation == self.meta["generation"] else (0, 0)
        lines = "".join(json.dumps(text, ensure_ascii=False) + "\n" for text in texts).encode("utf-8")
        vectors_name, texts_name = file_names(generation)
        self._append(vectors_name, rows * self.meta["dimension"] * 4, np.ascontiguousarray(vectors, np.float32))
        self._append(texts_name, size, lines)
        meta = {**self.meta, "generation": generation, "rows": rows + len(texts), "text_bytes": size + len(lines)}
        self._commit(meta)  # the moment the rows count (and a remove's dropped ones stop): meta.json names them

    def _append(self, name: str, committed: int, data: bytes | np.ndarray, flags=os.O_RDWR | os.O_CREAT) -> None:
        """Write ``data`` at byte ``committed`` of ``name``, dropping what a crashed write left past it."""
        with self._open(name, flags) as f:
            f.truncate(committed)
            f.seek(committed)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _commit(self, meta: dict) -> None:  # replace meta.json, then read what it commits
        if os.path.isfile(tmp := self.folder / "meta.json.tmp") and not tmp.is_symlink():
            os.unlink(tmp)  # a crashed commit's: a new one is created exclusively, never a planted link's target
        self._append(tmp.name, 0, json.dumps(meta, indent=2).encode("utf-8"), os.O_RDWR | os.O_CREAT | os.O_EXCL)
        os.replace(tmp, self.folder / "meta.json")  # atomic: readers see old or new
        self._catch_up(meta)
