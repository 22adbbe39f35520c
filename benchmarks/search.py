"""Search at scale: exact search timed against sentence-transformers, ANN and quantized recall, memory.

    .venv/bin/python benchmarks/search.py [--corpus-size 100000] [--queries 1000] [--repeats 3]

Vectors: all-MiniLM-L6-v2 embeddings of the distinct STS benchmark sentences (data/stsb, in
this repository), 1,000 of them held out as queries; the corpus is the rest, grown to --corpus-size with
blends of two real embeddings (0.7 a + 0.3 b, plus a little noise, renormalized), so that it keeps the
clustered shape of real embeddings. Exact float32 search is the reference for every recall@10.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from sentence_transformers import util as st_util
from stsb import read_stsb

from minist import SentenceTransformer
from minist.ann import VectorIndex, recall_at_k
from minist.search import semantic_search


def sts_sentences() -> list[str]:
    """Every distinct sentence of the three STS-B splits."""
    return list(dict.fromkeys(s for split in ("train", "dev", "test") for a, b, _ in read_stsb(split) for s in (a, b)))


def canonical(hits: list[list[dict]]) -> list[list[tuple]]:
    """Hits as (score to 5 decimals, id), sorted: distinct texts with identical embeddings tie in any order."""
    return [sorted((-round(h["score"], 5), h["corpus_id"]) for h in row) for row in hits]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus-size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    sentences = sts_sentences()
    rng.shuffle(sentences)
    model = SentenceTransformer("all-MiniLM-L6-v2", device="cpu")
    embeddings, seconds = timed(lambda: model.encode(sentences, batch_size=64))
    print(f"encoded {len(sentences)} STS-B sentences in {seconds:.0f} s")
    queries, real = embeddings[: args.queries], embeddings[args.queries:]
    a, b = rng.integers(0, len(real), (2, args.corpus_size - len(real)))
    blends = 0.7 * real[a] + 0.3 * real[b] + 0.02 * rng.normal(size=(len(a), real.shape[1]))
    corpus = np.vstack([real, blends / np.linalg.norm(blends, axis=1, keepdims=True)]).astype(np.float32)
    print(f"corpus {corpus.shape}, queries {queries.shape}, top_k 10, {torch.get_num_threads()} threads\n")

    # Exact search: minist and sentence-transformers, interleaved, same inputs.
    q, c = torch.from_numpy(queries), torch.from_numpy(corpus)
    times = {"minist": [], "sentence-transformers": []}
    for _ in range(args.repeats):
        exact, t = timed(lambda: semantic_search(q, c, top_k=10))
        times["minist"].append(t)
        theirs, t = timed(lambda: st_util.semantic_search(q, c, top_k=10))
        times["sentence-transformers"].append(t)
    same = canonical(exact) == canonical(theirs)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"exact search, {name:>21}: {median:6.2f} s (median of {args.repeats})")
    print(f"speed ratio minist / sentence-transformers: {medians['sentence-transformers'] / medians['minist']:.2f}"
          f" (same hits, up to the order of exact ties: {same})\n")

    full = corpus.nbytes
    print(f"{'index':<28} {'recall@10':>9} {'memory':>9} {'vs f32':>7} {'build s':>8} {'search s':>9}")
    for precision, method, multiplier in [("float32", "exact", 1), ("float32", "hnsw", 1), ("int8", "exact", 4),
                                          ("int8", "hnsw", 4), ("binary", "exact", 4), ("binary", "exact", 10),
                                          ("binary", "hnsw", 10)]:
        index, build = timed(lambda p=precision, m=method: VectorIndex(corpus, precision=p, method=m))
        hits, search = timed(lambda i=index, r=multiplier: i.search(queries, top_k=10, rescore_multiplier=r))
        vectors = index.vectors.nbytes
        label = f"{precision} {method}" + (f", rescore x{multiplier}" if precision != "float32" else "")
        print(f"{label:<28} {recall_at_k(hits, exact):9.3f} {vectors / 2**20:7.1f}MB {full / vectors:6.0f}x "
              f"{build:8.1f} {search:9.2f}")
    print("\nmemory = the stored vectors (an HNSW graph adds its links on top).")


if __name__ == "__main__":
    main()
