"""The measured model guide: each real model at hand, side by side with sentence-transformers.

    .venv/bin/python benchmarks/models.py [--models all-MiniLM-L6-v2 all-mpnet-base-v2] [--repeats 3]

For each model, on this machine:
- quality: STS-B test Spearman x100 (all 1,379 pairs) for sentence-transformers and each minist path
  (float32, ``backend="onnx"``, ``quantize="int8"`` as this CPU runs it), and search on this project's data
  (MRR@10 and recall@10 of minist float32 and int8: the 35 queries over the 320 documents of
  data/corpus.jsonl, and the 40 bikefix test questions over its 40 answers);
- speed: texts/s on the first ``--spread`` texts of benchmarks/encode.py's spread corpus and on the first
  ``--stsb`` distinct STS-B test sentences, the paths interleaved, medians of ``--repeats``;
- load time and peak RSS (VmHWM) of a fresh process that loads the model and encodes 200 spread texts;
- the embedding's size: dimension, and bytes per text in float32, int8 and binary.
Reads STS-B from data/stsb. It prints one markdown table per measure, ready for
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time

import torch
from encode import DATA, batching, peak_rss_mb, spread_corpus, timed_encodes
from stsb import read_stsb

from minist.cpu import cpu_name, instruction_sets

PATHS = {"sentence-transformers": {}, "minist float32": {}, "minist onnx": {"backend": "onnx"},
         "minist int8": {"quantize": "int8"}}


def load(model: str, path: str):
    """``model`` through sentence-transformers or through minist with ``path``'s options."""
    if path == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        from minist.hub import resolve_model_folder

        return SentenceTransformer(str(resolve_model_folder(model)), device="cpu")
    from minist import SentenceTransformer

    return SentenceTransformer(model, device="cpu", **PATHS[path])


def child(model: str, path: str) -> None:
    """In a fresh process: import and load (timed), encode 200 spread texts, print load time and peak RSS."""
    start = time.perf_counter()
    loaded = load(model, path)
    seconds = time.perf_counter() - start
    loaded.encode(spread_corpus()[:200], **batching(path, 32))
    print(json.dumps({"load_s": seconds, "peak_rss_mb": peak_rss_mb()}))


def search_sets() -> dict[str, tuple[dict, dict, dict]]:
    """(queries, corpus, relevant) for the two retrieval sets in data/."""
    read = lambda name: [json.loads(line) for line in (DATA / name).read_text().splitlines()]  # noqa: E731
    queries = read("queries.jsonl")
    questions = [q for q in read("bikefix/questions.jsonl") if q["split"] == "test"]
    return {
        "corpus (35 queries)": ({q["id"]: q["query"] for q in queries},
                                {d["id"]: d["text"] for d in read("corpus.jsonl")},
                                {q["id"]: set(q["relevant"]) for q in queries}),
        "bikefix (40 questions)": ({q["id"]: q["text"] for q in questions},
                                   {a["id"]: a["text"] for a in read("bikefix/answers.jsonl")},
                                   {q["id"]: {q["answer"]} for q in questions}),
    }


def stsb_spearman(model, name: str, pairs: list[tuple[str, str, float]]) -> float:
    from scipy.stats import spearmanr

    from minist.similarity import pairwise_cos_sim

    first, second, scores = map(list, zip(*pairs, strict=True))
    a, b = (model.encode(part, **batching(name, 32)) for part in (first, second))
    return 100 * spearmanr(pairwise_cos_sim(a, b).numpy(), scores).statistic


def measure(model_name: str, args) -> dict:
    from minist.evaluation import InformationRetrievalEvaluator

    models = {path: load(model_name, path) for path in PATHS}
    runs = {path: (f"{m.quantize or 'float32'} on {m.backend}" if path.startswith("minist") else "")
            for path, m in models.items()}
    for name, model in models.items():  # warm-up
        model.encode(["warm up"] * 32, **batching(name, 32))
    pairs = read_stsb("test")
    stsb_sentences = list(dict.fromkeys(s for a, b, _ in pairs for s in (a, b)))
    rates = {}
    for corpus_name, corpus in {"spread": spread_corpus()[: args.spread], "stsb": stsb_sentences[: args.stsb]}.items():
        rates[corpus_name], _ = timed_encodes(models, corpus, args.repeats, 32)
    spearman = {name: stsb_spearman(model, name, pairs) for name, model in models.items()}
    search = {}
    for set_name, (queries, corpus, relevant) in search_sets().items():
        evaluator = InformationRetrievalEvaluator(queries, corpus, relevant, mrr_at_k=[10], accuracy_at_k=[1],
                                                  precision_recall_at_k=[10], ndcg_at_k=[10], map_at_k=[10])
        for path in ("minist float32", "minist int8"):
            metrics = evaluator(models[path])
            search[set_name, path] = (metrics["cosine_mrr@10"], metrics["cosine_recall@10"])
    fresh = {}
    for path in PATHS:
        results = [json.loads(subprocess.run([sys.executable, __file__, "--child", path, "--models", model_name],
                                             capture_output=True, text=True, check=True).stdout.splitlines()[-1])
                   for _ in range(args.repeats)]
        fresh[path] = tuple(statistics.median(r[key] for r in results) for key in ("load_s", "peak_rss_mb"))
    dimension = models["minist float32"].get_sentence_embedding_dimension()
    return {"runs": runs, "rates": rates, "spearman": spearman, "search": search, "fresh": fresh,
            "dimension": dimension}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["all-MiniLM-L6-v2", "all-mpnet-base-v2"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spread", type=int, default=300, help="spread texts timed")
    parser.add_argument("--stsb", type=int, default=600, help="STS-B sentences timed")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("minist").setLevel(logging.ERROR)  # the spread texts past 256 tokens are cut on purpose
    if args.child:
        return child(args.models[0], args.child)

    present = [name for name, has in instruction_sets().items() if has]
    print(f"CPU: {cpu_name()} ({', '.join(present) or 'no AVX2'}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; speed: medians of {args.repeats} interleaved runs\n")
    results = {}
    for model_name in args.models:
        start = time.perf_counter()
        results[model_name] = measure(model_name, args)
        print(f"measured {model_name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)

    print("| model | path | runs | STS-B Spearman x100 | texts/s, spread | texts/s, STS-B | load | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for model_name, r in results.items():
        for path in PATHS:
            load_s, rss = r["fresh"][path]
            rates = f"{r['rates']['spread'][path]:.1f} | {r['rates']['stsb'][path]:.1f}"
            print(f"| {model_name} | {path} | {r['runs'][path]} | {r['spearman'][path]:.2f} | {rates} | "
                  f"{load_s:.1f} s | {rss:.0f} MB |")

    print("\n| model | search set | MRR@10 float32 | recall@10 float32 | MRR@10 int8 | recall@10 int8 |")
    print("|---|---|---|---|---|---|")
    for model_name, r in results.items():
        for set_name in search_sets():
            mrr, recall = r["search"][set_name, "minist float32"]
            mrr8, recall8 = r["search"][set_name, "minist int8"]
            print(f"| {model_name} | {set_name} | {mrr:.3f} | {recall:.3f} | {mrr8:.3f} | {recall8:.3f} |")

    print("\n| model | dimension | bytes per text: float32 | int8 | binary |")
    print("|---|---|---|---|---|")
    for model_name, r in results.items():
        d = r["dimension"]
        print(f"| {model_name} | {d} | {4 * d:,} | {d:,} | {d // 8} |")

    if len(results) > 1:
        (small, a), (large, b) = list(results.items())[:2]
        for corpus in ("spread", "stsb"):
            ratio = a["rates"][corpus]["minist float32"] / b["rates"][corpus]["minist float32"]
            print(f"\n{small} is {ratio:.1f}x as fast as {large} on {corpus} texts (minist float32)", end="")
        print()


if __name__ == "__main__":
    main()
