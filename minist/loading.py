"""Read a model folder in sentence-transformers' layout into its steps, naming any file that is wrong.

``modules.json`` lists the steps in order, each with its class (``...Transformer``, ``...Pooling``,
``...Dense``, ``...Normalize``) and its subfolder (``""`` for the transformer, then ``1_Pooling``, ...);
``load_steps`` builds each one with its own ``load``. A plain Hugging Face folder (no ``modules.json``) gets
mean pooling, as in sentence-transformers. Each file is checked as it is read: a damaged or malformed one is
a ValueError naming the file and what is wrong (``minist.hub.read_json``), and a step whose sizes do not fit
the one before it is named too. The writing side is ``minist.saving``.
Left out: custom step classes and ``trust_remote_code``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

from torch import nn

from minist.dense import Dense
from minist.hub import json_field, read_json
from minist.normalize import Normalize
from minist.pooling import Pooling
from minist.similarity import SIMILARITY_FUNCTIONS
from minist.transformer import Backend, Transformer

logger = logging.getLogger("minist")

# modules.json names a step by its sentence-transformers class; minist matches on the class name
# (old "sentence_transformers.models.Pooling" and v6 "...modules.pooling.Pooling" alike).
STEPS = {"Transformer": Transformer, "Pooling": Pooling, "Dense": Dense, "Normalize": Normalize}


def read_modules_json(path: Path) -> list[tuple[str, str]]:
    """``modules.json`` -> (step class name, relative folder) per step, in file order as sentence-transformers reads it.

    >>> read_modules_json(folder / "modules.json")  # doctest: +SKIP
    [('Transformer', ''), ('Pooling', '1_Pooling'), ('Normalize', '2_Normalize')]
    """
    steps = []
    for i, entry in enumerate(read_json(path, list)):
        if not isinstance(entry, dict):
            raise ValueError(f"{path} is damaged: entry {i} is {entry!r:.60}, not an object with 'type' and 'path'.")
        kind = json_field(entry, "type", str, f"{path} entry {i}").rsplit(".", 1)[-1]
        folder = json_field(entry, "path", str, f"{path} entry {i}")
        if kind not in STEPS:
            raise ValueError(f"{path} lists a {entry['type']} step; minist runs only {', '.join(STEPS)}.")
        # A step's folder stays inside the model's folder (sentence-transformers refuses the same).
        if PurePosixPath(folder).is_absolute() or PureWindowsPath(folder).anchor or ".." in Path(folder).parts:
            raise ValueError(f"{path}: entry {i} points outside the model folder (path {folder!r}).")
        steps.append((kind, folder))
    if not steps or steps[0][0] != "Transformer":
        raise ValueError(f"{path} must list a Transformer step first; it lists {[kind for kind, _ in steps]}.")
    return steps


def load_steps(folder: Path, backend: Backend = "hf") -> list[nn.Module]:
    """Build the steps that ``folder/modules.json`` lists; a plain Hugging Face folder gets mean pooling."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        transformer = Transformer.load(folder, backend)
        logger.warning("%s has no modules.json (not a sentence-transformers model): using mean pooling.", folder)
        return [transformer, Pooling(transformer.get_word_embedding_dimension(), "mean")]
    steps = []
    for kind, path in read_modules_json(modules_file):
        if kind == "Normalize":
            steps.append(Normalize())
        elif kind == "Transformer":
            steps.append(Transformer.load(folder / path, backend))
        else:
            steps.append(STEPS[kind].load(folder / path))
            check_sizes_fit(steps, folder / path / "config.json")
    return steps


def output_dimension(steps: Iterable[nn.Module]) -> int:
    """The size of what the steps give: the last step that changes it decides, else the transformer's width."""
    steps = list(steps)
    return next((step.get_sentence_embedding_dimension() for step in reversed(steps)
                 if hasattr(step, "get_sentence_embedding_dimension")), steps[0].get_word_embedding_dimension())


def check_sizes_fit(steps: list[nn.Module], config_file: Path) -> None:
    """The last step's input size must be what the steps before it give: a wrong config.json is named."""
    *before, step = steps
    given = output_dimension(before)
    wanted = step.embedding_dimension if isinstance(step, Pooling) else step.linear.in_features
    if wanted != given:
        raise ValueError(f"{config_file} says the step takes vectors of size {wanted}, but the steps before it "
                         f"give {given}.")


def read_model_config(path: Path) -> dict:
    """What ``config_sentence_transformers.json`` sets for ``encode`` and ``similarity``, each key checked:
    ``similarity_fn_name``, ``prompts`` (name -> text) and ``default_prompt_name``; {} when there is no file."""
    if not path.is_file():
        return {}
    config = read_json(path)
    name = json_field(config, "similarity_fn_name", (str, type(None)), path, None)
    if name is not None and name not in SIMILARITY_FUNCTIONS:
        raise ValueError(f"{path}: unknown similarity_fn_name {name!r}; minist has {', '.join(SIMILARITY_FUNCTIONS)}.")
    prompts = json_field(config, "prompts", dict, path, {})
    if not all(isinstance(text, str) for text in prompts.values()):
        raise ValueError(f"{path}: every prompt must be a string, not {prompts!r:.80}.")
    return {"similarity_fn_name": name, "prompts": prompts,
            "default_prompt_name": json_field(config, "default_prompt_name", (str, type(None)), path, None)}
