"""Training arguments for ``SentenceTransformerTrainer`` (``minist.trainer``), where sentence-transformers keeps them.

``SentenceTransformerTrainingArguments`` holds the common arguments of sentence-transformers' class of that
name (itself the Hugging Face ``TrainingArguments``, plus ``batch_sampler``), with the same defaults, so that
``from sentence_transformers.training_args import BatchSamplers`` runs with ``minist`` in its place. What minist
leaves out is refused by name: the other arguments of the Hugging Face class, and values minist does not
implement (another scheduler or optimizer, the GROUP_BY_LABEL sampler), since ignoring them would change the
training without a word.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import StrEnum

from minist.training import check_settings

CHOICES = {"eval_strategy": ("no", "steps", "epoch"), "save_strategy": ("no", "steps", "epoch"),
              "lr_scheduler_type": ("linear",), "optim": ("adamw_torch_fused", "adamw_torch")}


class BatchSamplers(StrEnum):
    """How rows are grouped into batches, under upstream's names (GROUP_BY_LABEL is refused)."""

    BATCH_SAMPLER = "batch_sampler"  # shuffled, then cut into batches
    NO_DUPLICATES = "no_duplicates"  # no text twice in a batch: in-batch negatives (MultipleNegativesRankingLoss)
    NO_DUPLICATES_HASHED = "no_duplicates_hashed"  # upstream compares hashes of the texts: the same batches
    GROUP_BY_LABEL = "group_by_label"


@dataclass
class SentenceTransformerTrainingArguments:
    """The common training arguments of sentence-transformers (and of the Hugging Face ``TrainingArguments``
    below them), with their defaults. An argument of upstream's that minist leaves out is refused by name, and so
    is a value minist does not mirror (``lr_scheduler_type="cosine"``); ``report_to`` and ``run_name`` are ignored.

    >>> args = SentenceTransformerTrainingArguments(output_dir="out", num_train_epochs=1, warmup_ratio=0.1)
    >>> args.batch_sampler, args.learning_rate  # upstream's defaults
    (<BatchSamplers.BATCH_SAMPLER: 'batch_sampler'>, 5e-05)
    """

    output_dir: str | None = None  # checkpoints go to output_dir/checkpoint-<step>, evaluator results to .../eval
    num_train_epochs: float = 3.0
    max_steps: int = -1  # above 0: this many steps, whatever num_train_epochs
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    learning_rate: float = 5e-5
    weight_decay: float = 0.0  # never on biases and LayerNorm
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optim: str = "adamw_torch_fused"  # or "adamw_torch": the same AdamW, another kernel
    lr_scheduler_type: str = "linear"
    warmup_ratio: float | None = None  # the fraction of the steps spent warming up
    warmup_steps: float = 0  # the number of them (below 1: a fraction)
    max_grad_norm: float = 1.0  # 0: no clipping
    seed: int = 42
    data_seed: int | None = None  # the shuffling's seed, if not seed (not NO_DUPLICATES's, as upstream)
    batch_sampler: BatchSamplers | str = BatchSamplers.BATCH_SAMPLER
    dataloader_drop_last: bool = False
    eval_strategy: str = "no"  # "steps": every eval_steps and at the end; "epoch": after each epoch
    eval_steps: float | None = None  # None: logging_steps; below 1, as every *_steps: a fraction of the steps
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None  # keep only this many, the newest; None, 0 or less: all, as upstream
    logging_steps: float = 500
    bf16: bool = False
    fp16: bool = False  # CUDA only
    disable_tqdm: bool = False  # True: no progress bar
    report_to: str | list[str] | None = None  # ignored: the logs are in trainer.state.log_history
    run_name: str | None = None  # ignored

    def __new__(cls, *args, **kwargs):
        # The generated __init__ would only say "unexpected keyword argument"; say whether upstream has it.
        if unknown := sorted(set(kwargs) - {f.name for f in dataclasses.fields(cls)}):
            from transformers import TrainingArguments

            upstream = {f.name for f in dataclasses.fields(TrainingArguments)} | {
                "prompts", "multi_dataset_batch_sampler", "router_mapping", "learning_rate_mapping"}
            left_out, typos = [n for n in unknown if n in upstream], [n for n in unknown if n not in upstream]
            message = [f"minist's trainer leaves out {', '.join(left_out)} (sentence-transformers has it): remove "
                       "it, or train with sentence-transformers."] if left_out else []
            raise TypeError(" ".join(message + ([f"Unknown argument {', '.join(typos)}."] if typos else [])))
        return super().__new__(cls)

    def __post_init__(self):
        self.output_dir = "trainer_output" if self.output_dir is None else self.output_dir  # upstream's default
        sampler = getattr(self.batch_sampler, "value", self.batch_sampler)
        if sampler not in ("batch_sampler", "no_duplicates", "no_duplicates_hashed"):
            raise ValueError(f"batch_sampler must be BatchSamplers.BATCH_SAMPLER or NO_DUPLICATES, not "
                             f"{self.batch_sampler!r}: minist leaves out GROUP_BY_LABEL and custom samplers.")
        self.batch_sampler = BatchSamplers(sampler)
        for name, allowed in CHOICES.items():  # strings, or upstream's enums whose value is the string
            value = getattr(getattr(self, name), "value", getattr(self, name))
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: minist's trainer takes only {' or '.join(map(repr, allowed))}.")
            setattr(self, name, value)
        check_settings({"lr": self.learning_rate}, self.max_grad_norm or math.inf, per_device_train_batch_size=
                       self.per_device_train_batch_size, per_device_eval_batch_size=self.per_device_eval_batch_size)
        # Finite too: math.ceil(inf) in train() would be a raw OverflowError (upstream's, too).
        for name in ("num_train_epochs", "logging_steps", "save_steps", "eval_steps"):  # eval_steps may be None
            if getattr(self, name) is not None and not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be positive and finite, not {getattr(self, name)!r}.")
        for name in ("warmup_ratio", "warmup_steps", "weight_decay"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be finite and at least 0, not {getattr(self, name)!r}.")
        if self.warmup_ratio is not None and self.warmup_steps:
            raise ValueError("Give warmup_ratio or warmup_steps, not both.")
        if self.fp16 and self.bf16:
            raise ValueError("Give fp16 or bf16, not both.")
