"""Fine-tune all-MiniLM-L6-v2 on STS-B train with minist and with sentence-transformers, in one run.

    .venv/bin/python benchmarks/finetune_stsb.py [--recipe fit|trainer] [--epochs 1] [--batch-size 16] [--seed 42]

The recipe of the sentence-transformers STS-B example: CosineSimilarityLoss on the train split's pairs
(scores / 5), warm-up over the first 10% of the steps, AdamW at 2e-5. ``--recipe fit`` (the default) trains
through ``model.fit`` on InputExamples, ``--recipe trainer`` through ``SentenceTransformerTrainer`` on a
``datasets.Dataset`` (the v3+ recipe). Both libraries start from the same weights, with the same seed and
batch order. Reports the STS-B test Spearman (cosine, x100) before and after for each, and the ratio of
training times. Reads STS-B from data/stsb.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import sentence_transformers
import torch
from datasets import Dataset
from sentence_transformers import InputExample as STInputExample
from sentence_transformers import SentenceTransformer as STModel
from sentence_transformers.sentence_transformer import losses as st_losses
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator as STEvaluator
from stsb import read_stsb
from torch.utils.data import DataLoader

import minist
from minist import InputExample, SentenceTransformer, losses
from minist.evaluation import EmbeddingSimilarityEvaluator
from minist.hub import resolve_model_folder


def run(library: str, folder: Path, train, test, args) -> dict:
    model_class, example_class, loss_module, evaluator_class = {
        "minist": (SentenceTransformer, InputExample, losses, EmbeddingSimilarityEvaluator),
        "sentence-transformers": (STModel, STInputExample, st_losses, STEvaluator)}[library]
    torch.manual_seed(args.seed)
    model = model_class(str(folder), device="cpu")
    evaluator = evaluator_class(*map(list, zip(*test, strict=True)), name="sts-test")
    before = 100 * evaluator(model)["sts-test_spearman_cosine"]
    loss = loss_module.CosineSimilarityLoss(model)
    if args.recipe == "fit":
        examples = [example_class(texts=[a, b], label=score) for a, b, score in train]
        torch.manual_seed(args.seed)  # the same shuffling for both
        loader = DataLoader(examples, shuffle=True, batch_size=args.batch_size)
        start = time.perf_counter()
        model.fit(train_objectives=[(loader, loss)], epochs=args.epochs, show_progress_bar=False,
                  warmup_steps=math.ceil(len(loader) * args.epochs * 0.1))
        seconds, steps = time.perf_counter() - start, len(loader) * args.epochs
    else:  # the v3+ recipe, the same snippet for both libraries
        library_module = minist if library == "minist" else sentence_transformers
        sentences1, sentences2, scores = map(list, zip(*train, strict=True))
        dataset = Dataset.from_dict({"sentence1": sentences1, "sentence2": sentences2, "score": scores})
        with tempfile.TemporaryDirectory() as output_dir:
            training_args = library_module.SentenceTransformerTrainingArguments(
                output_dir=output_dir, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
                learning_rate=2e-5, warmup_ratio=0.1, seed=args.seed, save_strategy="no", report_to="none")
            trainer = library_module.SentenceTransformerTrainer(model=model, args=training_args, loss=loss,
                                                                train_dataset=dataset)
            start = time.perf_counter()
            steps = trainer.train().global_step
            seconds = time.perf_counter() - start
    after = 100 * evaluator(model)["sts-test_spearman_cosine"]
    return {"before": before, "after": after, "seconds": seconds, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=["fit", "trainer"], default="fit")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    folder = resolve_model_folder("all-MiniLM-L6-v2")
    train, test = ([(a, b, score / 5) for a, b, score in read_stsb(split)] for split in ("train", "test"))
    print(f"STS-B train {len(train)} pairs, test {len(test)} pairs; recipe {args.recipe}, {args.epochs} epoch(s), "
          f"batch {args.batch_size}, "
          f"seed {args.seed}, {torch.get_num_threads()} threads")
    results = {name: run(name, folder, train, test, args) for name in ("minist", "sentence-transformers")}
    for name, r in results.items():
        print(f"{name:>22}: Spearman x100 before {r['before']:.2f}, after {r['after']:.2f}; "
              f"{r['steps']} steps in {r['seconds']:.0f} s")
    ours, theirs = results["minist"], results["sentence-transformers"]
    print(f"after: minist - sentence-transformers = {ours['after'] - theirs['after']:+.2f} points")
    print(f"training time ratio sentence-transformers / minist: {theirs['seconds'] / ours['seconds']:.2f}")


if __name__ == "__main__":
    main()
