"""Exact semantic search and paraphrase mining over embeddings, in memory-bounded chunks.

``semantic_search`` ranks a corpus for each query: it scores query chunks against corpus chunks
(so a large corpus never needs one huge score matrix), keeps a running top-k per query, and returns,
per query, a score-sorted list of ``{"corpus_id", "score"}``, as sentence-transformers does.
``paraphrase_mining`` searches a list against itself and returns the most similar distinct pairs.
``mine_hard_negatives`` searches a corpus for each anchor of (anchor, positive) pairs and keeps close texts that
are not its positives, as training negatives: sentence-transformers 6's ``util.mine_hard_negatives`` (its
``hard_negatives.py``; the method: NV-Retriever, https://arxiv.org/abs/2407.15831), the same rows for the
same inputs. Left out: approximate search (``minist.ann``; so no ``use_faiss``) and sparse embeddings; in
mining, worker processes, an embeddings cache folder, upstream's statistics table and deprecated arguments.
"""

from __future__ import annotations

import functools
import logging
import numbers
import random
from collections import Counter
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from minist.inputs import ArrayLike, as_matrix, check_count, check_finite, text_list
from minist.similarity import cos_sim, dot_score, normalize_embeddings

ScoreFunction = Callable[[Tensor, Tensor], Tensor]
logger = logging.getLogger("minist")


def semantic_search(query_embeddings: ArrayLike, corpus_embeddings: ArrayLike, query_chunk_size: int = 100,
                    corpus_chunk_size: int = 500000, top_k: int = 10,
                    score_function: ScoreFunction = cos_sim) -> list[list[dict]]:
    """For each query, the ``top_k`` best corpus entries: ``[[{"corpus_id": 3, "score": 0.82}, ...], ...]``.

    A ``top_k`` above the corpus size returns the whole corpus, sorted; an empty corpus or ``top_k=0``, empty
    lists; no queries, ``[]``. A negative ``top_k`` or a NaN or infinite query is a ValueError.
    As in sentence-transformers, no score matrix larger than ``query_chunk_size x corpus_chunk_size`` is
    made; within that bound minist picks its own block shape (see the loop).
    """
    check_count("top_k", top_k, least=0)
    queries = as_matrix(query_embeddings, "query_embeddings")
    check_finite(queries, "query_embeddings")  # queries are few: check them always
    corpus = as_matrix(corpus_embeddings, "corpus_embeddings")
    if not len(queries) or not len(corpus) or top_k == 0:
        return [[] for _ in range(len(queries))]
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"query_embeddings have dimension {queries.shape[1]} but corpus_embeddings have "
                         f"{corpus.shape[1]}: were they made by the same model?")
    queries = queries.to(corpus.device)
    cosine = score_function is cos_sim  # then normalize each side once, and score with a dot product
    if cosine:
        queries, score_function = normalize_embeddings(queries), dot_score
    k = min(top_k, len(corpus))
    best_scores = torch.full((len(queries), k), -torch.inf, device=corpus.device)  # running top-k per query
    best_ids = torch.zeros((len(queries), k), dtype=torch.long, device=corpus.device)
    # Blocks of at most 4,096 corpus rows, each scored against as many queries as the memory bound allows
    # (up to 2,048): a block then stays in the CPU cache while all those queries use it, which made exact
    # search 1.5x faster on a 2-core CPU than 100 queries against the whole corpus at a time.
    corpus_block = min(corpus_chunk_size, 4096)
    query_block = max(query_chunk_size, min(2048, query_chunk_size * corpus_chunk_size // corpus_block))
    for c_start in range(0, len(corpus), corpus_block):
        chunk = corpus[c_start:c_start + corpus_block]
        chunk = normalize_embeddings(chunk) if cosine else chunk
        for q_start in range(0, len(queries), query_block):
            rows = slice(q_start, q_start + query_block)
            scores, ids = score_function(queries[rows], chunk).topk(min(k, len(chunk)), dim=1, sorted=False)
            # Merge this chunk's best with the best so far, and keep the k best of both.
            scores = torch.cat([best_scores[rows], scores], dim=1)
            ids = torch.cat([best_ids[rows], ids + c_start], dim=1)
            best_scores[rows], top = scores.topk(k, dim=1)
            best_ids[rows] = ids.gather(1, top)
    # NaN scores rank above all others, so a NaN in the corpus shows up here; only then is the (large)
    # corpus scanned, to name the culprit.
    if not torch.isfinite(best_scores).all():
        check_finite(corpus, "corpus_embeddings")
    return [[{"corpus_id": i, "score": s} for i, s in zip(ids, scores, strict=True)]
            for ids, scores in zip(best_ids.tolist(), best_scores.tolist(), strict=True)]


def paraphrase_mining_embeddings(embeddings: ArrayLike, query_chunk_size: int = 5000,
                                 corpus_chunk_size: int = 100000, max_pairs: int = 500000, top_k: int = 100,
                                 score_function: ScoreFunction = cos_sim) -> list[list]:
    """The most similar pairs within one set: ``[[score, i, j], ...]`` with i < j, best first.

    Each item contributes its ``top_k`` nearest others; a pair found from both sides counts once.
    Pairs with exactly equal scores come in (i, j) order.
    """
    matrix = as_matrix(embeddings, "embeddings")
    if len(matrix) < 2:
        return []
    # Every item searches the whole set; top_k + 1 because each item finds itself too.
    hits = semantic_search(matrix, matrix, query_chunk_size, corpus_chunk_size, top_k + 1, score_function)
    pairs: dict[tuple[int, int], float] = {}
    for i, row in enumerate(hits):
        for hit in [h for h in row if h["corpus_id"] != i][:top_k]:
            pairs.setdefault((min(i, hit["corpus_id"]), max(i, hit["corpus_id"])), hit["score"])
    best = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:max_pairs]
    return [[score, i, j] for (i, j), score in best]


def paraphrase_mining(model, sentences: list[str], show_progress_bar: bool = False, batch_size: int = 32,
                      query_chunk_size: int = 5000, corpus_chunk_size: int = 100000, max_pairs: int = 500000,
                      top_k: int = 100, score_function: ScoreFunction = cos_sim) -> list[list]:
    """Encode ``sentences`` with ``model``, then ``paraphrase_mining_embeddings``: ``[[score, i, j], ...]``."""
    embeddings = model.encode(sentences, batch_size=batch_size, show_progress_bar=show_progress_bar,
                              convert_to_tensor=True)
    return paraphrase_mining_embeddings(embeddings, query_chunk_size, corpus_chunk_size, max_pairs, top_k,
                                        score_function)


def mine_hard_negatives(dataset, model, anchor_column_name: str | None = None, positive_column_name: str | None = None,
                        corpus: list[str] | None = None, cross_encoder=None, range_min: int = 0,
                        range_max: int | None = None, max_score: float | None = None, min_score: float | None = None,
                        absolute_margin: float | None = None, relative_margin: float | None = None,
                        num_negatives: int = 3, sampling_strategy: Literal["top", "random"] = "top",
                        query_prompt_name: str | None = None, query_prompt: str | None = None,
                        corpus_prompt_name: str | None = None, corpus_prompt: str | None = None,
                        include_positives: bool = False,
                        output_format: Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"] = "triplet",
                        output_scores: bool = False, batch_size: int = 32, faiss_batch_size: int = 16384,
                        use_faiss: bool = False, use_multi_process: bool | list[str] = False, verbose: bool = True,
                        cache_folder: str | None = None, as_triplets: bool | None = None, margin: float | None = None):
    """(anchor, positive) pairs -> a ``datasets.Dataset`` with hard negatives: corpus texts the model ranks close
    to an anchor that are not its positives. Arguments, columns, rows and their order are sentence-transformers'.

    Per anchor: its ``range_max`` best candidates after dropping its positives, its own text and those the filters
    refuse (above ``max_score``, below ``min_score``, within a margin of its hardest positive's score); then the
    first ``range_min`` skipped and ``num_negatives`` taken: the best (``"top"``) or drawn with Python's ``random``
    (``"random"``: seed it with ``random.seed``). A ``cross_encoder`` (anything with ``predict(pairs, ...)``)
    rescores candidates and positives first; its scores then rank, filter and are output.
    Columns: anchor, positive, then "negative" ("triplet"), negative_1..n ("n-tuple"), "label" ("labeled-pair":
    one (anchor, text, 1 or 0) row per positive and negative) or "labels" ("labeled-list": [positive, *negatives]
    and [1, 0, ...]); ``output_scores`` adds "scores" (the positive's, then the negatives') or gives scores for labels.
    Unlike upstream, a column name not in the dataset, an unknown ``sampling_strategy`` and the arguments minist
    leaves out (``use_faiss``, ``use_multi_process``, ``cache_folder``, ``as_triplets``, ``margin``) are errors.

    >>> from datasets import Dataset
    >>> from minist import SentenceTransformer
    >>> pairs = Dataset.from_dict({"query": ["squeaky brakes", "spongy brake lever", "flat tyre"], "answer": [
    ...     "Replace the brake pads.", "Bleed the hydraulic brakes.", "Patch the tube."]})
    >>> model = SentenceTransformer("all-MiniLM-L6-v2", device="cpu")
    >>> mined = mine_hard_negatives(pairs, model, num_negatives=1, output_scores=True, verbose=False)
    >>> mined[0]["negative"], [round(s, 2) for s in mined[0]["scores"]]  # the positive's score, then the negative's
    ('Bleed the hydraulic brakes.', [0.53, 0.52])
    """
    from datasets import Dataset  # an optional dependency (the notebooks extra): imported only when mining

    for name, value, default, hint in (
            ("use_faiss", use_faiss, False, "it searches exactly; see minist.ann for large corpora"),
            ("use_multi_process", use_multi_process, False, "it encodes in this process"),
            ("cache_folder", cache_folder, None, "see minist.cache.EmbeddingCache"),
            ("as_triplets", as_triplets, None, 'use output_format="triplet" or "n-tuple"'),
            ("margin", margin, None, "use absolute_margin")):
        if value is not default:
            raise ValueError(f"minist's mine_hard_negatives leaves out {name}= ({hint}).")
    if not isinstance(dataset, Dataset) or len(dataset) == 0:
        raise ValueError(f"dataset must be a non-empty datasets.Dataset of (anchor, positive) pairs, "
                         f"not {dataset!r:.60}.")
    if output_format not in ("triplet", "n-tuple", "labeled-pair", "labeled-list"):
        raise ValueError(f"Invalid output_format: {output_format}. Must be one of 'triplet', 'n-tuple', "
                         "'labeled-pair', or 'labeled-list'.")  # upstream's words
    if sampling_strategy not in ("top", "random"):
        raise ValueError(f'sampling_strategy must be "top" or "random", not {sampling_strategy!r}.')
    for name, value in dict(range_min=range_min, num_negatives=num_negatives, batch_size=batch_size,
                            faiss_batch_size=faiss_batch_size).items():
        check_count(name, value, least=int(name != "range_min"))
    for name, value in dict(max_score=max_score, min_score=min_score, absolute_margin=absolute_margin,
                            relative_margin=relative_margin).items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(f"{name} must be a number or None, not {type(value).__name__} {value!r:.40}.")
    for name, prompt in ((query_prompt_name, query_prompt), (corpus_prompt_name, corpus_prompt)):
        if name is not None and prompt is None and name not in model.prompts:  # as encode would say, but now
            raise ValueError(f"Prompt name '{name}' not found in the configured prompts dictionary with keys "
                             f"{list(model.prompts)!r}.")
    columns = dataset.column_names
    if positive_column_name is None and len(columns) < 2:
        raise ValueError("Dataset must contain at least two columns to select the positive column automatically.")
    anchor_column_name, positive_column_name = anchor_column_name or columns[0], positive_column_name or columns[1]
    for name in (anchor_column_name, positive_column_name):
        if name not in columns:
            raise ValueError(f"The dataset has no column {name!r}; its columns are {columns}.")
    all_queries, positives = text_list(dataset[anchor_column_name]), text_list(dataset[positive_column_name])
    corpus = list(dict.fromkeys((positives if corpus is None else text_list(corpus)) + positives))  # unique texts
    max_positives = max(Counter(all_queries).values())  # rows per anchor
    if range_max is None:  # filters drop candidates: then look ten times deeper
        deeper = any(x is not None for x in (absolute_margin, relative_margin, max_score)) or (
            cross_encoder is not None and min_score is not None)
        range_max = range_min + num_negatives * (10 if deeper else 1) + max_positives
        if verbose:
            print(f"Setting range_max to {range_max} based on the provided parameters.")
    check_count("range_max", range_max, least=range_min + num_negatives,
                hint=f"It must leave num_negatives={num_negatives} candidates after skipping range_min={range_min}.")
    if include_positives and output_format != "n-tuple":
        logger.warning('When using `include_positives=True`, `output_format` will be set to `"n-tuple"` to ensure '
                       "that the ranking order is preserved.")
        output_format = "n-tuple"

    corpus_id = {text: i for i, text in enumerate(corpus)}
    queries = list(dict.fromkeys(all_queries))  # each anchor once: it is encoded and searched once
    query_id = {query: i for i, query in enumerate(queries)}
    pairs = dict.fromkeys(zip(all_queries, positives, strict=True))  # the unique (anchor, positive) pairs
    rows = sorted(pairs, key=lambda row: query_id[row[0]])  # grouped by anchor, else in order (sorted is stable)
    row_query = torch.tensor([query_id[query] for query, _ in rows])  # (rows,)
    row_positive = torch.tensor([corpus_id[positive] for _, positive in rows])  # (rows,)
    encode = dict(batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=verbose)
    corpus_emb = model.encode_document(corpus, prompt_name=corpus_prompt_name, prompt=corpus_prompt, **encode).cpu()
    query_emb = model.encode_query(queries, prompt_name=query_prompt_name, prompt=query_prompt, **encode).cpu()
    positive_scores = model.similarity_pairwise(query_emb[row_query], corpus_emb[row_positive])  # (rows,)

    # Each anchor's best candidates, with room for those dropped below (its positives, its own text); scored
    # faiss_batch_size anchors at a time, which bounds the score matrix. A small corpus is padded with id -1.
    width, k = range_max + max_positives + 1, min(range_max + max_positives + 1, len(corpus))
    best = [model.similarity(query_emb[i:i + faiss_batch_size], corpus_emb).topk(k, dim=1)
            for i in range(0, len(queries), faiss_batch_size)]
    scores = F.pad(torch.cat([s for s, _ in best]), (0, width - k), value=-torch.inf)  # (queries, width)
    ids = F.pad(torch.cat([i for _, i in best]), (0, width - k), value=-1)  # (queries, width)
    if cross_encoder is not None:
        predict = functools.partial(cross_encoder.predict, batch_size=batch_size, show_progress_bar=False,
                                    convert_to_tensor=True)
        for q in tqdm(range(len(queries)), desc="Rescoring with CrossEncoder", disable=not verbose):
            scores[q] = predict([(queries[q], corpus[i]) for i in ids[q].tolist()])  # id -1 is dropped below
        positive_scores = torch.as_tensor(predict(rows)).to(scores)  # (rows,), as scores: on the CPU

    own = torch.tensor([-1 if include_positives and (query, query) in pairs else corpus_id.get(query, -1)
                        for query in queries])  # the anchor's own text in the corpus, unless it is its positive
    drop = (ids == -1) | (ids == own[:, None])  # (queries, width)
    if not include_positives:  # (anchor, candidate) as one number: anchor * (len(corpus) + 1) + candidate
        keys = torch.arange(len(queries))[:, None] * (len(corpus) + 1) + ids
        drop |= torch.isin(keys, row_query * (len(corpus) + 1) + row_positive)
    hardest = scores.new_full((len(queries),), torch.inf).scatter_reduce(0, row_query, positive_scores, "amin")
    if absolute_margin is not None:  # margins below each anchor's hardest (lowest-scored) positive
        drop |= scores + absolute_margin > hardest[:, None]
    if relative_margin is not None:
        drop |= scores > (hardest - hardest.abs() * relative_margin)[:, None]
    if max_score is not None:
        drop |= scores > max_score
    if min_score is not None:
        drop |= scores < min_score
    scores, top = scores.masked_fill(drop, -torch.inf).topk(range_max, dim=1)  # kept ones first, best first
    scores, ids = scores[:, range_min:], ids.gather(1, top)[:, range_min:]
    if sampling_strategy == "top":
        scores, ids = scores[:, :num_negatives], ids[:, :num_negatives]
    else:  # as upstream: random.sample among the kept candidates (all, if too few), then best first again
        kept = (scores.size(1) - scores.isinf().sum(1)).clamp(min=num_negatives).tolist()
        picked = torch.tensor([random.sample(range(n), k=num_negatives) for n in kept])
        scores, order = scores.gather(1, picked).sort(dim=1, descending=True)
        ids = ids.gather(1, picked).gather(1, order)
    found = [[(corpus[i], s) for i, s in zip(row_ids, row_scores, strict=True) if s != -torch.inf]
             for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True)]  # per anchor, best first

    negative_columns = {"triplet": ["negative"], "n-tuple": [f"negative_{i + 1}" for i in range(num_negatives)]}
    last_column = {"labeled-pair": ("label", "score"), "labeled-list": ("labels", "scores")}.get(
        output_format, (None, "scores"))[output_scores]  # triplets and n-tuples have scores or nothing
    names = [anchor_column_name, positive_column_name, *negative_columns.get(output_format, []), last_column]
    out = []  # the output rows; a row's scores past the last column (not asked for) are left out below
    for r, (query, positive) in enumerate(rows):
        q, score = query_id[query], positive_scores[r].item()
        texts, negative_scores = [t for t, _ in found[q]], [s for _, s in found[q]]
        if output_format == "triplet":
            out += [(query, positive, text, [score, negative_score]) for text, negative_score in found[q]]
        elif output_format == "n-tuple" and len(texts) == num_negatives:
            out.append((query, positive, *texts, [score, *negative_scores]))
        elif output_format == "labeled-list" and texts:
            labels = [score, *negative_scores] if output_scores else [1] + [0] * len(texts)
            out.append((query, [positive, *texts], labels))
        elif output_format == "labeled-pair":
            out.append((query, positive, score if output_scores else 1))
            if r + 1 == len(rows) or rows[r + 1][0] != query:  # after an anchor's last positive: its negatives
                out += [(query, text, s if output_scores else 0) for text, s in found[q]]
    if verbose:
        print(f"Mined {sum(map(len, found)):,} of {len(queries) * num_negatives:,} negatives "
              f"({num_negatives} for each of {len(queries):,} anchors).")
    return Dataset.from_dict({name: [row[i] for row in out] for i, name in enumerate(names) if name})
