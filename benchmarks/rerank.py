"""Retrieve and rerank on the bikefix help desk, with minist and with sentence-transformers, in one run.

    .venv/bin/python benchmarks/rerank.py [--epochs 2] [--lr 2e-5] [--seed 42] [--stsb minist|both] [--json out.json]

1. Hard negatives: each library's ``mine_hard_negatives`` on its own all-MiniLM-L6-v2 finds, for each of the 120
   train questions, the answers (of the 40) that the bi-encoder ranks closest but are wrong; the rows, one
   (question, answer, label) per pair, must be the same.
2. STS-B: a cross-encoder on all-MiniLM-L6-v2's transformer with a new head, trained on STS-B train (scores / 5,
   BinaryCrossEntropyLoss, upstream's recipe, one epoch); its test Spearman beside the bi-encoder's cosine.
   Reads STS-B from data/stsb.
3. Two bikefix rerankers, each trained on the mined pairs with BinaryCrossEntropyLoss by both libraries'
   ``CrossEncoderTrainer``, same seed and arguments: from a new head on all-MiniLM-L6-v2 (seeded: the same head
   in both), and from minist's STS-B cross-encoder of step 2 (saved once, loaded by both).
4. The 40 test questions: the bi-encoder alone (cosine over all 40 answers) against its top 20 reranked:
   MRR@10 and NDCG@10 with a paired bootstrap interval of the gain, the first stage's recall@k (it caps what
   reranking can do), and what each stage costs per query on this CPU.
``--quick`` is a smoke run (its numbers mean nothing): 3 training steps each, fewer resamples and timings.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
import transformers
from datasets import Dataset
from scipy.stats import spearmanr
from sentence_transformers import cross_encoder as st_cross_encoder
from sentence_transformers.util import mine_hard_negatives as st_mine_hard_negatives
from stsb import read_stsb

import minist
from minist import cross_encoder
from minist.evaluation import retrieval_metrics
from minist.hub import resolve_model_folder
from minist.similarity import pairwise_cos_sim
from minist.util import mine_hard_negatives

DATA = Path(__file__).resolve().parents[1] / "data" / "bikefix"
LIBRARIES = {  # name -> (bi-encoder class, cross-encoder package, hard-negative miner)
    "minist": (minist.SentenceTransformer, cross_encoder, mine_hard_negatives),
    "sentence-transformers": (sentence_transformers.SentenceTransformer, st_cross_encoder, st_mine_hard_negatives)}
DEPTH, KS = 20, (1, 3, 5, 10, 20)  # the first stage's hits that the cross-encoder reranks; recall@k


def read_bikefix() -> tuple[list[str], list[str], dict[str, list[tuple[str, int]]]]:
    """Answer ids, answer texts, and per split the (question, index of its answer) pairs."""
    answers = [json.loads(line) for line in (DATA / "answers.jsonl").read_text().splitlines()]
    index = {a["id"]: i for i, a in enumerate(answers)}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "dev": [], "test": []}
    for line in (DATA / "questions.jsonl").read_text().splitlines():
        question = json.loads(line)
        splits[question["split"]].append((question["text"], index[question["answer"]]))
    return [a["id"] for a in answers], [a["text"] for a in answers], splits


def train(library: str, start: Path, dataset: Dataset, args, epochs: int, lr: float, new_head: bool):
    """``start`` trained with BinaryCrossEntropyLoss -> (model, seconds, steps). ``new_head``: a new, seeded
    one-number head on its transformer (the same draw in both libraries); else the folder's own head."""
    package = LIBRARIES[library][1]
    torch.manual_seed(args.seed)
    model = package.CrossEncoder(str(start), num_labels=1 if new_head else None, device="cpu")
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = package.CrossEncoderTrainingArguments(
            output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=args.batch_size,
            learning_rate=lr, warmup_ratio=0.1, seed=args.seed, save_strategy="no", report_to="none",
            disable_tqdm=True)
        trainer = package.CrossEncoderTrainer(model=model, args=training_args, train_dataset=dataset,
                                              loss=package.losses.BinaryCrossEntropyLoss(model))
        start_time = time.perf_counter()
        steps = trainer.train().global_step
        return model, time.perf_counter() - start_time, steps


def gold_ranks(ranked: list[list[int]], gold: list[int]) -> np.ndarray:
    """The 0-based rank of each query's one right answer in its list, or inf where the list lacks it."""
    return np.array([ranking.index(g) if g in ranking else np.inf for ranking, g in zip(ranked, gold, strict=True)])


def per_query(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """One relevant answer per query: MRR@10 = 1 / (rank + 1), NDCG@10 = 1 / log2(rank + 2), within the top 10."""
    top10 = ranks < 10
    metrics = {"mrr@10": np.where(top10, 1 / (ranks + 1), 0.0), "ndcg@10": np.where(top10, 1 / np.log2(ranks + 2), 0.0)}
    return metrics | {f"recall@{k}": (ranks < k).astype(float) for k in KS}


def bootstrap(gain: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """95% interval of the mean gain over queries, resampling the queries with replacement (paired)."""
    rng = np.random.default_rng(seed)
    means = gain[rng.integers(0, len(gain), size=(resamples, len(gain)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def median_ms(work: dict, count: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of each ``work[name](i)`` for i in range(count), ``repeats`` times, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(repeats):
        for i in range(count):
            for name, function in work.items():
                start = time.perf_counter()
                function(i)
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def stsb_spearman(scores, rows: list[tuple[str, str, float]]) -> float:
    """Spearman x100 of predicted scores against STS-B's gold scores."""
    return 100 * float(spearmanr(scores, [gold for *_, gold in rows]).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs on the mined bikefix pairs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5, help="learning rate on the mined bikefix pairs")
    parser.add_argument("--negatives", type=int, default=4, help="hard negatives mined per train question")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=3, help="timing passes over the 40 test questions")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--stsb", choices=["both", "minist"], default="minist",
                        help="which libraries train the STS-B cross-encoder (minist's is the second start)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.repeats, args.resamples = 1, 1, 1_000
    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" report, once per model
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    folder = resolve_model_folder("all-MiniLM-L6-v2")
    ids, answers, splits = read_bikefix()
    results: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "threads": torch.get_num_threads(), "training": {}}
    print(f"bikefix: {len(answers)} answers, train {len(splits['train'])} / test {len(splits['test'])} questions; "
          f"all-MiniLM-L6-v2, {torch.get_num_threads()} threads, seed {args.seed}")

    # 1. Hard negatives, each library with its own miner on its own bi-encoder.
    bi_encoders = {name: classes[0](str(folder), device="cpu") for name, classes in LIBRARIES.items()}
    pairs = Dataset.from_dict({"query": [q for q, _ in splits["train"]],
                               "answer": [answers[a] for _, a in splits["train"]]})
    mined = {name: LIBRARIES[name][2](pairs, model, corpus=answers, num_negatives=args.negatives, range_max=15,
                                      output_format="labeled-pair", verbose=False)
             for name, model in bi_encoders.items()}
    same_rows = mined["minist"].to_list() == mined["sentence-transformers"].to_list()
    dataset = mined["minist"].select(range(48)) if args.quick else mined["minist"]
    print(f"\nmined {len(dataset)} labeled pairs ({sum(dataset['label'])} positives); rows identical in both "
          f"libraries: {same_rows}")
    results["mining"] = {"rows": len(dataset), "positives": sum(dataset["label"]), "identical": same_rows}

    # 2. STS-B: a cross-encoder with a new head, beside the bi-encoder's cosine; minist's is kept as a start.
    stsb_train, stsb_test = read_stsb("train"), read_stsb("test")
    if args.quick:
        stsb_train, stsb_test = stsb_train[:48], stsb_test[:200]
    first, second, gold = map(list, zip(*stsb_train, strict=True))
    stsb_pairs = Dataset.from_dict({"sentence1": first, "sentence2": second, "score": [g / 5 for g in gold]})
    a, b = (bi_encoders["minist"].encode([row[i] for row in stsb_test], convert_to_tensor=True) for i in (0, 1))
    results["stsb"] = {"bi-encoder": stsb_spearman(pairwise_cos_sim(a, b).numpy(), stsb_test)}
    print(f"\nSTS-B test ({len(stsb_test)} pairs), Spearman x100: bi-encoder cosine "
          f"{results['stsb']['bi-encoder']:.2f}")
    workdir = tempfile.TemporaryDirectory()
    stsb_folder = Path(workdir.name) / "stsb-reranker"
    for name in LIBRARIES if args.stsb == "both" else ["minist"]:
        model, seconds, steps = train(name, folder, stsb_pairs, args, epochs=1, lr=2e-5, new_head=True)
        predicted = model.predict([(s1, s2) for s1, s2, _ in stsb_test], batch_size=64, show_progress_bar=False)
        results["stsb"][name] = {"spearman": stsb_spearman(predicted, stsb_test), "seconds": seconds, "steps": steps}
        print(f"  cross-encoder trained by {name}: {results['stsb'][name]['spearman']:.2f} ({steps} steps in "
              f"{seconds:.0f} s)")
        if name == "minist":
            model.save(stsb_folder)

    # 3. Two rerankers for bikefix, each trained by both libraries: from a new head (the recipe as it stands),
    # and from the STS-B cross-encoder above, which has already learnt to score a pair of texts.
    starts = {"new head": (folder, True), "STS-B + bikefix": (stsb_folder, False)}
    trained: dict[str, dict] = {}
    for recipe, (start, new_head) in starts.items():
        for name in LIBRARIES:
            model, seconds, steps = train(name, start, dataset, args, args.epochs, args.lr, new_head)
            trained.setdefault(recipe, {})[name] = model
            results["training"].setdefault(recipe, {})[name] = {"seconds": seconds, "steps": steps}
            print(f"bikefix reranker, {recipe}, trained by {name:>21}: {steps} steps in {seconds:.1f} s")

    # 4. The 40 test questions: first stage (each library's bi-encoder), then its top DEPTH reranked.
    questions, gold_answers = [q for q, _ in splits["test"]], [a for _, a in splits["test"]]
    first_stage = {}
    for name, model in bi_encoders.items():
        util = minist.util if name == "minist" else sentence_transformers.util
        corpus = model.encode(answers, convert_to_tensor=True)
        hits = util.semantic_search(model.encode(questions, convert_to_tensor=True), corpus, top_k=len(answers))
        first_stage[name] = [[hit["corpus_id"] for hit in query_hits] for query_hits in hits]
    same_hits = first_stage["minist"] == first_stage["sentence-transformers"]
    ranked = {"bi-encoder": first_stage["minist"]}
    test_pairs = [(q, answers[a]) for q, hits in zip(questions, ranked["bi-encoder"], strict=True)
                  for a in hits[:DEPTH]]
    rerankers = {"STS-B only, minist": cross_encoder.CrossEncoder(str(stsb_folder), device="cpu")} | {
        f"{recipe}, {name}": model for recipe, models in trained.items() for name, model in models.items()}
    scores = {label: model.predict(test_pairs, batch_size=64, show_progress_bar=False).reshape(len(questions), DEPTH)
              for label, model in rerankers.items()}
    for label, query_scores in scores.items():
        ranked[f"rerank: {label}"] = [[hits[i] for i in np.argsort(-row, kind="stable")]
                                      for hits, row in zip(ranked["bi-encoder"], query_scores, strict=True)]
    score_gaps = {recipe: float(np.abs(scores[f"{recipe}, minist"] - scores[f"{recipe}, sentence-transformers"]).max())
                  for recipe in starts}
    metrics = {stage: per_query(gold_ranks(lists, gold_answers)) for stage, lists in ranked.items()}
    for stage, lists in ranked.items():  # the hand-written metrics agree with minist.evaluation's
        reference = retrieval_metrics([[ids[i] for i in ranking[:DEPTH]] for ranking in lists],
                                      [{ids[g]} for g in gold_answers], [], KS, [10], [10], [])
        assert all(abs(reference[k] - v.mean()) < 1e-12 for k, v in metrics[stage].items()), stage
    print(f"\n40 test questions; first stage identical in both libraries: {same_hits}; largest |score difference| "
          f"between the two libraries' rerankers on the {len(test_pairs)} test pairs: "
          + ", ".join(f"{recipe} {gap:.1e}" for recipe, gap in score_gaps.items()))
    print(f"{'':>44} {'MRR@10':>7} {'NDCG@10':>7}   gain in MRR@10, NDCG@10 (95% bootstrap interval)")
    results["retrieval"], results["score_gap"] = {"first stage identical": same_hits}, score_gaps
    for stage, values in metrics.items():
        results["retrieval"][stage] = {k: float(v.mean()) for k, v in values.items()}
        line = f"{stage:>44} {values['mrr@10'].mean():7.3f} {values['ndcg@10'].mean():7.3f}"
        for metric in ("mrr@10", "ndcg@10") if stage != "bi-encoder" else ():
            gain = values[metric] - metrics["bi-encoder"][metric]  # paired: the same query on both sides
            low, high = bootstrap(gain, args.resamples, args.seed)
            results["retrieval"][stage][f"gain {metric}"] = {"mean": float(gain.mean()), "low": low, "high": high}
            line += f"   {gain.mean():+.3f} [{low:+.3f}, {high:+.3f}]"
        print(line)
    print(f"({args.resamples:,} resamples of the 40 questions); first stage recall@k: "
          + ", ".join(f"@{k} {metrics['bi-encoder'][f'recall@{k}'].mean():.3f}" for k in KS))

    # Cost per query on this CPU: encode one question and search the 40 answers; score its 20 pairs. The four
    # take turns on each question, so that a change in the machine's load falls on all of them alike.
    work = {}
    for name in LIBRARIES:
        model, util = bi_encoders[name], minist.util if name == "minist" else sentence_transformers.util
        corpus = model.encode(answers, convert_to_tensor=True)
        work[f"bi-encoder, {name}"] = lambda i, model=model, util=util, corpus=corpus: util.semantic_search(
            model.encode([questions[i]], convert_to_tensor=True), corpus, top_k=DEPTH)
        work[f"rerank 20, {name}"] = lambda i, model=trained["STS-B + bikefix"][name]: model.predict(
            test_pairs[i * DEPTH:(i + 1) * DEPTH], batch_size=32, show_progress_bar=False)
    costs = median_ms(work, len(questions), args.repeats)
    results["ms_per_query"] = costs
    print("ms per query (median): " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()))
    for recipe, times in results["training"].items():
        print(f"training time ratio sentence-transformers / minist, {recipe}: "
              f"{times['sentence-transformers']['seconds'] / times['minist']['seconds']:.2f}")
    print(f"rerank time ratio sentence-transformers / minist: "
          f"{costs['rerank 20, sentence-transformers'] / costs['rerank 20, minist']:.2f}")
    workdir.cleanup()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
