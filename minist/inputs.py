"""What minist accepts as input, checked before any work and refused by name.

``text_list`` turns one string or an iterable of strings into a list and checks every item
(``check_text``): a non-string is a TypeError, a string that cannot be written as UTF-8 (a lone surrogate)
a ValueError, each naming the item's index. ``check_count`` checks an optional positive whole number such as
``batch_size``. ``encode``, ``EmbeddingCache.add`` and the chunking functions share them, so a text refused
by one is refused by all, in the same words.
Left out: limits on a text's length (the tokenizer truncates; ``encode`` warns how many were cut).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable


def check_count(name: str, value, most: int | None = None, what: str = "") -> None:
    """None, or an int from 1 to ``most`` (``what`` says why that bound); else a ValueError naming ``name``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy ints are Integral too
        raise ValueError(f"{name} must be an int or None, not {type(value).__name__} {value!r:.40}.")
    if value < 1 or (most is not None and value > most):
        allowed = "at least 1" if most is None else f"from 1 to {most} ({what})"
        raise ValueError(f"{name} must be {allowed}, not {value}.")


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


def text_list(sentences: str | Iterable[str]) -> list[str]:
    """One string or an iterable of strings -> a list, every item checked (``check_text``) before any work.

    >>> text_list(("a cat", "a dog"))
    ['a cat', 'a dog']
    """
    if isinstance(sentences, bytes | bytearray) or not isinstance(sentences, str | Iterable):
        hint = " (decode bytes first: data.decode('utf-8'))" if isinstance(sentences, bytes | bytearray) else ""
        raise TypeError(f"Expected a string or a list of strings, not a {type(sentences).__name__}{hint}.")
    texts = [sentences] if isinstance(sentences, str) else list(sentences)
    for i, text in enumerate(texts):
        check_text(text, f"item {i}")
    return texts
