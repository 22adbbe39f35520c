"""What minist accepts as input, checked before any work and refused by name: one home for the shared checks.

- Texts: ``text_list`` turns one string or an iterable of strings into a list and checks every item
  (``check_text``): a non-string is a TypeError, a string that cannot be written as UTF-8 (a lone surrogate)
  a ValueError, each naming the item's index. ``encode``, ``EmbeddingCache.add`` and the chunking functions
  share them, so a text refused by one is refused by all, in the same words.
- Counts: ``check_count`` is the one whole-number check (``batch_size``, ``top_k``, ``max_seq_length``,
  ``epochs``, ...): a non-int (a float, a bool, a string) is a TypeError, one out of range a ValueError.
- Matrices: ``as_matrix`` reads any array-like as (n, dim) vectors; ``check_finite`` refuses NaN and infinity.
- JSON files: ``read_json`` and ``json_field`` read a model's or a cache's files, naming the file and the fault.
- Names: ``renamed_keywords`` takes sentence-transformers' older keyword names (``sentences=``) with a warning
  logged once (``log_once``), as upstream does.

Left out: limits on a text's length (the tokenizer truncates; ``encode`` warns how many were cut).
"""

from __future__ import annotations

import functools
import json
import logging
import numbers
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger("minist")

ArrayLike = list | np.ndarray | Tensor


# --- counts and texts ------------------------------------------------------------------------------------
def check_count(name: str, value, least: int = 1, most: int | None = None, what: str = "", hint: str = "",
                optional: bool = False) -> None:
    """Raise unless ``value`` is an int from ``least`` to ``most`` (``what`` says why that bound), or None when
    ``optional``; ``hint`` ends either message. numpy ints count as ints; True does not.

    >>> check_count("top_k", 5, least=0)
    >>> check_count("batch_size", 0)
    Traceback (most recent call last):
    ValueError: batch_size must be at least 1, not 0.
    """
    if value is None and optional:
        return
    end = f" {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an int or None" if optional else "an int"
        raise TypeError(f"{name} must be {kind}, not {type(value).__name__} {value!r:.40}.{end}")
    if value < least or (most is not None and value > most):
        allowed = f"at least {least}" if most is None else f"from {least} to {most}" + (f" ({what})" if what else "")
        raise ValueError(f"{name} must be {allowed}, not {value}.{end}")


def check_text(text, name: str) -> None:
    """Raise, naming ``text`` as ``name``, unless it is a string that can be written as UTF-8.

    Python strings fail UTF-8 only on surrogates (U+D800 to U+DFFF): a lone one is left by broken UTF-16
    or by decoding with ``errors="surrogateescape"``, and the tokenizer would refuse it without saying where.
    """
    if not isinstance(text, str):
        raise TypeError(f"{name} is a {type(text).__name__}, not a string: {text!r:.60}")
    if text.isascii():  # the fast path: ASCII is always valid UTF-8
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{name} holds a lone surrogate (U+{ord(text[error.start]):04X}) at character {error.start}, "
                         "which is not valid Unicode text; repair the text, or replace what cannot be written "
                         "with text.encode('utf-8', 'replace').decode().") from None


def text_list(texts: str | Iterable[str]) -> list[str]:
    """One string or an iterable of strings -> a list, every item checked (``check_text``) before any work.

    >>> text_list(("a cat", "a dog"))
    ['a cat', 'a dog']
    """
    if isinstance(texts, bytes | bytearray) or not isinstance(texts, str | Iterable):
        hint = " (decode bytes first: data.decode('utf-8'))" if isinstance(texts, bytes | bytearray) else ""
        raise TypeError(f"Expected a string or a list of strings, not a {type(texts).__name__}{hint}.")
    texts = [texts] if isinstance(texts, str) else list(texts)
    for i, text in enumerate(texts):
        check_text(text, f"item {i}")
    return texts


# --- vectors ---------------------------------------------------------------------------------------------
def as_tensor(a: ArrayLike) -> Tensor:
    """Any array-like -> a tensor of the same dtype, sharing memory where it can; lists of rows are stacked."""
    if isinstance(a, list) and a and all(isinstance(x, Tensor | np.ndarray) for x in a):
        return torch.stack([torch.as_tensor(x) for x in a])
    return torch.as_tensor(a)


def as_matrix(embeddings: ArrayLike, name: str) -> Tensor:
    """Any array-like -> a (n, dim) tensor, not copied.

    The dtype is kept (an int8 corpus stays int8): the scoring functions convert chunk by chunk.
    An empty input (``[]``) is no vectors, shape (0, 0), not one vector of length 0.

    >>> as_matrix([1.0, 2.0], "query").shape
    torch.Size([1, 2])
    """
    matrix = as_tensor(embeddings)
    if matrix.dim() == 1:
        matrix = matrix.reshape(0, 0) if matrix.numel() == 0 else matrix.unsqueeze(0)
    if matrix.dim() != 2:
        raise ValueError(f"{name} must be one vector or a (n, dim) matrix, not shape {tuple(matrix.shape)}.")
    return matrix


def check_finite(matrix: Tensor, name: str) -> None:
    """Refuse NaN or infinity, naming the input they are in."""
    if matrix.is_floating_point() and not torch.isfinite(matrix).all():
        raise ValueError(f"{name} contain NaN or infinite values; check how they were made.")


# --- JSON files ------------------------------------------------------------------------------------------
_REQUIRED = object()
_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true or false", type(None): "null"}


def _json_name(kind: type | tuple[type, ...]) -> str:
    """``int`` -> "an integer"; ``(str, type(None))`` -> "a string or null"."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)


def read_json(path: Path, kind: type = dict) -> Any:
    """The JSON value in ``path``, which must be of ``kind``; else a ValueError naming the file and the fault.

    >>> from minist.hub import resolve_model_folder
    >>> read_json(resolve_model_folder("all-MiniLM-L6-v2") / "1_Pooling" / "config.json")["pooling_mode_mean_tokens"]
    True
    """
    try:
        value = json.loads(Path(path).read_bytes())  # bytes: json detects UTF-8/16/32 itself
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError both are ValueErrors
        raise ValueError(f"{path} is damaged: not valid JSON ({error}).") from error
    if not isinstance(value, kind):
        raise ValueError(f"{path} is damaged: it holds {_json_name(type(value))} where {_json_name(kind)} belongs.")
    return value


def json_field(config: dict, key: str, kind: type | tuple[type, ...], path: Path | str,
               default: Any = _REQUIRED) -> Any:
    """``config[key]``, checked to be of ``kind``; a ValueError naming ``path`` when it is missing or wrong.

    Leave out ``default`` to make the key required. (``True`` is not taken for an integer.) ``path`` names the
    place in the message: a file, or a part of one ("modules.json entry 2").

    >>> json_field({"size": 3}, "size", int, "config.json")
    3
    """
    if key not in config:
        if default is _REQUIRED:
            raise ValueError(f"{path} has no {key!r}, which minist needs to build the model.")
        return default
    value = config[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"{path}: {key!r} must be {_json_name(kind)}, not {value!r}.")
    return value


# --- names -----------------------------------------------------------------------------------------------
@functools.cache  # once per process and message: a notebook that loads ten models hears it once
def log_once(level: int, message: str) -> None:
    logger.log(level, message)


def renamed_keywords(**renames: str) -> Callable:
    """Accept each old keyword name (``sentences=``) for its new one (``inputs=``), logging a warning once, as
    sentence-transformers' ``deprecated_kwargs``: given both, the new one wins.

    >>> @renamed_keywords(sentences="inputs")
    ... def encode(inputs):
    ...     return inputs
    >>> encode(sentences=["a cat"])
    ['a cat']
    """
    def decorator(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    log_once(logging.WARNING, f"The `{old}` argument was renamed and is now deprecated. "
                                              f"Please use `{new}` instead.")
                    value = kwargs.pop(old)
                    kwargs.setdefault(new, value)
            return function(*args, **kwargs)
        return wrapper
    return decorator
