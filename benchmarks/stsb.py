"""The STS benchmark, read from the repository's data/stsb by minist's own loader (``minist.evaluation.load_stsb``)."""

from __future__ import annotations

from minist.evaluation import load_stsb


def read_stsb(split: str) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score from 0 to 5) for each pair of ``split`` ("train", "dev" or "test"); the scores
    equal the file's to the last bit or two (scaled to 0-1 and back), which changes no rank."""
    return [(a, b, score * 5) for a, b, score in zip(*load_stsb(split), strict=True)]


def main() -> None:
    """STS-B test Spearman x100 of one model through minist and through sentence-transformers, and how far
    apart their embeddings are:  .venv/bin/python benchmarks/stsb.py --model all-mpnet-base-v2"""
    import argparse

    import numpy as np
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer as STModel

    from minist import SentenceTransformer
    from minist.hub import resolve_model_folder
    from minist.similarity import pairwise_cos_sim

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    args = parser.parse_args()
    folder = resolve_model_folder(args.model)
    first, second, scores = map(list, zip(*read_stsb("test"), strict=True))
    sentences = list(dict.fromkeys(first + second))
    embeddings = {"minist": SentenceTransformer(folder, device="cpu").encode(sentences),
                  "sentence-transformers": STModel(str(folder), device="cpu").encode(sentences)}
    row = {s: i for i, s in enumerate(sentences)}
    print(f"{args.model} ({folder}): STS-B test, {len(scores)} pairs, {len(sentences)} distinct sentences")
    for name, vectors in embeddings.items():
        a, b = vectors[[row[s] for s in first]], vectors[[row[s] for s in second]]
        print(f"  {name:>21}: Spearman x100 {100 * spearmanr(pairwise_cos_sim(a, b).numpy(), scores).statistic:.2f}")
    difference = np.abs(embeddings["minist"] - embeddings["sentence-transformers"]).max()
    print(f"  largest absolute difference between the two libraries' embeddings: {difference:.1e}")


if __name__ == "__main__":
    main()
