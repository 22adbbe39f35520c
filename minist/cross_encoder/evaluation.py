"""Cross-encoder evaluators: score a reranker on held-out data; the results equal sentence-transformers'.

- ``CrossEncoderRerankingEvaluator``: per query, its positives and either negatives or the ``documents`` a first
  stage returned, best first; how high does the model rank the positives? MAP, MRR@k and NDCG@k, and for
  ``documents`` the first stage's own too (``base_map``, ...).
- ``CrossEncoderCorrelationEvaluator``: text pairs with gold scores; Pearson and Spearman correlation of the
  model's scores with them.

The model is anything with ``predict(pairs, batch_size=..., show_progress_bar=..., convert_to_numpy=True)``.
Metric names, ``primary_metric``, the ``name_`` prefix and the CSV files are upstream's (sentence-transformers'
``cross_encoder/evaluation/reranking.py``, ``correlation.py``); tied scores count as its scikit-learn counts them.
Data that cannot be scored is refused when the evaluator is built, naming what is wrong.
Left out: ``prompt_name``, model-card metrics, logging, the classification and NanoBEIR evaluators.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr

from minist.evaluation import Evaluator, check_pairs, check_texts, dcg_at_k
from minist.inputs import check_count


def rerank_metrics(scores, relevant: list[int], num_positives: int, k: int) -> tuple[float, float, float]:
    """Average precision, MRR@k and NDCG@k of one query's documents ranked by ``scores``; AP and NDCG are
    normalised by ``num_positives`` (the known positives, ranked or not).

    >>> [round(m, 3) for m in rerank_metrics([0.9, 0.8, 0.1], [0, 1, 0], num_positives=1, k=10)]  # found 2nd
    [0.5, 0.5, 0.631]
    """
    if not any(relevant):
        return 0.0, 0.0, 0.0
    order = np.argsort(scores)[::-1]  # best first; equal scores in numpy's order, as upstream's MRR takes them
    scores, relevant = np.asarray(scores)[order], np.asarray(relevant)[order]
    num_positives = max(num_positives, int(relevant.sum()))
    first = int(relevant.argmax())  # rank of the best-ranked positive
    hits = np.concatenate([[0], np.cumsum(relevant)])  # hits[j]: positives among the best j
    start, end = (np.searchsorted(-scores, -scores, side) for side in ("left", "right"))  # each one's tie group
    ap = float((relevant * hits[end] / end).sum()) / num_positives  # precision where each positive's group ends
    gains = (hits[end] - hits[start]) / (end - start)  # a tie group's positives, spread over its ranks
    return ap, (1 / (first + 1) if first < k else 0.0), dcg_at_k(gains.tolist(), k) / dcg_at_k([1] * num_positives, k)


def means(names: list[str], rows: list[tuple[float, ...]]) -> dict[str, float]:
    """Each column's mean over the samples, keyed by ``names``."""
    return {name: np.mean(column) for name, column in zip(names, zip(*rows, strict=True), strict=True)}


def check_sample(i: int, sample) -> tuple[str, list[str], list[str] | None, list[str] | None]:
    """A sample's query, positives, negatives and documents (one of the two is None), or the error upstream gives."""
    for key in ("query", "positive"):
        if key not in sample:
            raise ValueError(f"CrossEncoderRerankingEvaluator requires a '{key}' key in each sample.")
    if ("negative" in sample) == ("documents" in sample):
        raise ValueError("CrossEncoderRerankingEvaluator requires exactly one of 'negative' and 'documents' "
                         "in each sample.")
    positive = [sample["positive"]] if isinstance(sample["positive"], str) else sample["positive"]  # as upstream
    if not isinstance(positive, list) or not isinstance(sample["query"], str):
        raise TypeError(f"samples[{i}] needs a query string and a list of positives, not {sample!r:.80}.")
    for key in ("positive", "negative", "documents"):
        check_texts(f"samples[{i}][{key!r}]", positive if key == "positive" else sample.get(key, []))
    return sample["query"], positive, sample.get("negative"), sample.get("documents")


class CrossEncoderRerankingEvaluator(Evaluator):
    """How high the model ranks each query's positives among its documents: MAP, MRR@k, NDCG@k (primary).

    With ``documents`` and ``always_rerank_positives=True`` the positives the first stage missed are put back
    in; with ``False`` they stay out (and cap the score below 1). A sample with nothing to rank scores 0.
    In a tie, MRR takes numpy's order (here the negative first); MAP and NDCG share the tie's positives.

    >>> class Overlap:  # a stand-in model: a pair's score is the number of words its texts share
    ...     def predict(self, pairs, **kwargs):
    ...         return np.array([len(set(q.split()) & set(d.split())) for q, d in pairs], dtype=np.float32)
    >>> evaluator = CrossEncoderRerankingEvaluator([{"query": "fix a flat tyre", "positive": ["patch the tyre"],
    ...                                              "negative": ["oil the chain", "fix the brake"]}])
    >>> {key: round(value, 3) for key, value in evaluator(Overlap()).items()}  # "tyre" and "fix": a tie
    {'map': 0.5, 'mrr@10': 0.5, 'ndcg@10': 0.815}
    """

    def __init__(self, samples: list[dict], at_k: int = 10, always_rerank_positives: bool = True, name: str = "",
                 batch_size: int = 64, show_progress_bar: bool = False, write_csv: bool = True,
                 mrr_at_k: int | None = None):
        self.at_k = at_k if mrr_at_k is None else mrr_at_k  # mrr_at_k: upstream's old name for at_k
        check_count("at_k", self.at_k)
        samples = list(samples.values()) if isinstance(samples, dict) else samples
        if not samples:
            raise ValueError("CrossEncoderRerankingEvaluator got no samples.")
        self.pairs, self.rankings, base = [], [], []  # rankings: (relevance flags, known positives) per sample
        for i, sample in enumerate(samples):
            query, positive, negative, documents = check_sample(i, sample)
            if documents is None:
                docs, relevant = positive + negative, [1] * len(positive) + [0] * len(negative)
            else:  # ranked by a first stage: score that order too
                docs, relevant = documents, [int(doc in positive) for doc in documents]
                base.append(rerank_metrics(np.arange(len(docs), 0, -1), relevant, len(positive), self.at_k))
                if always_rerank_positives:
                    docs = positive + [doc for doc in documents if doc not in positive]
                    relevant = [1] * len(positive) + [0] * (len(docs) - len(positive))
            if not any(relevant):  # nothing to rank: the model skips it, it scores 0
                docs, relevant = [], []
            self.rankings.append((relevant, len(positive)))
            self.pairs += [[query, doc] for doc in docs]
        if not self.pairs:
            raise ValueError("No sample has a positive among the documents to rank: every metric would be 0.")
        self.names = ["map", f"mrr@{self.at_k}", f"ndcg@{self.at_k}"]
        self.base = means([f"base_{n}" for n in self.names], base) if base else {}
        self.name, self.batch_size, self.show_progress_bar = name, batch_size, show_progress_bar
        self.write_csv, self.primary_metric = write_csv, self.names[2]  # prefixed with the name once called
        self.csv_file = f"CrossEncoderRerankingEvaluator{'_' + name if name else ''}_results_@{self.at_k}.csv"

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        scores = model.predict(self.pairs, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar,
                               convert_to_numpy=True)  # (pairs,)
        per_sample, offset = [], 0
        for relevant, positives in self.rankings:  # each sample's scores follow the previous one's
            per_sample.append(rerank_metrics(scores[offset:offset + len(relevant)], relevant, positives, self.at_k))
            offset += len(relevant)
        metrics = means(self.names, per_sample)
        columns = means(["MAP", f"MRR@{self.at_k}", f"NDCG@{self.at_k}"], per_sample)  # upstream's CSV columns
        return self._finish(metrics | self.base, self.names[2], output_path, epoch, steps, csv_columns=columns)


class CrossEncoderCorrelationEvaluator(Evaluator):
    """Pearson and Spearman (primary) correlation of the model's pair scores with gold scores.

    >>> evaluator = CrossEncoderCorrelationEvaluator([("a cat", "a cat sleeps"), ("a cat", "a dog")], [0.9, 0.1])
    >>> evaluator.primary_metric
    'spearman'
    """

    def __init__(self, sentence_pairs: list[list[str]], scores: list[float], name: str = "", batch_size: int = 32,
                 show_progress_bar: bool = False, write_csv: bool = True):
        if len(sentence_pairs) != len(scores):
            raise ValueError(f"sentence_pairs and scores differ in length: {len(sentence_pairs)}, {len(scores)}.")
        for i, pair in enumerate(sentence_pairs):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ValueError(f"sentence_pairs[{i}] is {pair!r:.60}, not a pair of texts [text1, text2].")
            check_texts(f"sentence_pairs[{i}]", pair)
        check_pairs([a for a, _ in sentence_pairs], [b for _, b in sentence_pairs], scores,
                    evaluator="CrossEncoderCorrelationEvaluator")
        self.sentence_pairs, self.scores, self.name, self.batch_size = sentence_pairs, scores, name, batch_size
        self.show_progress_bar, self.write_csv, self.primary_metric = show_progress_bar, write_csv, "spearman"
        self.csv_file = f"CrossEncoderCorrelationEvaluator{'_' + name if name else ''}_results.csv"

    @classmethod
    def from_input_examples(cls, examples, **kwargs) -> CrossEncoderCorrelationEvaluator:
        """Pairs from ``InputExample(texts=[a, b], label=score)``."""
        return cls([e.texts for e in examples], [e.label for e in examples], **kwargs)

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        predicted = model.predict(self.sentence_pairs, batch_size=self.batch_size,
                                  show_progress_bar=self.show_progress_bar, convert_to_numpy=True)  # (pairs,)
        metrics = {"pearson": pearsonr(self.scores, predicted)[0], "spearman": spearmanr(self.scores, predicted)[0]}
        columns = {"Pearson_Correlation": metrics["pearson"], "Spearman_Correlation": metrics["spearman"]}
        return self._finish(metrics, "spearman", output_path, epoch, steps, csv_columns=columns)
