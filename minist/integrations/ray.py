"""minist on Ray Data: ``Embedder``, a callable class for ``Dataset.map_batches`` that adds an embedding column.

    pip install "minist[ray]"

>>> import ray  # doctest: +SKIP
>>> ds = ray.data.read_json("corpus.jsonl")  # doctest: +SKIP
>>> ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model": "all-MiniLM-L6-v2"},  # doctest: +SKIP
...                     compute=ray.data.ActorPoolStrategy(size=2), batch_size=256)
>>> ds.write_parquet("embeddings/")  # doctest: +SKIP

Ray runs ``size`` actors (processes, on one machine or a cluster); each builds one ``Embedder``, so
the model is loaded once per actor, and then gets batches of rows: a dict of numpy arrays (Ray's default), a
pandas DataFrame (``batch_format="pandas"``) or a pyarrow Table (``"pyarrow"``). The batch comes back in its
own format with ``embedding_column`` added, one vector per row (in a Table, the tensor column Ray makes of
numpy batches), float32 (or packed bits, as ``precision="binary"`` asks); the other columns (ids) pass
through untouched, so rows keep their ids wherever Ray moves them. Give each actor its share of the cores
(``num_cpus=`` in ``map_batches``) as ``minist.parallel`` does for its workers.

Unlike ``minist.parallel``, Ray streams: a corpus larger than memory is read, embedded and written in pieces,
and a failed actor's batches are retried on another.
``precision="int8"`` and ``"uint8"`` are refused when the ``Embedder`` is built: ``encode`` takes their ranges
from the texts it encodes together, so each batch would get its own scale, and a last batch of one row none at all.
For one scale over the corpus, keep float32 here and quantize afterwards with
``minist.quantization.quantize_embeddings(..., ranges=...)``.
Left out: GPU placement (pass ``num_gpus=1`` to ``map_batches`` and ``device="cuda"`` here), Ray Serve.
"""

from __future__ import annotations

from pathlib import Path

from minist.model import SentenceTransformer


class Embedder:
    """``Embedder(model)(batch)`` -> the batch with an ``embedding`` column; ``encode_kwargs`` go to ``encode``.

    ``model``: a name or folder (loaded here, once per Ray actor) or a loaded ``SentenceTransformer``.
    ``device`` is where a named model is loaded.

    >>> Embedder(model)({"id": numpy.array(["a", "b"]), "text": numpy.array(["A cat.", "A dog."])})["embedding"].shape
    ... # doctest: +SKIP
    (2, 384)
    """

    def __init__(self, model: str | Path | SentenceTransformer, text_column: str = "text",
                 embedding_column: str = "embedding", device: str | None = None, **encode_kwargs):
        try:
            import ray.data  # noqa: F401  (here only to say what to install)
        except ImportError as error:
            raise ImportError('minist.integrations.ray needs Ray Data: pip install "minist[ray]"') from error
        if (precision := encode_kwargs.get("precision")) in ("int8", "uint8"):  # before any batch, not at the last
            raise ValueError(f"precision={precision!r} takes its ranges from the texts encoded together, here one "
                             "batch, so each batch would get its own scale (and a batch of one row fails): keep "
                             "float32 here and quantize the whole corpus afterwards with minist.quantization."
                             f"quantize_embeddings(embeddings, {precision!r}, ranges=...).")
        self.model = model if isinstance(model, SentenceTransformer) else SentenceTransformer(model, device=device)
        self.text_column, self.embedding_column = text_column, embedding_column
        self.encode_kwargs = {"show_progress_bar": False} | encode_kwargs  # a bar per batch would flood the log

    def __call__(self, batch):
        """A dict of numpy arrays, a pandas DataFrame or a pyarrow Table, with ``(rows, dim)`` embeddings added as
        a column."""
        import pandas as pd
        import pyarrow as pa  # both come with Ray Data

        if not isinstance(batch, dict | pd.DataFrame | pa.Table):
            raise TypeError("Embedder takes a dict of numpy arrays, a pandas DataFrame or a pyarrow Table, not a "
                            f"{type(batch).__name__} (map_batches' batch_format 'numpy', 'pandas' or 'pyarrow').")
        columns = batch.column_names if isinstance(batch, pa.Table) else list(batch)  # a Table iterates its arrays
        if self.text_column not in columns:
            raise KeyError(f"The batch has no column {self.text_column!r} (it has {columns}); name the text "
                           "column with Embedder(..., text_column=...).")
        texts = batch[self.text_column]
        texts = texts.to_pylist() if isinstance(batch, pa.Table) else texts.tolist()  # -> a list of Python strings
        embeddings = self.model.encode(texts, **self.encode_kwargs)  # (rows, dim) numpy
        if isinstance(batch, dict):
            return batch | {self.embedding_column: embeddings}  # (rows, dim): Ray stores it as a tensor column
        if isinstance(batch, pa.Table):
            from ray.data.extensions import ArrowTensorArray  # the column type Ray makes of a (rows, dim) array

            column = ArrowTensorArray.from_numpy(embeddings)
            if self.embedding_column in columns:  # replaced in place, as in a dict or a DataFrame
                return batch.set_column(columns.index(self.embedding_column), self.embedding_column, column)
            return batch.append_column(self.embedding_column, column)
        batch = batch.copy()  # a pandas DataFrame: one array per row
        batch[self.embedding_column] = list(embeddings)
        return batch
