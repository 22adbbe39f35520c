"""How much the training seed moves notebook 06's recipes: test MRR@10 on the help desk (data/bikefix) for
CosineSimilarityLoss and CoSENTLoss (one epoch of scored pairs), stage 1 + MultipleNegativesRankingLoss, MNRL
alone and MNRL with one mined hard negative per question, one JSON line per seed. Run from notebooks/:

    cd notebooks && ../.venv/bin/python ../benchmarks/finetune_seeds.py 0 1 2

It mirrors the notebook's cells; seed s replaces 0 everywhere (pair sampling, torch's RNG for shuffling and
dropout, the Trainer's seed), so seed 0 prints the notebook's own numbers. About 80 s a seed on 2 cores."""
import copy
import json
import random
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from minist import (
    InputExample,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
    losses,
    util,
)
from minist.evaluation import InformationRetrievalEvaluator
from minist.training_args import BatchSamplers

torch.set_num_threads(2)
answers = pd.read_json("../data/bikefix/answers.jsonl", lines=True).set_index("id")
questions = pd.read_json("../data/bikefix/questions.jsonl", lines=True)


def retrieval_evaluator(split):
    rows = questions[questions["split"] == split]
    relevant = {qid: {aid} for qid, aid in zip(rows["id"], rows["answer"], strict=True)}
    return InformationRetrievalEvaluator(dict(zip(rows["id"], rows["text"], strict=True)), answers["text"].to_dict(),
                                         relevant, name=split)


def reciprocal_ranks(model, split="test"):
    rows = questions[questions["split"] == split]
    hits = util.semantic_search(model.encode_query(list(rows["text"]), convert_to_tensor=True),
                                model.encode_document(list(answers["text"]), convert_to_tensor=True), top_k=10)
    out = []
    for row, answer in zip(hits, rows["answer"], strict=True):
        rr = 0.0
        for rank, hit in enumerate(row, 1):
            if answers.index[hit["corpus_id"]] == answer:
                rr = 1 / rank
                break
        out.append(rr)
    return np.array(out)


dev_evaluator = retrieval_evaluator("dev")
train = questions[questions["split"] == "train"]
results = {}
for seed in map(int, sys.argv[1:]):
    t0 = time.perf_counter()
    timing = {}
    random.seed(seed)
    base = SentenceTransformer("all-MiniLM-L6-v2", device="cpu")
    r = {"before": reciprocal_ranks(base).mean()}
    examples = []
    for question, answer_id in zip(train["text"], train["answer"], strict=True):
        category = answers.loc[answer_id, "category"]
        same = answers[(answers["category"] == category) & (answers.index != answer_id)]
        other = answers[answers["category"] != category]
        examples += [InputExample(texts=[question, answers.loc[answer_id, "text"]], label=1.0),
                     InputExample(texts=[question, random.choice(list(same["text"]))], label=0.5),
                     InputExample(texts=[question, random.choice(list(other["text"]))], label=0.0)]
    stage1 = {}
    for name, loss in [("CosineSimilarityLoss", losses.CosineSimilarityLoss), ("CoSENTLoss", losses.CoSENTLoss)]:
        t = time.perf_counter()
        m = copy.deepcopy(base)
        torch.manual_seed(seed)
        m.fit(train_objectives=[(DataLoader(examples, shuffle=True, batch_size=16), loss(m))], epochs=1,
              warmup_steps=5, show_progress_bar=False)
        r[name] = reciprocal_ranks(m).mean()
        stage1[name] = m
        timing[name] = time.perf_counter() - t

    pairs = Dataset.from_dict({"anchor": list(train["text"]),
                               "positive": [answers.loc[a, "text"] for a in train["answer"]]})
    mined = util.mine_hard_negatives(pairs, base, num_negatives=1, verbose=False)

    def mnrl(m, dataset, seed=seed):
        torch.manual_seed(seed)
        args = SentenceTransformerTrainingArguments(
            output_dir=tempfile.mkdtemp(), num_train_epochs=3, per_device_train_batch_size=16, learning_rate=5e-5,
            warmup_steps=5, seed=seed, batch_sampler=BatchSamplers.NO_DUPLICATES, logging_steps=1,
            save_strategy="no", eval_strategy="epoch", disable_tqdm=True)
        tr = SentenceTransformerTrainer(model=m, args=args, train_dataset=dataset,
                                        loss=losses.MultipleNegativesRankingLoss(m), evaluator=dev_evaluator)
        tr.train()
        key = "eval_dev_cosine_mrr@10"
        return [round(log[key], 3) for log in tr.state.log_history if key in log]

    for name, m, data in [("stage 1 + MNRL", stage1["CosineSimilarityLoss"], pairs),
                          ("MNRL alone", copy.deepcopy(base), pairs),
                          ("MNRL + hard negatives", copy.deepcopy(base), mined)]:
        t = time.perf_counter()
        dev = mnrl(m, data)
        r[name] = reciprocal_ranks(m).mean()
        r[name + " dev"] = dev
        timing[name] = time.perf_counter() - t
    r = {k: (round(float(v), 3) if not isinstance(v, list) else v) for k, v in r.items()}
    r["timing_s"] = {k: round(v, 1) for k, v in timing.items()}
    print(seed, json.dumps(r), flush=True)
    results[seed] = r
