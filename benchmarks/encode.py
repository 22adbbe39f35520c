"""Encode speed, memory and quality: minist beside sentence-transformers, same model, same corpora.

    .venv/bin/python benchmarks/encode.py [--repeats 3] [--batch-size 32]

Corpora: (a) "spread": 3,000 texts built from data/corpus.jsonl and STS-B sentences, seeded: 55% one
sentence, 30% two to six, 15% fifteen to thirty (past 256 tokens, so truncated); (b) "stsb": the 2,552
distinct sentences of the STS-B test split. Needs ../shared/data/stsb (not in this repository).

- Speed: the two libraries run interleaved in this process (minist, sentence-transformers, minist, ...)
  and the medians are compared, since absolute times drift by 10-20% between runs on shared machines.
- Memory and load time: each library loads and encodes corpus (a) in a fresh process of its own; the
  peak resident set size (ru_maxrss) of that process is reported.
- The physical bound: the FLOPs of corpus (a) at its real token counts over this machine's measured fp32
  matrix-product rate, and the share of it that minist reaches.
- Linearity: minist's time for 1,000 and 10,000 STS-B sentences.
Also the largest difference between the libraries' embeddings and the STS-B test Spearman of each.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from stsb import read_stsb

DATA = Path(__file__).resolve().parents[1] / "data"


def library(name: str):
    """The SentenceTransformer class of ``name``, imported only when asked (the memory children import one)."""
    if name == "minist":
        from minist import SentenceTransformer
    else:
        from sentence_transformers import SentenceTransformer
    return SentenceTransformer


LIBRARIES = ("minist", "sentence-transformers")


def spread_corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """Texts from a few words to past 256 tokens, from our corpus and STS-B sentences."""
    rng = random.Random(seed)
    sentences = [json.loads(line)["text"] for line in (DATA / "corpus.jsonl").read_text().splitlines()]
    sentences += [s for a, b, _ in read_stsb("train") for s in (a, b)]
    sizes = rng.choices([(1, 1), (2, 6), (15, 30)], weights=[55, 30, 15], k=n)
    return [" ".join(rng.sample(sentences, rng.randint(*size))) for size in sizes]


def corpora() -> dict[str, list[str]]:
    stsb = list(dict.fromkeys(s for a, b, _ in read_stsb("test") for s in (a, b)))
    return {"(a) spread": spread_corpus(), "(b) stsb": stsb}


def child(name: str, folder: str, batch_size: int) -> None:
    """In a fresh process: load, encode corpus (a), print load time and peak memory as JSON."""
    start = time.perf_counter()
    model = library(name)(folder, device="cpu")  # the import is part of loading, as in a fresh session
    load = time.perf_counter() - start
    model.encode(spread_corpus(), batch_size=batch_size)
    print(json.dumps({"load_s": load, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def matmul_gflops(repeats: int = 20) -> float:
    """fp32 matrix-product rate of this machine at MiniLM's shapes (4,096 tokens x 384 -> 1,536)."""
    a, b = torch.randn(4096, 384), torch.randn(384, 1536)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 4096 * 384 * 1536 / statistics.median(times) / 1e9


def corpus_gflop(model, texts: list[str]) -> float:
    """FLOPs of the transformer on ``texts`` at their real (truncated, unpadded) token counts."""
    config = model[0].auto_model.config
    h, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = np.array([len(ids) for ids in model[0].tokenize(texts, padding=False)["input_ids"]])
    linear = 2 * lengths * (4 * h * h + 2 * h * inner)  # Q, K, V, output projections and the feed-forward
    attention = 2 * 2 * lengths**2 * h  # scores (L x L x h) and weighted sum (L x L x h)
    return float(layers * (linear + attention).sum() / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child", choices=LIBRARIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from minist.hub import resolve_model_folder

    folder = str(resolve_model_folder(args.model))
    if args.child:
        return child(args.child, folder, args.batch_size)

    from scipy.stats import spearmanr

    models = {name: library(name)(folder, device="cpu") for name in LIBRARIES}
    print(f"model {args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}\n")
    for model in models.values():  # warm-up
        model.encode(["warm up"] * 64, batch_size=args.batch_size)
    rates = {}
    for corpus_name, corpus in corpora().items():
        seconds, outputs = {name: [] for name in models}, {}
        for _ in range(args.repeats):
            for name, model in models.items():
                start = time.perf_counter()
                outputs[name] = model.encode(corpus, batch_size=args.batch_size)
                seconds[name].append(time.perf_counter() - start)
        rates[corpus_name] = {name: len(corpus) / statistics.median(s) for name, s in seconds.items()}
        r = rates[corpus_name]
        diff = np.abs(outputs["minist"] - outputs["sentence-transformers"]).max()
        print(f"{corpus_name}: {len(corpus)} texts | minist {r['minist']:.1f}/s, sentence-transformers "
              f"{r['sentence-transformers']:.1f}/s (medians of {args.repeats}) | ratio "
              f"{r['minist'] / r['sentence-transformers']:.2f} | max abs diff {diff:.1e}")

    first, second, scores = map(list, zip(*read_stsb("test"), strict=True))
    for name, model in models.items():
        a, b = model.encode(first, convert_to_tensor=True), model.encode(second, convert_to_tensor=True)
        cosine = torch.nn.functional.cosine_similarity(a, b).numpy()
        print(f"STS-B test Spearman x100, {name}: {100 * spearmanr(cosine, scores).statistic:.2f}")

    print()
    for name in LIBRARIES:  # one fresh process each
        run = subprocess.run([sys.executable, __file__, "--child", name, "--model", args.model, "--batch-size",
                              str(args.batch_size)], capture_output=True, text=True, check=True)
        result = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{name:>22}: load {result['load_s']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB "
              "(load + encode corpus (a), own process)")

    spread, gflops = corpora()["(a) spread"], matmul_gflops()
    gflop = corpus_gflop(models["minist"], spread)
    bound = len(spread) / (gflop / gflops)
    print(f"\nphysical bound on (a): {gflop:.0f} GFLOP at real token counts / {gflops:.0f} GFLOP/s measured "
          f"= {bound:.1f} texts/s; minist reaches {rates['(a) spread']['minist'] / bound:.0%} of it")

    sentences = list(dict.fromkeys(s for split in ("train", "dev") for a, b, _ in read_stsb(split) for s in (a, b)))
    random.Random(0).shuffle(sentences)  # 1,000 and 10,000 drawn alike
    timings = {}
    for n in (1000, 10000):
        start = time.perf_counter()
        models["minist"].encode(sentences[:n], batch_size=args.batch_size)
        timings[n] = time.perf_counter() - start
    print(f"linearity: 1,000 sentences {timings[1000]:.1f} s, 10,000 {timings[10000]:.1f} s "
          f"(ratio {timings[10000] / timings[1000]:.1f}; linear is 10)")


if __name__ == "__main__":
    main()
