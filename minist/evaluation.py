"""Evaluators: score a model on held-out data, alone or during ``fit``; the results equal sentence-transformers'.

- ``EmbeddingSimilarityEvaluator``: pairs of texts with human similarity scores; how well do the model's
  similarities rank the pairs like the humans did? Pearson (linear) and Spearman (rank) correlation.
- ``InformationRetrievalEvaluator``: queries, a corpus and the relevant documents of each query; how high
  do the relevant documents rank? accuracy@k, precision@k, recall@k, MRR@k, NDCG@k and MAP@k.

Calling an evaluator returns a dict of metrics named as in sentence-transformers (``spearman_cosine``,
``cosine_ndcg@10``; prefixed with ``name_`` when a name is given), and sets ``primary_metric``.
Data that cannot give a score (no pairs, one pair, NaN or constant gold scores, no query with a relevant
document in the corpus) is refused when the evaluator is built, naming what is wrong, rather than scored NaN.
``load_stsb(split)`` reads the STS benchmark this repository carries in ``data/stsb/`` (its licence there), in the
shape ``EmbeddingSimilarityEvaluator`` takes. Left out: prompts, quantized precisions, the other evaluators.
"""

from __future__ import annotations

import csv
import math
import numbers
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import Tensor

from minist.inputs import check_count
from minist.similarity import PAIRWISE_FUNCTIONS


class Evaluator:
    """Shared by both evaluators: the name prefix and the optional CSV log."""

    name: str
    csv_file: str
    primary_metric: str

    def _finish(self, metrics: dict[str, float], primary: str, output_path, epoch: int, steps: int,
                csv_columns: dict[str, float] | None = None) -> dict:
        """Prefix the metrics, set ``primary_metric``, append a CSV row: ``csv_columns`` (header -> value) where
        sentence-transformers writes other columns than the metrics (the cross-encoder evaluators)."""
        prefix = f"{self.name}_" if self.name else ""
        metrics = {f"{prefix}{key}": float(value) for key, value in metrics.items()}
        self.primary_metric = prefix + primary
        if output_path is not None and self.write_csv:
            path = Path(output_path) / self.csv_file
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.is_file()
            with open(path, "a", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                columns = metrics if csv_columns is None else csv_columns
                if new:
                    writer.writerow(["epoch", "steps", *columns])
                writer.writerow([epoch, steps, *columns.values()])
        return metrics


def check_texts(name: str, texts) -> None:
    """Refuse anything but a list of strings (a single string would be read as a list of characters)."""
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a list of strings, not str.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] is {text!r:.40}, not a string.")


def check_pairs(sentences1: list[str], sentences2: list[str], scores: list[float],
                evaluator: str = "EmbeddingSimilarityEvaluator") -> None:
    """Refuse pairs whose correlation with the gold scores cannot be computed, naming why."""
    check_texts("sentences1", sentences1)
    check_texts("sentences2", sentences2)
    if not len(sentences1) == len(sentences2) == len(scores):
        raise ValueError(f"sentences1, sentences2 and scores differ in length: "
                         f"{len(sentences1)}, {len(sentences2)}, {len(scores)}.")
    if len(scores) < 2:
        raise ValueError(f"{evaluator} needs at least 2 pairs, got {len(scores)}: "
                         "a correlation of fewer is undefined.")
    for i, score in enumerate(scores):
        if not isinstance(score, numbers.Real) or not math.isfinite(score):
            raise ValueError(f"scores[{i}] is {score!r:.40}; every gold score must be a finite number.")
    if len(set(scores)) == 1:
        raise ValueError(f"Every gold score is {scores[0]}: a correlation with constant scores is undefined.")


STSB = Path(__file__).resolve().parents[1] / "data" / "stsb"


def load_stsb(split: str = "test", folder: str | Path = STSB) -> tuple[list[str], list[str], list[float]]:
    """The STS benchmark's ``split`` ("train" 5,749 pairs, "dev" 1,500, "test" 1,379) as ``(sentences1,
    sentences2, scores)``, the human scores scaled from 0-5 to 0-1 as in the Hub's ``sentence-transformers/stsb``.

    ``folder`` holds ``stsb-en-{split}.tsv`` (a header ``score sentence1 sentence2``, tab-separated, no quoting);
    by default the ``data/stsb`` folder of the clone minist is installed from.

    >>> sentences1, sentences2, scores = load_stsb("test")
    >>> len(scores), sentences1[0], sentences2[0], scores[0]
    (1379, 'A girl is styling her hair.', 'A girl is brushing her hair.', 0.5)
    """
    if split not in ("train", "dev", "test"):
        raise ValueError(f"STS-B has the splits 'train', 'dev' and 'test', not {split!r}")
    path = Path(folder) / f"stsb-en-{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the STS benchmark is in a clone's data/stsb/ (pass it as "
                                f"folder=), or on the Hub as datasets.load_dataset('sentence-transformers/stsb')")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], [float(r["score"]) / 5 for r in rows]


class EmbeddingSimilarityEvaluator(Evaluator):
    """Correlation between the model's similarity of each pair and its gold score.

    >>> from minist import SentenceTransformer
    >>> evaluator = EmbeddingSimilarityEvaluator(["A cat sleeps.", "A man plays the guitar.", "The sun is hot."],
    ...                                          ["A kitten naps.", "Someone plays music.", "I like trains."],
    ...                                          [4.8, 3.5, 0.2])
    >>> round(evaluator(SentenceTransformer("all-MiniLM-L6-v2", device="cpu"))["spearman_cosine"], 2)
    1.0
    """

    def __init__(self, sentences1: list[str], sentences2: list[str], scores: list[float], batch_size: int = 16,
                 main_similarity: str | None = None, similarity_fn_names: list[str] | None = None, name: str = "",
                 show_progress_bar: bool = False, write_csv: bool = True, truncate_dim: int | None = None):
        check_pairs(sentences1, sentences2, scores)
        unknown = {main_similarity, *(similarity_fn_names or [])} - {None, *PAIRWISE_FUNCTIONS}
        if unknown:
            raise ValueError(f"Unknown similarity {sorted(unknown)}; choose from {', '.join(PAIRWISE_FUNCTIONS)}.")
        self.sentences1, self.sentences2, self.scores = sentences1, sentences2, scores
        self.batch_size, self.show_progress_bar, self.write_csv = batch_size, show_progress_bar, write_csv
        self.main_similarity, self.name, self.truncate_dim = main_similarity, name, truncate_dim
        self.similarity_fn_names = similarity_fn_names or ([main_similarity] if main_similarity else [])
        self.csv_file = f"similarity_evaluation{'_' + name if name else ''}_results.csv"

    @classmethod
    def from_input_examples(cls, examples, **kwargs) -> EmbeddingSimilarityEvaluator:
        """Pairs from ``InputExample(texts=[a, b], label=score)``; example i's label becomes ``scores[i]``."""
        for i, example in enumerate(examples):
            if len(example.texts) != 2:
                raise ValueError(f"Example {i} has {len(example.texts)} texts; a pair has 2.")
        return cls([e.texts[0] for e in examples], [e.texts[1] for e in examples], [e.label for e in examples],
                   **kwargs)

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        names = self.similarity_fn_names or [model.similarity_fn_name]  # as sentence-transformers: the model's own
        encode = dict(batch_size=self.batch_size, show_progress_bar=self.show_progress_bar, convert_to_tensor=True,
                      truncate_dim=self.truncate_dim)
        a, b = model.encode(self.sentences1, **encode), model.encode(self.sentences2, **encode)
        metrics = {}
        for fn in names:
            similarities = PAIRWISE_FUNCTIONS[fn](a, b).cpu().numpy()
            metrics[f"pearson_{fn}"] = pearsonr(self.scores, similarities).statistic
            metrics[f"spearman_{fn}"] = spearmanr(self.scores, similarities).statistic
        if len(names) > 1:
            metrics["pearson_max"] = max(metrics[f"pearson_{fn}"] for fn in names)
            metrics["spearman_max"] = max(metrics[f"spearman_{fn}"] for fn in names)
        primary = f"spearman_{self.main_similarity}" if self.main_similarity else (
            "spearman_max" if len(names) > 1 else f"spearman_{names[0]}")
        return self._finish(metrics, primary, output_path, epoch, steps)


def dcg_at_k(relevances: list[int], k: int) -> float:
    """Discounted cumulative gain: sum of relevance_i / log2(i + 2) over the first k ranks."""
    return sum(relevance / math.log2(rank + 2) for rank, relevance in enumerate(relevances[:k]))


def retrieval_metrics(ranked: list[list[str]], relevant: list[set[str]], accuracy_at_k, precision_recall_at_k,
                      mrr_at_k, ndcg_at_k, map_at_k) -> dict[str, float]:
    """Per-query ranked ids and relevant ids -> the mean of each metric, keyed like ``accuracy@1``."""
    per_query: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        per_query.setdefault(name, []).append(value)

    for ranking, wanted in zip(ranked, relevant, strict=True):
        hits = [doc in wanted for doc in ranking]  # True where the document at that rank is relevant
        first = hits.index(True) if True in hits else math.inf
        for k in accuracy_at_k:
            add(f"accuracy@{k}", float(first < k))
        for k in precision_recall_at_k:
            add(f"precision@{k}", sum(hits[:k]) / k)
            add(f"recall@{k}", sum(hits[:k]) / len(wanted))
        for k in mrr_at_k:
            add(f"mrr@{k}", 1 / (first + 1) if first < k else 0.0)
        for k in ndcg_at_k:
            add(f"ndcg@{k}", dcg_at_k([int(h) for h in hits], k) / dcg_at_k([1] * len(wanted), k))
        for k in map_at_k:
            precisions = [sum(hits[: rank + 1]) / (rank + 1) for rank in range(min(k, len(hits))) if hits[rank]]
            add(f"map@{k}", sum(precisions) / min(k, len(wanted)))
    return {name: float(np.mean(values)) for name, values in per_query.items()}


def check_retrieval_data(queries: dict[str, str], corpus: dict[str, str], relevant_docs: dict[str, set[str]],
                         ks: dict[str, list[int]]) -> None:
    """Refuse retrieval data that cannot be scored: empty, of the wrong shape, or with nothing to find."""
    for name, mapping in [("queries", queries), ("corpus", corpus), ("relevant_docs", relevant_docs)]:
        if not isinstance(mapping, Mapping):
            raise TypeError(f"{name} must be a dict keyed by id, not {type(mapping).__name__}.")
    if not queries:
        raise ValueError("InformationRetrievalEvaluator got no queries.")
    if not corpus:
        raise ValueError("InformationRetrievalEvaluator got an empty corpus.")
    for name, texts in [("queries", queries), ("corpus", corpus)]:
        for key, text in texts.items():
            if not isinstance(text, str):
                raise TypeError(f"{name}[{key!r}] is {text!r:.40}, not a string.")
    for qid, wanted in relevant_docs.items():
        if isinstance(wanted, str):  # set("d1") would be {"d", "1"}
            raise TypeError(f"relevant_docs[{qid!r}] is the string {wanted!r}; give a set of corpus ids: "
                            f"{{{wanted!r}}}.")
    if not any(set(relevant_docs.get(qid) or ()) & corpus.keys() for qid in queries):
        raise ValueError(f"None of the {len(queries)} queries has a relevant document in the corpus: relevant_docs "
                         f"maps query ids (such as {next(iter(queries))!r}) to sets of corpus ids (such as "
                         f"{next(iter(corpus))!r}).")
    for name, values in ks.items():
        if not values:
            raise ValueError(f"{name} must list at least one k, not {values!r}.")
        for i, k in enumerate(values):
            check_count(f"{name}[{i}]", k)


class InformationRetrievalEvaluator(Evaluator):
    """How high each query's relevant documents rank when the corpus is searched with the model.

    Queries without relevant documents are skipped; one whose relevant documents are not in the corpus counts,
    and scores 0 (as in sentence-transformers). Data with no query to score is refused.
    Queries are encoded with ``encode_query`` and the corpus with ``encode_document``, so a model's prompts apply;
    ``query_prompt``/``corpus_prompt`` (or their ``_name`` forms) choose others.
    """

    def __init__(self, queries: dict[str, str], corpus: dict[str, str], relevant_docs: dict[str, set[str]],
                 corpus_chunk_size: int = 50000, mrr_at_k: list[int] = (10,), ndcg_at_k: list[int] = (10,),
                 accuracy_at_k: list[int] = (1, 3, 5, 10), precision_recall_at_k: list[int] = (1, 3, 5, 10),
                 map_at_k: list[int] = (100,), show_progress_bar: bool = False, batch_size: int = 32, name: str = "",
                 write_csv: bool = True, truncate_dim: int | None = None, score_functions: dict | None = None,
                 main_score_function: str | None = None, query_prompt: str | None = None,
                 query_prompt_name: str | None = None, corpus_prompt: str | None = None,
                 corpus_prompt_name: str | None = None):
        self.ks = dict(accuracy_at_k=accuracy_at_k, precision_recall_at_k=precision_recall_at_k, mrr_at_k=mrr_at_k,
                       ndcg_at_k=ndcg_at_k, map_at_k=map_at_k)
        check_retrieval_data(queries, corpus, relevant_docs, self.ks)
        self.query_ids = [qid for qid in queries if relevant_docs.get(qid)]  # queries with something to find
        self.queries = [queries[qid] for qid in self.query_ids]
        self.corpus_ids, self.corpus = list(corpus), list(corpus.values())
        self.relevant_docs = relevant_docs
        self.corpus_chunk_size, self.batch_size = corpus_chunk_size, batch_size
        self.show_progress_bar = show_progress_bar
        self.name, self.write_csv, self.score_functions = name, write_csv, score_functions
        self.main_score_function, self.truncate_dim = main_score_function, truncate_dim
        self.prompts = {"query": dict(prompt=query_prompt, prompt_name=query_prompt_name),
                        "corpus": dict(prompt=corpus_prompt, prompt_name=corpus_prompt_name)}
        self.csv_file = f"Information-Retrieval_evaluation{'_' + name if name else ''}_results.csv"

    def _rank(self, queries: Tensor, corpus: Tensor, function, depth: int) -> list[list[int]]:
        """Each query's ``depth`` best corpus rows by (-score, corpus id), as sentence-transformers ranks them:
        ties, at the cut too, go to the smaller id, whatever ``corpus_chunk_size`` (torch's topk alone would
        pick among tied rows arbitrarily)."""
        id_rank = torch.empty(len(self.corpus_ids), dtype=torch.long)
        id_rank[sorted(range(len(self.corpus_ids)), key=self.corpus_ids.__getitem__)] = torch.arange(len(id_rank))
        n, depth, ranked = len(id_rank), min(depth, len(id_rank)), []
        rows_per_block = max(1, self.corpus_chunk_size * 64 // n)  # a block's scores: about as many as before
        for start in range(0, len(queries), rows_per_block):
            scores = function(queries[start:start + rows_per_block], corpus).cpu()  # (block, n)
            cut = scores.topk(depth, dim=1).values[:, -1:]  # each query's depth-th best score
            # Integer keys: every score above the cut first, then the tied ones, each group by corpus id.
            keys = torch.where(scores > cut, id_rank, torch.where(scores == cut, id_rank + n, 2 * n))
            chosen = keys.topk(depth, dim=1, largest=False).indices  # (block, depth)
            for picked, values in zip(chosen.tolist(), scores.gather(1, chosen).tolist(), strict=True):
                order = sorted(range(depth), key=lambda j: (-values[j], self.corpus_ids[picked[j]]))
                ranked.append([picked[j] for j in order])
        return ranked

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        functions = self.score_functions or {model.similarity_fn_name: model.similarity}  # as sentence-transformers
        if self.main_score_function is not None and self.main_score_function not in functions:
            raise ValueError(f"main_score_function {self.main_score_function!r} is not one of the score functions "
                             f"{sorted(functions)}.")
        encode = dict(batch_size=self.batch_size, show_progress_bar=self.show_progress_bar, convert_to_tensor=True,
                      truncate_dim=self.truncate_dim)
        queries = model.encode_query(self.queries, **encode, **self.prompts["query"])  # the model's query prompt,
        corpus = model.encode_document(self.corpus, **encode, **self.prompts["corpus"])  # unless given others
        depth = max(max(ks) for ks in self.ks.values())
        metrics = {}
        for fn_name, function in sorted(functions.items()):
            ranked = [[self.corpus_ids[i] for i in row] for row in self._rank(queries, corpus, function, depth)]
            scores = retrieval_metrics(ranked, [set(self.relevant_docs[q]) for q in self.query_ids], **self.ks)
            metrics |= {f"{fn_name}_{key}": value for key, value in scores.items()}
        ndcg = f"ndcg@{max(self.ks['ndcg_at_k'])}"
        best = self.main_score_function or max(functions, key=lambda fn: metrics[f"{fn}_{ndcg}"])
        return self._finish(metrics, f"{best}_{ndcg}", output_path, epoch, steps)
