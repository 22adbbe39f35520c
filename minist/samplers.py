"""Which examples train together: the batch samplers of ``fit`` and of the Trainer, each drawing as upstream's.

Why two no-duplicates samplers: sentence-transformers itself has two, and they draw differently. Each of
minist's equals its counterpart for the same seed, so a snippet gets the batches, and the losses, it would
get upstream (tests/test_dropin.py and tests/test_trainer.py compare them):

- ``NoDuplicatesDataLoader`` (for ``model.fit``; upstream's ``sentence_transformers.datasets`` class of that
  name) draws from Python's ``random``, compares texts lowercased and stripped, and *skips* a row that
  repeats a text of the batch until its next pass over the data.
- ``trainer_batches`` (for ``SentenceTransformerTrainer``; upstream's ``BatchSamplers.NO_DUPLICATES``) draws
  from a seeded ``torch.Generator``, compares texts as they are, and lets such a row *wait*, first in line,
  for the next batch (``no_duplicates_pass``). Its other sampler, ``BATCH_SAMPLER``, shuffles and cuts.

Both keep a text from being its own in-batch negative for MultipleNegativesRankingLoss.
Left out: GROUP_BY_LABEL, the hashed variant's hashing (the same batches: only the comparison is cheaper),
and samplers over several datasets.
"""

from __future__ import annotations

import math
import random
from collections import deque

import torch
from torch.utils.data import DataLoader, Sampler


class NoDuplicatesBatchSampler(Sampler[list[int]]):
    """Batches of example indices in which no text comes twice (case and outer spaces ignored), drawn as
    upstream's ``NoDuplicatesDataLoader`` draws them, from Python's ``random``: ``random.seed`` first to repeat.
    """

    def __init__(self, examples: list, batch_size: int):
        self.keys = [{text.strip().lower() for text in example.texts} for example in examples]
        self.batch_size, self.order, self.pointer = batch_size, list(range(len(examples))), 0
        random.shuffle(self.order)

    def __len__(self) -> int:
        return len(self.keys) // self.batch_size

    def __iter__(self):
        for _ in range(len(self)):
            batch, seen, looked = [], set(), 0
            while len(batch) < self.batch_size:
                looked += 1
                if looked > 2 * len(self.order):  # upstream would loop forever here
                    raise ValueError(f"NoDuplicatesDataLoader found no {self.batch_size} examples that share no "
                                     "text: lower batch_size, or remove the repeated texts.")
                index = self.order[self.pointer]
                if not self.keys[index] & seen:
                    batch.append(index)
                    seen |= self.keys[index]
                self.pointer += 1
                if self.pointer == len(self.order):  # the end of the data: reshuffle and go on
                    self.pointer = 0
                    random.shuffle(self.order)
            yield batch


def NoDuplicatesDataLoader(train_examples: list, batch_size: int) -> DataLoader:
    """A ``DataLoader`` of ``InputExample`` whose batches hold no text twice, for ``model.fit``.

    >>> from minist import InputExample
    >>> examples = [InputExample(texts=[animal, "a pet"]) for animal in ("cat", "dog")]
    >>> examples += [InputExample(texts=[vehicle, "a vehicle"]) for vehicle in ("car", "bus")]
    >>> loader = NoDuplicatesDataLoader(examples, batch_size=2)
    >>> loader.collate_fn = list  # model.fit tokenizes here; the examples as they are, to look at them
    >>> [sorted(example.texts[1] for example in batch) for batch in loader]  # never "a pet" twice
    [['a pet', 'a vehicle'], ['a pet', 'a vehicle']]
    """
    return DataLoader(train_examples, batch_sampler=NoDuplicatesBatchSampler(train_examples, batch_size))


def no_duplicates_pass(keys: list[set[str]], batch_size: int, drop_last: bool, generator) -> list[list[int]]:
    """One shuffled pass of upstream's ``NoDuplicatesBatchSampler`` over rows whose texts are ``keys``: rows join
    the batch in a random order, and one that shares a text with the batch waits, first in line, for the next.

    Rows {a, b}, {a, c}, {d, e} drawn in that order, in batches of 2: the second shares "a" with the first and
    waits, so the batches are [[0, 2], [1]].
    """
    line, batches = deque(torch.randperm(len(keys), generator=generator, dtype=torch.int32).tolist()), []
    while line:
        batch, seen, waiting = [], set(), []
        while line and len(batch) < batch_size:
            index = line.popleft()
            if keys[index] & seen:
                waiting.append(index)
            else:
                batch.append(index)
                seen |= keys[index]
        line.extendleft(reversed(waiting))
        if len(batch) == batch_size or not drop_last:
            batches.append(batch)
    return batches


def trainer_batches(examples: list, batch_size: int, epoch: int, sampler: str, seed: int,
                    data_seed: int | None = None, drop_last: bool = False) -> list[list[int]]:
    """One epoch's batches of row indices, as upstream's Trainer draws them for this seed and epoch.

    ``sampler`` is a ``BatchSamplers`` value. "batch_sampler": torch's ``RandomSampler``, reseeded each epoch
    with ``data_seed`` (else ``seed``) plus the epoch, cut into batches. "no_duplicates" (or its hashed twin):
    passes of ``no_duplicates_pass`` seeded with ``seed`` plus the epoch; a pass with too few batches is
    followed by up to two more, as upstream.
    """
    n = len(examples)
    length = n // batch_size if drop_last else math.ceil(n / batch_size)  # the Trainer's len(sampler)
    if sampler == "batch_sampler":
        base = seed if data_seed is None else data_seed
        order = torch.randperm(n, generator=torch.Generator().manual_seed(base + epoch)).tolist()
        return [order[start:start + batch_size] for start in range(0, length * batch_size, batch_size)]
    keys = [set(example.texts) for example in examples]  # texts compared as they are (not lowercased)
    generator, batches = torch.Generator().manual_seed(seed + epoch), []
    for _ in range(3):
        batches += no_duplicates_pass(keys, batch_size, drop_last, generator)
        if len(batches) >= length:
            break
    return batches[:length]  # the Trainer takes len(sampler) batches an epoch
