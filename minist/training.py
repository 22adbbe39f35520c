"""Fine-tuning: ``model.fit(train_objectives=[(dataloader, loss)], ...)``, the sentence-transformers recipe.

A training example is an ``InputExample(texts=[...], label=...)``. ``fit`` makes a plain ``DataLoader``
of them yield tokenized batches (``collate``), then for each step takes one batch from every objective in
turn (round robin), computes its loss, and updates the model with AdamW (no weight decay on biases and
LayerNorm), a learning rate that rises linearly over ``warmup_steps`` and then falls linearly to zero, and
gradients clipped to ``max_grad_norm``. An evaluator, when given, runs after each epoch (and every
``evaluation_steps``); the best model is saved to ``output_path`` (the final one when there is no best: see
``fit``). Seed ``torch`` first for a repeatable run.

Nothing is trained on data that does not fit: before the first step, ``fit`` checks its settings and every
example against what each loss declares (``minist.losses.Loss``), and a refusal names the argument, or the
objective and the example index. ``minist.trainer`` builds the v3+ recipe (``SentenceTransformerTrainer``
on a ``datasets.Dataset``) on the same steps. Left out: multi-GPU, gradient accumulation, other schedulers.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from minist.inputs import check_count
from minist.losses import Loss


@dataclass
class InputExample:
    """One training example: its texts (one per column of the loss) and, for losses that need one, a label.

    The fields come in sentence-transformers' order (``guid``, ``texts``, ``label``); the label has no
    default here, so that a missing label is reported rather than read as 0. A loss that takes no labels
    (MultipleNegativesRankingLoss, TripletLoss) ignores them, whatever they are.
    """

    guid: str = ""
    texts: list[str] | None = None
    label: float | int | None = None

    def __post_init__(self):
        if not isinstance(self.texts, list | tuple) or not all(isinstance(t, str) for t in self.texts):
            raise TypeError(f"InputExample texts must be a list of strings, not {self.texts!r:.80}.")


def collate(model, examples: list[InputExample], use_labels: bool = True) -> tuple[list[dict], torch.Tensor]:
    """A batch of examples -> (one tokenized batch per text column, a tensor of labels; zeros if not used)."""
    columns = [model.tokenize([example.texts[i] for example in examples]) for i in range(len(examples[0].texts))]
    if not use_labels:  # a loss that takes no labels ignores them, whatever they are
        return columns, torch.zeros(len(examples))
    return columns, torch.tensor([example.label for example in examples])


def check_settings(optimizer_params: dict, max_grad_norm: float, **counts: int) -> None:
    """Refuse, naming the argument, a setting of ``fit`` that would train wrongly or not at all.

    ``counts`` are numbers of epochs, steps or examples: whole numbers, at least 0 for warm-up and the
    intervals (``warmup_steps``, ``evaluation_steps``, ``checkpoint_save_steps``; 0: none), at least 1 for the others.
    """
    if "weight_decay" in optimizer_params:  # the parameter groups would override it
        raise ValueError("Give weight_decay to fit itself, not in optimizer_params (biases and LayerNorm get none).")
    if not isinstance(optimizer_params["lr"], numbers.Real) or not optimizer_params["lr"] > 0:
        raise ValueError(f"The learning rate must be positive, not {optimizer_params['lr']!r}.")
    if not isinstance(max_grad_norm, numbers.Real) or not max_grad_norm > 0:  # a negative one flips the gradients
        raise ValueError(f"max_grad_norm must be positive, not {max_grad_norm!r}.")
    for name, value in counts.items():
        least = 0 if name in ("warmup_steps", "evaluation_steps", "checkpoint_save_steps") else 1
        check_count(name, value, least, hint="It counts steps: for a ratio, multiply it by the number of steps."
                    if name == "warmup_steps" else "")


def check_objective(objective, model, number: int) -> tuple[DataLoader, Loss]:
    """Refuse, before any training, an objective that cannot train ``model``, naming the objective and the example.

    The pair's types here; its loss and data in ``check_data``.
    """
    if not (isinstance(objective, tuple | list) and len(objective) == 2):
        raise TypeError(f"Training objective {number} must be a (DataLoader, loss) pair, not {objective!r:.80}; "
                        "train_objectives is a list of such pairs.")
    dataloader, loss = objective
    if not isinstance(dataloader, DataLoader) or not hasattr(dataloader.dataset, "__len__"):
        raise TypeError(f"Objective {number}: expected a DataLoader over a list of InputExample, "
                        f"not {dataloader!r:.80}.")
    if len(dataloader) == 0 or len(dataloader.dataset) == 0:
        raise ValueError(f"Training objective {number} has an empty DataLoader.")
    check_data(dataloader.dataset, loss, model, dataloader.batch_size, f"Objective {number}")
    return dataloader, loss


def check_data(examples: list[InputExample], loss: Loss, model, batch_size: int | None, where: str) -> None:
    """Refuse a loss and examples that cannot train ``model``; ``where`` names the data in the messages.

    Every minist loss inside ``loss`` is checked (MatryoshkaLoss's wrapped loss first): it must be built on
    ``model`` itself (refusing another instance is minist's choice: sentence-transformers would silently train
    that other model), and the examples must fit what it declares (``columns``, ``needs_labels``,
    ``label_range``, ``label_values``, ``min_batch_size``).
    """
    if not isinstance(loss, Loss):
        raise TypeError(f"{where}: the loss must be a minist loss such as losses.CoSENTLoss(model), "
                        f"not {type(loss).__module__}.{type(loss).__name__}.")
    parts = [part for part in loss.modules() if isinstance(part, Loss)][::-1]  # innermost first
    for part in parts:
        name = type(part).__name__ + ("" if part is loss else f" (inside {type(loss).__name__})")
        if part.model is not model:
            raise ValueError(f"{where}: the {name} was built on another model instance, and training would update "
                             f"that one. Build it on the model you train: losses.{type(part).__name__}(model).")
        if batch_size is not None and batch_size < part.min_batch_size:
            raise ValueError(f"{where}: {name} needs a batch_size of at least {part.min_batch_size}, "
                             f"not {batch_size}: it compares each example with the others of its batch "
                             "(its in-batch negatives, or the pairs it ranks); a batch of one has none, and the "
                             "loss is constantly 0.")
    for i, example in enumerate(examples):
        if not isinstance(example, InputExample):
            raise TypeError(f"{where}, example {i}: expected an InputExample, got {type(example).__name__}.")
        for part in parts:
            check_example(example, part, f"{where}, example {i}")


def check_example(example: InputExample, loss: Loss, where: str) -> None:
    """Refuse an example whose texts or label do not fit ``loss``; ``where`` names it in the message."""
    name, label = type(loss).__name__, example.label
    low, high = loss.columns
    if len(example.texts) < low or (high is not None and len(example.texts) > high):
        wanted = f"{low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
        raise ValueError(f"{where} has {len(example.texts)} texts; {name} takes {wanted}.")
    if not loss.needs_labels:
        return  # its label, if any, is ignored
    if label is None:
        raise ValueError(f"{where} has no label; {name} needs one.")
    if not isinstance(label, numbers.Real):
        raise TypeError(f"{where} has the label {label!r:.40} ({type(label).__name__}); {name} needs a number.")
    if not math.isfinite(label):
        raise ValueError(f"{where} has the label {label}; {name} needs a finite number.")
    if loss.label_values is not None and label not in loss.label_values:
        raise ValueError(f"{where} has the label {label}; {name} takes only "
                         f"{' or '.join(map(str, loss.label_values))}.")
    if loss.label_range is not None and not loss.label_range[0] <= label <= loss.label_range[1]:
        raise ValueError(f"{where} has the label {label}; {name} takes labels from {loss.label_range[0]} to "
                         f"{loss.label_range[1]}: scale it to 0-1 (a raw STS-B score 0-5: divide it by 5).")


def optimizer_for(loss: Loss, weight_decay: float, optimizer_params: dict) -> torch.optim.AdamW:
    """AdamW over the loss's parameters (the model's, plus any of the loss); biases and LayerNorm: no decay."""
    no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")
    named = list(loss.named_parameters())
    groups = [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, **optimizer_params)  # an unknown key: AdamW's TypeError names it


def fit(model, train_objectives: list[tuple[DataLoader, Loss]], evaluator=None, epochs: int = 1,
        steps_per_epoch: int | None = None, warmup_steps: int = 10000, optimizer_params: dict | None = None,
        weight_decay: float = 0.01, max_grad_norm: float = 1, evaluation_steps: int = 0,
        output_path: str | Path | None = None, save_best_model: bool = True, show_progress_bar: bool = True,
        use_amp: bool = False, checkpoint_path: str | Path | None = None, checkpoint_save_steps: int = 500) -> None:
    """Train ``model`` in place; the loss of every step is appended to ``model.training_history``.

    >>> model.fit([(DataLoader(examples, batch_size=16), losses.CoSENTLoss(model))], epochs=1)  # doctest: +SKIP

    Everything is checked before the first step, so a refusal leaves the weights untouched: the settings
    (``check_settings``) and every example of every objective (``check_objective``). ``optimizer_params`` go
    to AdamW (``{"lr": 2e-5}`` by default). ``output_path`` always ends up with a model: the best one when an
    evaluator scores the model and ``save_best_model`` is set; else the final one (no evaluator,
    ``save_best_model=False``, or an evaluator whose score was never a number, e.g. NaN: a warning names it).
    """
    check_trainable(model)
    optimizer_params = {"lr": 2e-5, **(optimizer_params or {})}
    check_settings(optimizer_params, max_grad_norm, epochs=epochs, warmup_steps=warmup_steps,
                   evaluation_steps=evaluation_steps, checkpoint_save_steps=checkpoint_save_steps,
                   **({} if steps_per_epoch is None else {"steps_per_epoch": steps_per_epoch}))
    if not train_objectives:
        raise ValueError("fit needs at least one (DataLoader, loss) training objective.")
    train_objectives = [check_objective(objective, model, n) for n, objective in enumerate(train_objectives)]
    for dataloader, loss in train_objectives:  # a plain DataLoader, tokenized
        dataloader.collate_fn = functools.partial(collate, model, use_labels=loss.needs_labels)
    steps_per_epoch = steps_per_epoch or min(len(dataloader) for dataloader, _ in train_objectives)
    optimizers = [optimizer_for(loss, weight_decay, optimizer_params) for _, loss in train_objectives]
    schedulers = [get_linear_schedule_with_warmup(o, warmup_steps, steps_per_epoch * epochs) for o in optimizers]
    iterators = [iter(dataloader) for dataloader, _ in train_objectives]
    autocast, scaler = mixed_precision(model, (torch.float16 if model.device.type == "cuda" else torch.bfloat16)
                                       if use_amp else None)
    model.training_history, model.evaluation_history, model.best_score = [], [], -math.inf
    step, saved = 0, False
    for epoch in range(epochs):
        model.train()
        bar = tqdm(range(steps_per_epoch), desc=f"Epoch {epoch + 1}/{epochs}", disable=not show_progress_bar)
        for _ in bar:
            for number, ((dataloader, loss), optimizer, scheduler) in enumerate(
                    zip(train_objectives, optimizers, schedulers, strict=True)):
                try:
                    batch = next(iterators[number])
                except StopIteration:  # this objective's data is used up: start it again
                    iterators[number] = iter(dataloader)
                    batch = next(iterators[number])
                value = batch_loss(model, loss, batch, autocast)
                update(value, loss, optimizer, scheduler, scaler, max_grad_norm)
                model.training_history.append({"step": step, "epoch": epoch, "objective": number,
                                               "loss": value.item(), "lr": scheduler.get_last_lr()[0]})
            step += 1
            bar.set_postfix(loss=f"{model.training_history[-1]['loss']:.4f}")
            if evaluation_steps and step % evaluation_steps == 0:
                saved |= _evaluate(model, evaluator, output_path, save_best_model, epoch, step)
            if checkpoint_path is not None and checkpoint_save_steps and step % checkpoint_save_steps == 0:
                model.save(Path(checkpoint_path) / f"checkpoint-{step}")
        saved |= _evaluate(model, evaluator, output_path, save_best_model, epoch, -1)
    model.eval()
    if output_path is not None and not saved:
        if evaluator is not None and save_best_model:  # every score was NaN: nothing was ever "the best"
            scores = [h[evaluator.primary_metric] for h in model.evaluation_history]
            warnings.warn(f"The evaluator's {evaluator.primary_metric} was never a usable score ({scores}), so no "
                          f"best model was saved; saving the final model to {output_path}.", stacklevel=2)
        model.save(output_path)


def check_trainable(model) -> None:
    """Refuse a model whose weights are not float32 torch tensors that an optimizer can update."""
    if model.quantize == "int8" or model.backend == "onnx":
        raise ValueError("An int8-quantized or ONNX model cannot be trained: fine-tune the float32 model, save "
                         "it, then load it with quantize='int8' or backend='onnx'.")


def mixed_precision(model, dtype: torch.dtype | None) -> tuple[torch.autocast, torch.amp.GradScaler]:
    """(autocast context, gradient scaler) for training in ``dtype`` (None: float32, both disabled).

    The scaler (float16 only) scales the loss so that float16 gradients do not underflow; when disabled it
    passes everything through unchanged. The weights stay float32 either way.
    """
    autocast = torch.autocast(model.device.type, enabled=dtype is not None, dtype=dtype or torch.bfloat16)
    return autocast, torch.amp.GradScaler(model.device.type, enabled=dtype == torch.float16)


def batch_loss(model, loss: Loss, batch: tuple[list[dict], torch.Tensor], autocast) -> torch.Tensor:
    """The loss of one ``collate``d batch, moved to the model's device: a scalar tensor that can backpropagate."""
    features, labels = batch
    features = [{k: v.to(model.device) for k, v in column.items()} for column in features]
    with autocast:
        return loss(features, labels.to(model.device))


def update(value: torch.Tensor, loss: Loss, optimizer, scheduler, scaler, max_grad_norm: float) -> float:
    """One optimizer step: backward, clip the gradients' norm, step, then the learning-rate schedule.

    Returns the gradients' total norm before clipping (what the Hugging Face Trainer logs as ``grad_norm``).
    """
    scaler.scale(value).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(loss.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    scheduler.step()
    return grad_norm.item()


def _evaluate(model, evaluator, output_path, save_best_model: bool, epoch: int, steps: int) -> bool:
    """Run the evaluator; save the model to ``output_path`` when its primary score is the best so far.

    Returns whether it saved. A NaN score is never the best (``nan > x`` is False).
    """
    if evaluator is None:
        return False
    model.eval()
    # As in sentence-transformers, the evaluator's results go to an eval/ subfolder of the model's folder.
    eval_path = None if output_path is None else Path(output_path) / "eval"
    metrics = evaluator(model, output_path=eval_path, epoch=epoch, steps=steps)
    score = metrics[evaluator.primary_metric]
    model.evaluation_history.append({"epoch": epoch, "steps": steps, **metrics})
    saved = False
    if score > model.best_score:
        model.best_score = score
        if save_best_model and output_path is not None:
            model.save(output_path)
            saved = True
    model.train()
    return saved
