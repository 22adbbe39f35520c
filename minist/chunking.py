"""Split long texts into overlapping chunks that each fit the model, so that nothing is cut off unseen.

A model reads at most ``max_seq_length`` tokens and ``encode`` truncates the rest: a long document's
embedding stands only for its opening. ``chunk_text`` cuts the text into windows of whole tokens, each
short enough to be read in full, with ``overlap`` tokens shared by neighbours so that a sentence on a
border appears whole in at least one chunk. Chunks are exact slices of the original text, with their
character offsets, so search hits can be traced back. Left out: splitting on sentence or paragraph
boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # character offsets in the original text: text == original[start:end]
    end: int


def chunk_text(text: str, tokenizer, max_tokens: int, overlap: int = 32) -> list[Chunk]:
    """``text`` -> chunks of at most ``max_tokens`` tokens (special tokens included), ``overlap`` shared.

    >>> chunk_text(long_text, model.tokenizer, model.max_seq_length)  # doctest: +SKIP
    [Chunk(text='...', start=0, end=1204), Chunk(text='...', start=1075, end=2230), ...]
    """
    if not isinstance(text, str):
        raise TypeError(f"chunk_text takes a string, not a {type(text).__name__}.")
    width = max_tokens - tokenizer.num_special_tokens_to_add()  # room for [CLS] ... [SEP]
    if not 0 <= overlap < width:
        raise ValueError(f"overlap must be at least 0 and below {width} (the tokens a chunk holds), not {overlap}.")
    # verbose=False: a text longer than the model reads is the point here, not a mistake to warn about.
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    chunks = []
    for first in range(0, max(len(offsets), 1), width - overlap):
        window = offsets[first:first + width]
        if not window:
            break
        start, end = window[0][0], window[-1][1]
        chunks.append(Chunk(text[start:end], start, end))
        if first + width >= len(offsets):  # this window reached the end
            break
    return chunks


def chunk_documents(documents: list[str], tokenizer, max_tokens: int, overlap: int = 32
                    ) -> tuple[list[str], list[int]]:
    """Many documents -> (all their chunk texts, the index of the document each chunk came from)."""
    texts, owners = [], []
    for number, document in enumerate(documents):
        for chunk in chunk_text(document, tokenizer, max_tokens, overlap):
            texts.append(chunk.text)
            owners.append(number)
    return texts, owners
