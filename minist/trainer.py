"""Fine-tuning the sentence-transformers v3+ way: ``SentenceTransformerTrainer(model, args, train_dataset, loss)``.

Since version 3, sentence-transformers trains through a subclass of the Hugging Face ``Trainer``, fed a
``datasets.Dataset``: every column is an input text, in order, except the label column (the first of
"label", "labels", "score", "scores" present). minist mirrors the common arguments on its own loop
(``minist.training``): each row becomes an ``InputExample``, checked against the loss as ``fit`` checks its
data, then every step is fit's (``collate``, ``batch_loss``, ``update``: AdamW without decay on biases and
LayerNorm, a linear warm-up and decay). The batches are drawn as upstream's samplers draw them, so the same
seed and data give upstream's losses, step by step (tests/test_trainer.py). ``trainer.state.log_history``
holds what upstream's does: ``loss``, ``grad_norm`` and ``learning_rate`` every ``logging_steps``, and the
``eval_``-prefixed metrics (eval loss, evaluators) after each evaluation.

Left out: several datasets or losses (``DatasetDict``), ``IterableDataset``, prompts, router mappings,
callbacks, gradient accumulation, other schedulers and optimizers, the GROUP_BY_LABEL sampler, resuming
(a checkpoint holds the model only), ``load_best_model_at_end``, multi-GPU, model cards and the Hub.
Such an argument is refused by name rather than ignored.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup, set_seed

from minist import training
from minist.losses import CoSENTLoss, Loss
from minist.samplers import trainer_batches
from minist.training import InputExample
from minist.training_args import SentenceTransformerTrainingArguments

LABEL_COLUMNS = ("label", "labels", "score", "scores")  # upstream's: the first one present holds the labels


@dataclass
class TrainerState:
    """Where training stands, as upstream's ``trainer.state``: steps done, epochs done (a float), and the logs."""

    global_step: int = 0
    epoch: float = 0.0
    log_history: list[dict] = field(default_factory=list)


class TrainOutput(NamedTuple):
    """What ``train`` returns, as upstream's: steps done, the mean training loss, and the final metrics."""

    global_step: int
    training_loss: float
    metrics: dict[str, float]


class SentenceTransformerTrainer:
    """Trains ``model`` on ``train_dataset`` with ``loss`` (CoSENTLoss if None), as upstream's trainer does.

    >>> SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss).train()  # doctest: +SKIP

    The arguments, every row and ``output_dir`` are checked here, before any training. ``evaluator`` (one, or a
    list) runs with the eval loss on ``eval_dataset`` whenever ``args.eval_strategy`` says, or on ``evaluate()``.
    """

    def __init__(self, model, args: SentenceTransformerTrainingArguments | None = None, train_dataset=None,
                 eval_dataset=None, loss: Loss | Callable | None = None, evaluator=None):
        training.check_trainable(model)
        self.model, self.args = model, SentenceTransformerTrainingArguments() if args is None else args
        if not isinstance(self.args, SentenceTransformerTrainingArguments):
            raise TypeError("args must be minist's SentenceTransformerTrainingArguments, not "
                            f"{type(self.args).__module__}.{type(self.args).__name__}.")
        if loss is None or isinstance(loss, torch.nn.Module):
            self.loss = self.default_loss(model) if loss is None else loss
        else:  # a class or function of the model, as upstream takes
            self.loss = loss(model)
        training.check_data([], self.loss, model, None, "SentenceTransformerTrainer")  # the loss; the rows below
        self.evaluators = [] if evaluator is None else list(evaluator) if isinstance(evaluator, list) else [evaluator]
        if self.args.eval_strategy != "no" and eval_dataset is None and evaluator is None:
            raise ValueError(f"eval_strategy is {self.args.eval_strategy!r}, but there is no eval_dataset or "
                             "evaluator: give one, or set eval_strategy='no'.")
        set_seed(self.args.seed)  # as the Hugging Face Trainer: torch, numpy and random, e.g. for dropout
        self.train_examples = self._examples(train_dataset, "train_dataset", self.args.per_device_train_batch_size)
        self.eval_examples = self._examples(eval_dataset, "eval_dataset", self.args.per_device_eval_batch_size)
        if self.args.save_strategy != "no" or self.evaluators:
            self._check_output_dir()
        self.state = TrainerState()

    def _check_output_dir(self) -> None:
        """Create ``output_dir`` and write there once, as upstream creates it, so that a folder that cannot take
        checkpoints or evaluator results is refused now rather than at the first save, hundreds of steps in."""
        folder = Path(self.args.output_dir)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"output_dir '{folder}' is a file, and the checkpoints and evaluator results "
                                     "go in a folder: give another output_dir.")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()  # a real write: permissions, ACLs, a read-only mount
        except OSError as error:
            raise type(error)(f"output_dir '{folder}' cannot be written ({error.strerror or error}): give an "
                              "output_dir you may write to.") from error

    def default_loss(self, model) -> Loss:
        """The loss when none is given, as upstream's: CoSENTLoss."""
        return CoSENTLoss(model)

    def _examples(self, dataset, name: str, batch_size: int) -> list[InputExample] | None:
        """The rows of a ``datasets.Dataset`` as InputExamples, checked against the loss (``check_data``)."""
        if dataset is None:
            return None
        columns = getattr(dataset, "column_names", None)
        if not isinstance(columns, list):  # a DatasetDict has a dict of them
            raise TypeError(f"{name} must be one datasets.Dataset, not {type(dataset).__name__}: minist's trainer "
                            "leaves out DatasetDict (several datasets) and IterableDataset.")
        if len(dataset) == 0:  # first: the columns of Dataset.from_dict({"s1": [], ...}) hold null, not text
            raise ValueError(f"{name} is empty: it has no rows. Check what it was built or filtered from.")
        label = next((column for column in LABEL_COLUMNS if column in columns), None)
        texts = [column for column in columns if column != label]
        for column in texts:
            dtype = getattr(dataset.features[column], "dtype", type(dataset.features[column]).__name__)
            if dtype not in ("string", "large_string"):
                raise TypeError(f"{name} column {column!r} holds {dtype}, not text: every column but the label (the "
                                f"first of {', '.join(LABEL_COLUMNS)}) is a text. Drop it with "
                                f"{name}.remove_columns([{column!r}]), or rename it if it is the label.")
        if label is None and self.loss.needs_labels:
            raise ValueError(f"{type(self.loss).__name__} needs labels, and {name} has no label column (named "
                             f"{', '.join(LABEL_COLUMNS)}): all its columns {columns} are texts.")
        values = [list(dataset[column]) for column in texts]
        labels = list(dataset[label]) if label else [None] * len(dataset)
        examples = [InputExample(texts=list(row), label=value) for *row, value in zip(*values, labels, strict=True)]
        training.check_data(examples, self.loss, self.model, batch_size, name)
        return examples

    def _batches(self, examples: list[InputExample], batch_size: int, epoch: int) -> list[list[int]]:
        """One epoch's batches of row indices, drawn as upstream's samplers draw them (``minist.samplers``)."""
        args = self.args
        return trainer_batches(examples, batch_size, epoch, args.batch_sampler, args.seed, args.data_seed,
                               args.dataloader_drop_last)

    def _precision(self):
        """(autocast, gradient scaler) for ``bf16`` or ``fp16``; both disabled for float32."""
        if self.args.fp16 and self.model.device.type != "cuda":
            raise ValueError("fp16 needs a CUDA GPU; on the CPU, use bf16.")
        dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
        return training.mixed_precision(self.model, dtype)

    def _loss(self, examples: list[InputExample], indices: list[int], autocast) -> torch.Tensor:
        batch = training.collate(self.model, [examples[i] for i in indices], self.loss.needs_labels)
        return training.batch_loss(self.model, self.loss, batch, autocast)

    def train(self) -> TrainOutput:
        """Train the model in place; returns (steps, mean training loss, metrics) as upstream's ``train``."""
        if self.train_examples is None:
            raise ValueError("Training needs a train_dataset.")
        args, model, examples, start = self.args, self.model, self.train_examples, time.perf_counter()
        size = args.per_device_train_batch_size
        per_epoch = len(examples) // size if args.dataloader_drop_last else math.ceil(len(examples) / size)
        if per_epoch == 0:
            raise ValueError(f"train_dataset has {len(examples)} rows, fewer than a batch, and dataloader_drop_last "
                             "drops that one batch.")
        total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
        counts = {name: math.ceil(total * value) if value < 1 else int(value) for name, value in [  # below 1: a ratio
            ("log", args.logging_steps), ("save", args.save_steps), ("warmup", args.warmup_ratio or args.warmup_steps),
            ("eval", args.logging_steps if args.eval_steps is None else args.eval_steps)]}
        optimizer = training.optimizer_for(self.loss, args.weight_decay, {
            "lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon,
            "fused": args.optim == "adamw_torch_fused"})
        scheduler = get_linear_schedule_with_warmup(optimizer, counts["warmup"], total)
        autocast, scaler = self._precision()
        self.state, losses, logged = TrainerState(), [], 0
        optimizer.zero_grad()
        bar = tqdm(total=total, desc="Training", disable=args.disable_tqdm)
        for epoch in range(math.ceil(total / per_epoch)):
            for i, indices in enumerate(self._batches(examples, size, epoch)):
                model.train()  # every step, as upstream: an evaluator's encode leaves the model in eval mode
                learning_rate = scheduler.get_last_lr()[0]  # this step's, which upstream logs
                value = self._loss(examples, indices, autocast)
                grad_norm = training.update(value, self.loss, optimizer, scheduler, scaler,
                                            args.max_grad_norm or math.inf)
                losses.append(value.item())
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                step = self.state.global_step = self.state.global_step + 1
                self.state.epoch = epoch + (i + 1) / per_epoch
                if step % counts["log"] == 0:  # the mean loss since the last log
                    self._log(loss=sum(losses[logged:]) / (step - logged), grad_norm=grad_norm,
                              learning_rate=learning_rate)
                    logged = step
                self._evaluate_and_save(args.eval_strategy == "steps" and (step % counts["eval"] == 0 or step == total),
                                        args.save_strategy == "steps" and (step % counts["save"] == 0 or step == total))
                if step == total:
                    break
            self._evaluate_and_save(args.eval_strategy == "epoch", args.save_strategy == "epoch")
        bar.close()
        model.eval()  # as fit leaves it
        metrics = {"train_runtime": time.perf_counter() - start, "train_loss": sum(losses) / len(losses)}
        self._log(**metrics)
        return TrainOutput(self.state.global_step, metrics["train_loss"], metrics)

    def evaluate(self) -> dict[str, float]:
        """The loss on ``eval_dataset`` (its batches' mean, weighted as upstream's) and every evaluator's metrics,
        keys prefixed ``eval_`` as upstream's; the evaluators write their CSV files to ``output_dir/eval``."""
        model, examples, metrics, was_training = self.model, self.eval_examples, {}, self.model.training
        model.eval()
        if examples is not None:
            size, autocast = self.args.per_device_eval_batch_size, self._precision()[0]
            batches = self._batches(examples, size, 0)  # a first epoch's: upstream's eval sampler is new each time
            with torch.no_grad():
                values = [self._loss(examples, indices, autocast).item() for indices in batches]
            # Upstream counts each batch's loss batch_size times, but the last only as often as rows remain.
            weights = [size] * len(values)
            if weights and not self.args.dataloader_drop_last and len(examples) % size:
                weights[-1] = len(examples) % size
            kept = [(value, weight) for value, weight in zip(values, weights, strict=True) if math.isfinite(value)]
            metrics["eval_loss"] = sum(v * w for v, w in kept) / sum(w for _, w in kept) if kept else math.nan
        for evaluator in self.evaluators:
            results = evaluator(model, output_path=str(Path(self.args.output_dir) / "eval"), epoch=self.state.epoch,
                                steps=self.state.global_step)
            metrics |= {key if key.startswith("eval_") else f"eval_{key}": value for key, value in results.items()}
        model.train(was_training)
        return metrics

    def _evaluate_and_save(self, evaluate: bool, save: bool) -> None:
        if evaluate:
            self._log(**self.evaluate())
        if save:  # the model only: minist's checkpoints do not resume training
            folder = Path(self.args.output_dir)
            self.model.save(folder / f"checkpoint-{self.state.global_step}")
            steps = {int(match[1]): path for path in folder.iterdir()  # a user's checkpoint-final stays, as upstream
                     if (match := re.fullmatch(r"checkpoint-(\d+)", path.name)) and path.is_dir()}
            checkpoints = [steps[step] for step in sorted(steps)]
            limit = self.args.save_total_limit or 0  # None, 0 or less: keep them all, as upstream
            for old in checkpoints[:-limit] if limit > 0 else []:
                shutil.rmtree(old)

    def _log(self, **values: float) -> None:
        self.state.log_history.append({**values, "epoch": self.state.epoch, "step": self.state.global_step})
