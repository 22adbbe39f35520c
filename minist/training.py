"""Fine-tuning: ``model.fit(train_objectives=[(dataloader, loss)], ...)``, the sentence-transformers recipe.

A training example is an ``InputExample(texts=[...], label=...)``. ``fit`` makes a plain ``DataLoader``
of them yield tokenized batches (``collate``), then for each step takes one batch from every objective in
turn (round robin), computes its loss, and updates the model with AdamW (no weight decay on biases and
LayerNorm), a learning rate that rises linearly over ``warmup_steps`` and then falls linearly to zero, and
gradients clipped to ``max_grad_norm``. An evaluator, when given, runs after each epoch (and every
``evaluation_steps``); the best model is saved to ``output_path``. Seed ``torch`` first for a repeatable run.
Left out: the Hugging Face ``Trainer`` path, multi-GPU, gradient accumulation, other schedulers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from minist.losses import Loss


@dataclass
class InputExample:
    """One training example: its texts (one per column of the loss) and, for losses that need one, a label.

    The fields come in sentence-transformers' order (``guid``, ``texts``, ``label``); the label has no
    default here, so that a missing label is reported rather than read as 0.
    """

    guid: str = ""
    texts: list[str] | None = None
    label: float | int | None = None

    def __post_init__(self):
        if not isinstance(self.texts, list | tuple) or not all(isinstance(t, str) for t in self.texts):
            raise TypeError(f"InputExample texts must be a list of strings, not {self.texts!r:.80}.")


def collate(model, examples: list[InputExample]) -> tuple[list[dict], torch.Tensor]:
    """A batch of examples -> (one tokenized batch per text column, a tensor of labels)."""
    columns = [model.tokenize([example.texts[i] for example in examples]) for i in range(len(examples[0].texts))]
    return columns, torch.tensor([0 if example.label is None else example.label for example in examples])


def check_objective(dataloader: DataLoader, loss: Loss, number: int) -> None:
    """Refuse, before any training, data that does not fit the loss: naming the objective and the example."""
    if len(dataloader) == 0 or len(dataloader.dataset) == 0:
        raise ValueError(f"Training objective {number} has an empty DataLoader.")
    low, high = loss.columns
    for i, example in enumerate(dataloader.dataset):
        if not isinstance(example, InputExample):
            raise TypeError(f"Objective {number}, example {i}: expected an InputExample, got {type(example).__name__}.")
        if len(example.texts) < low or (high is not None and len(example.texts) > high):
            wanted = f"{low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
            raise ValueError(f"Objective {number}, example {i} has {len(example.texts)} texts; "
                             f"{type(loss).__name__} takes {wanted}.")
        if loss.needs_labels and example.label is None:
            raise ValueError(f"Objective {number}, example {i} has no label; {type(loss).__name__} needs one.")


def optimizer_for(loss: Loss, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the loss's parameters (the model's, plus any of the loss); biases and LayerNorm: no decay."""
    no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")
    named = list(loss.named_parameters())
    groups = [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def fit(model, train_objectives: list[tuple[DataLoader, Loss]], evaluator=None, epochs: int = 1,
        steps_per_epoch: int | None = None, warmup_steps: int = 10000, optimizer_params: dict | None = None,
        weight_decay: float = 0.01, max_grad_norm: float = 1, evaluation_steps: int = 0,
        output_path: str | Path | None = None, save_best_model: bool = True, show_progress_bar: bool = True,
        use_amp: bool = False, checkpoint_path: str | Path | None = None, checkpoint_save_steps: int = 500) -> None:
    """Train ``model`` in place; the loss of every step is appended to ``model.training_history``."""
    if model.quantize == "int8" or model.backend == "onnx":
        raise ValueError("An int8-quantized or ONNX model cannot be trained: fine-tune the float32 model, save "
                         "it, then load it with quantize='int8' or backend='onnx'.")
    lr = (optimizer_params or {"lr": 2e-5}).get("lr", 2e-5)
    if not lr > 0:
        raise ValueError(f"The learning rate must be positive, not {lr}.")
    if not train_objectives:
        raise ValueError("fit needs at least one (DataLoader, loss) training objective.")
    for number, (dataloader, loss) in enumerate(train_objectives):
        check_objective(dataloader, loss, number)
        dataloader.collate_fn = lambda examples: collate(model, examples)  # a plain DataLoader, tokenized
    steps_per_epoch = steps_per_epoch or min(len(dataloader) for dataloader, _ in train_objectives)
    optimizers = [optimizer_for(loss, lr, weight_decay) for _, loss in train_objectives]
    schedulers = [get_linear_schedule_with_warmup(o, warmup_steps, steps_per_epoch * epochs) for o in optimizers]
    iterators = [iter(dataloader) for dataloader, _ in train_objectives]
    autocast = torch.autocast(model.device.type, enabled=use_amp,
                              dtype=torch.float16 if model.device.type == "cuda" else torch.bfloat16)
    scaler = torch.amp.GradScaler(model.device.type, enabled=use_amp and model.device.type == "cuda")
    model.training_history, model.evaluation_history, model.best_score = [], [], -math.inf
    step = 0
    for epoch in range(epochs):
        model.train()
        bar = tqdm(range(steps_per_epoch), desc=f"Epoch {epoch + 1}/{epochs}", disable=not show_progress_bar)
        for _ in bar:
            for number, ((dataloader, loss), optimizer, scheduler) in enumerate(
                    zip(train_objectives, optimizers, schedulers, strict=True)):
                try:
                    features, labels = next(iterators[number])
                except StopIteration:  # this objective's data is used up: start it again
                    iterators[number] = iter(dataloader)
                    features, labels = next(iterators[number])
                features = [{k: v.to(model.device) for k, v in column.items()} for column in features]
                with autocast:
                    value = loss(features, labels.to(model.device))
                _update(value, loss, optimizer, scheduler, scaler, max_grad_norm)
                model.training_history.append({"step": step, "epoch": epoch, "objective": number,
                                               "loss": value.item(), "lr": scheduler.get_last_lr()[0]})
            step += 1
            bar.set_postfix(loss=f"{model.training_history[-1]['loss']:.4f}")
            if evaluation_steps and step % evaluation_steps == 0:
                _evaluate(model, evaluator, output_path, save_best_model, epoch, step)
            if checkpoint_path is not None and checkpoint_save_steps and step % checkpoint_save_steps == 0:
                model.save(Path(checkpoint_path) / f"checkpoint-{step}")
        _evaluate(model, evaluator, output_path, save_best_model, epoch, -1)
    model.eval()
    if evaluator is None and output_path is not None:
        model.save(output_path)


def _update(value: torch.Tensor, loss: Loss, optimizer, scheduler, scaler, max_grad_norm: float) -> None:
    """One optimizer step: backward, clip the gradients' norm, step, then the learning-rate schedule.

    The scaler (mixed precision on CUDA) scales the loss so that float16 gradients do not underflow;
    when disabled it passes everything through unchanged.
    """
    scaler.scale(value).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(loss.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    scheduler.step()


def _evaluate(model, evaluator, output_path, save_best_model: bool, epoch: int, steps: int) -> None:
    """Run the evaluator; save the model to ``output_path`` when its primary score is the best so far."""
    if evaluator is None:
        return
    model.eval()
    # As in sentence-transformers, the evaluator's results go to an eval/ subfolder of the model's folder.
    eval_path = None if output_path is None else Path(output_path) / "eval"
    metrics = evaluator(model, output_path=eval_path, epoch=epoch, steps=steps)
    score = metrics[evaluator.primary_metric]
    model.evaluation_history.append({"epoch": epoch, "steps": steps, **metrics})
    if score > model.best_score:
        model.best_score = score
        if save_best_model and output_path is not None:
            model.save(output_path)
    model.train()
