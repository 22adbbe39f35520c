"""Chroma beside VectorIndex: ingest rate, query latency, recall@10 against exact search, disk per vector.

    .venv/bin/python benchmarks/vector_db.py [--sizes 10000 100000] [--embed-size 10000] [--latency-queries 500]

Texts: the distinct STS benchmark sentences (data/stsb, in this repository), 1,000 held out as
queries. Ingest with the model ("texts/s embedded and written") runs at --embed-size real texts: minist's
``sync`` into an embedded Chroma (a folder) and into a ``ChromaServer``, beside minist's own path (encode, then
build a ``VectorIndex``). The rest runs on precomputed vectors, so the model's time stays out of it: the corpus
is grown to the largest size with blends of two real embeddings as in search.py (each blend's document is its
first parent's text), written in batches of Chroma's ``max_batch_size``; single queries, top 10, each timed on
every store in turn; recall@10 of the 1,000 queries against exact float32 search; the Chroma folder's size after
its client or server has closed. Chroma keeps its defaults (cosine space, HNSW M 16, ef_construction 100,
ef_search 100); VectorIndex's HNSW is usearch's (connectivity 16, expansion 128 to add and to search).
Left out: metadata filters, updates and deletes, concurrent clients, Chroma's other index (SPANN).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import tempfile
import time
from contextlib import closing
from functools import partial
from importlib.metadata import version
from pathlib import Path

import numpy as np
from chromadb.api.shared_system_client import SharedSystemClient
from search import sts_sentences, timed

from minist import SentenceTransformer
from minist.ann import VectorIndex, recall_at_k
from minist.integrations.chroma import ChromaServer, MinistEmbeddingFunction, connect, open_collection, search, sync

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


class TimedFunction(MinistEmbeddingFunction):
    """minist's embedding function, adding up the seconds spent in the model (to split ``sync`` into its parts)."""

    seconds = 0.0

    def __call__(self, input):
        start = time.perf_counter()
        try:
            return super().__call__(input)
        finally:
            self.seconds += time.perf_counter() - start


def cpu() -> str:
    """lscpu's model name, and which of FLAGS the CPU has and lacks."""
    fields = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    has, lacks = [f for f in FLAGS if f in flags], [f for f in FLAGS if f not in flags]
    return (f"{fields.get('Model name', '?').strip()}, {os.cpu_count()} cores; has {', '.join(has) or '-'}; "
            f"lacks {', '.join(lacks) or '-'}")


def disk(folder: Path) -> tuple[int, int, int]:
    """Bytes in the folder; of them, in the HNSW segment files, and in SQLite pages left free (by the write log)."""
    sizes = {f: f.stat().st_size for f in folder.rglob("*") if f.is_file()}
    with closing(sqlite3.connect(folder / "chroma.sqlite3")) as db:
        free = db.execute("PRAGMA freelist_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    return sum(sizes.values()), sum(s for f, s in sizes.items() if not f.name.startswith("chroma.sqlite3")), free


def percentiles(seconds: list[float]) -> str:
    p50, p95 = np.percentile(np.array(seconds) * 1000, [50, 95])
    return f"{p50:.2f} / {p95:.2f}"


def write(collection, vectors: np.ndarray, documents: list[str]) -> float:
    """Upsert precomputed vectors (ids "0", "1", ...) in Chroma's largest batches; returns vectors per second."""
    step = collection._client.get_max_batch_size()
    start = time.perf_counter()
    for at in range(0, len(vectors), step):
        collection.upsert(ids=[str(i) for i in range(at, at + len(vectors[at:at + step]))],
                          embeddings=vectors[at:at + step], documents=documents[at:at + step])
    return len(vectors) / (time.perf_counter() - start)


def chroma_hits(collection, queries: np.ndarray) -> list[list[dict]]:
    found = collection.query(query_embeddings=queries, n_results=10, include=[])
    return [[{"corpus_id": int(i)} for i in row] for row in found["ids"]]


def ingest_with_model(model, function: TimedFunction, texts: list[str], root: Path) -> np.ndarray:
    """Print texts/s embedded and written: minist's encode + VectorIndex, and sync into Chroma, both ways."""
    print(f"\n| {len(texts):,} STS-B texts, embedded and written | texts/s | seconds | model s | writing s |")
    print("|---|---|---|---|---|")
    model.encode_document(texts[:256])  # warm up: the first call pays one-off costs
    vectors, encode = timed(lambda: model.encode_document(texts, normalize_embeddings=True))
    rates = {}
    for method in ("exact", "hnsw"):
        _, build = timed(lambda m=method: VectorIndex(vectors, method=m))
        rates[method] = len(texts) / (encode + build)
        print(f"| minist: encode + VectorIndex {method} | {rates[method]:.0f} | {encode + build:.1f} | {encode:.1f} "
              f"| {build:.2f} |")
    server = ChromaServer(root / "sync-server")
    try:
        for where, client in (("embedded", connect(root / "sync-embedded")), ("server", server.client())):
            collection = open_collection(client, "sync", function)
            function.seconds = 0.0
            _, seconds = timed(lambda c=collection: sync(c, function, texts, ids=[str(i) for i in range(len(texts))]))
            rates[where] = len(texts) / seconds
            print(f"| Chroma {where}: `sync` | {rates[where]:.0f} | {seconds:.1f} | {function.seconds:.1f} "
                  f"| {seconds - function.seconds:.1f} |")
    finally:
        server.stop()
    print(f"texts/s against minist's encode + VectorIndex hnsw: Chroma embedded "
          f"{rates['embedded'] / rates['hnsw']:.2f}x, server {rates['server'] / rates['hnsw']:.2f}x")
    return vectors


def at_size(corpus, documents, queries, query_texts, function, n, latency_queries, root: Path) -> None:
    """Write n precomputed vectors into each store; print writes/s, query latency, recall@10, disk per vector."""
    vectors, folders = corpus[:n], {"embedded": root / f"embedded-{n}", "server": root / f"server-{n}"}
    exact = VectorIndex(vectors).search(queries, top_k=10)  # the reference for recall@10
    server = ChromaServer(folders["server"])
    try:
        rows, stores, collections = {}, {}, {}
        for where, client in (("embedded", connect(folders["embedded"])), ("server", server.client())):
            collections[where] = open_collection(client, f"size-{n}", function)
            rate = write(collections[where], vectors, documents[:n])
            rows[f"Chroma, {where}"] = {"write": rate, "recall": recall_at_k(chroma_hits(collections[where], queries),
                                                                              exact)}
            # Chroma's default include (ids, distances, documents, metadatas): what `search` asks for
            stores[f"Chroma, {where}"] = lambda q, c=collections[where]: c.query(query_embeddings=q, n_results=10)
        for method in ("exact", "hnsw"):
            index, seconds = timed(lambda m=method: VectorIndex(vectors, method=m))
            rows[f"VectorIndex, {method}"] = {"write": n / seconds, "recall": recall_at_k(index.search(queries, 10),
                                                                                          exact)}
            stores[f"VectorIndex, {method}"] = lambda q, i=index: i.search(q, top_k=10)
        for where, collection in collections.items():  # text in, hits out: the model and the query together
            stores[f"`search` (text in), Chroma {where}"] = lambda t, c=collection: search(c, function, t, top_k=10)
        stores["model alone: `encode_query`, one text"] = lambda t: function.embed_query([t])
        latency = {name: [] for name in stores}
        for i in range(-5, latency_queries):  # 5 warm-up queries, then each query on every store in turn
            for name, run in stores.items():
                text_in = not name.startswith(("Chroma, ", "VectorIndex"))
                _, seconds = timed(partial(run, query_texts[i] if text_in else queries[[i]]))  # a text or (1, dim)
                if i >= 0:
                    latency[name].append(seconds)
    finally:
        server.stop()
    SharedSystemClient.clear_system_cache()  # the embedded client lets go of its files before they are measured
    for where, folder in folders.items():
        total, hnsw, free = disk(folder)
        rows[f"Chroma, {where}"]["disk"] = f"{total / n:,.0f} (HNSW {hnsw / n:,.0f}; free SQLite pages {free / n:,.0f})"
    print(f"\n| {n:,} vectors | written/s | query ms p50 / p95 | recall@10 | disk bytes/vector |")
    print("|---|---|---|---|---|")
    for name in latency:
        row = rows.get(name, {})
        write_rate = f"{row['write']:,.0f}" if "write" in row else ""
        recall = f"{row['recall']:.3f}" if "recall" in row else ""
        print(f"| {name} | {write_rate} | {percentiles(latency[name])} | {recall} | {row.get('disk', '')} |")
    p50 = {name: statistics.median(seconds) for name, seconds in latency.items()}
    chroma, hnsw = rows["Chroma, embedded"], rows["VectorIndex, hnsw"]
    print(f"(raw float32: {4 * corpus.shape[1]:,} bytes/vector; VectorIndex keeps its vectors in memory, not on disk)\n"
          f"p50 Chroma embedded / VectorIndex hnsw: {p50['Chroma, embedded'] / p50['VectorIndex, hnsw']:.1f}x; "
          f"the server adds {1000 * (p50['Chroma, server'] - p50['Chroma, embedded']):.2f} ms a query; "
          f"written/s Chroma embedded / VectorIndex hnsw: {chroma['write'] / hnsw['write']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--embed-size", type=int, default=10_000, help="texts embedded and written (0: skip)")
    parser.add_argument("--queries", type=int, default=1000, help="held out; all of them for recall@10")
    parser.add_argument("--latency-queries", type=int, default=500, help="timed one at a time")
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"CPU: {cpu()}; load average {os.getloadavg()[0]:.1f} at the start")
    print(f"chromadb {version('chromadb')}, usearch {version('usearch')}, torch {version('torch')}")

    rng = np.random.default_rng(0)
    sentences = sts_sentences()
    rng.shuffle(sentences)
    query_texts, texts = sentences[: args.queries], sentences[args.queries:]
    if args.embed_size > len(texts):
        raise SystemExit(f"--embed-size {args.embed_size} is more than the {len(texts)} real texts.")
    model = SentenceTransformer("all-MiniLM-L6-v2", device="cpu")
    function = TimedFunction(model)
    with tempfile.TemporaryDirectory(prefix="vector_db-") as root:
        first = ingest_with_model(model, function, texts[: args.embed_size], Path(root)) if args.embed_size else None
        rest = model.encode_document(texts[args.embed_size:] if args.embed_size else texts, normalize_embeddings=True)
        real = rest if first is None else np.vstack([first, rest])
        queries = model.encode_query(query_texts, normalize_embeddings=True)
        a, b = rng.integers(0, len(real), (2, max(0, max(args.sizes) - len(real))))
        blends = 0.7 * real[a] + 0.3 * real[b] + 0.02 * rng.normal(size=(len(a), real.shape[1]))
        corpus = np.vstack([real, blends / np.linalg.norm(blends, axis=1, keepdims=True)]).astype(np.float32)
        documents = texts + [texts[i] for i in a]
        for n in args.sizes:
            at_size(corpus, documents, queries, query_texts, function, n, args.latency_queries, Path(root) / str(n))
    print(f"\nqueries {queries.shape}, top 10; load average {os.getloadavg()[0]:.1f} at the end; "
          f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
