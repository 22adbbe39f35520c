"""Encode speed and quality, minist beside sentence-transformers, same model and corpus, one process.

    .venv/bin/python benchmarks/encode.py [--repeats 3] [--batch-size 32]

Corpus: the STS benchmark sentences from ../shared/data/stsb (reference data, not in this repository).
The two libraries run interleaved (minist, sentence-transformers, minist, ...) and the medians are
compared, since absolute times drift by 10-20% from run to run on shared machines. It also prints the
largest difference between the two libraries' embeddings and the STS-B test Spearman of each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer as STModel
from stsb import read_stsb

from minist import SentenceTransformer
from minist.hub import resolve_model_folder


def spearman(model, scores, first, second) -> float:
    a, b = model.encode(first, convert_to_tensor=True), model.encode(second, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(a, b).cpu().numpy()
    return 100 * spearmanr(cosine, scores).statistic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    folder = resolve_model_folder(args.model)
    models = {"minist": SentenceTransformer(folder, device="cpu"), "sentence-transformers": STModel(str(folder),
                                                                                                    device="cpu")}
    first, second, scores = map(list, zip(*read_stsb("test"), strict=True))
    corpus = list(dict.fromkeys(first + second))
    print(f"model {args.model}, {len(corpus)} sentences, batch {args.batch_size}, {torch.get_num_threads()} threads")

    for model in models.values():  # warm-up
        model.encode(corpus[:64], batch_size=args.batch_size)
    seconds = {name: [] for name in models}
    outputs = {}
    for _ in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            outputs[name] = model.encode(corpus, batch_size=args.batch_size)
            seconds[name].append(time.perf_counter() - start)

    rate = {name: len(corpus) / statistics.median(s) for name, s in seconds.items()}
    for name in models:
        print(f"{name:>22}: {rate[name]:7.1f} sentences/s (median of {args.repeats}), "
              f"STS-B test Spearman x100 {spearman(models[name], scores, first, second):.2f}")
    print(f"speed ratio minist / sentence-transformers: {rate['minist'] / rate['sentence-transformers']:.2f}")
    diff = np.abs(outputs["minist"] - outputs["sentence-transformers"]).max()
    print(f"max abs difference between the embeddings: {diff:.2e}")


if __name__ == "__main__":
    main()
