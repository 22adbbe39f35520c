"""Split long texts into overlapping chunks that each fit the model, so that nothing is cut off unseen.

A model reads at most ``max_seq_length`` tokens and ``encode`` truncates the rest: a long document's
embedding stands only for its opening. ``chunk_text`` cuts the text into windows of whole tokens, each
short enough to be read in full, with ``overlap`` tokens shared by neighbours so that a sentence on a
border appears whole in at least one chunk. Chunks are exact slices of the original text, with their
character offsets, so search hits can be traced back. A bad argument is refused by name before any
tokenizing. With ``boundary="sentence"`` a chunk ends at the last sentence end (".", "!" or "?" before
a space) that fits the window, and the next one starts at a sentence start inside the overlap where there
is one; a sentence longer than the window is still cut between tokens. Left out: real sentence
segmentation (abbreviations such as "e.g." count as ends), paragraphs; slow (Python) tokenizers, which
give no character offsets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from minist.inputs import check_count, check_text


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # character offsets in the original text: text == original[start:end]
    end: int


def window_width(tokenizer, max_tokens: int, overlap: int) -> int:
    """How many text tokens a chunk holds (``max_tokens`` less the special tokens); each argument is checked."""
    if not getattr(tokenizer, "is_fast", False):  # only the Rust tokenizers give character offsets
        raise TypeError(f"tokenizer must be a fast Hugging Face tokenizer (model.tokenizer), which gives character "
                        f"offsets; got a {type(tokenizer).__name__}.")
    special = tokenizer.num_special_tokens_to_add()  # [CLS] ... [SEP]
    # Past model_max_length the model would truncate each chunk, the very thing to avoid.
    check_count("max_tokens", max_tokens, least=special + 1, most=tokenizer.model_max_length,
                what=f"room for text beside the {special} special tokens, and no more than the model reads")
    width = max_tokens - special
    check_count("overlap", overlap, least=0, most=width - 1, what=f"below the {width} tokens a chunk holds")
    return width


def check_boundary(boundary: str) -> None:
    if boundary not in ("token", "sentence"):
        raise ValueError(f'boundary must be "token" or "sentence", not {boundary!r:.40}.')


def sentence_ends(text: str, offsets: list[tuple[int, int]]) -> set[int]:
    """Indices of the tokens that end a sentence: ".", "!" or "?" followed by whitespace or the end of the text."""
    return {i for i, (start, end) in enumerate(offsets)
            if text[start:end] in {".", "!", "?"} and (end == len(text) or text[end].isspace())}


def chunk_text(text: str, tokenizer, max_tokens: int, overlap: int = 32,
               boundary: Literal["token", "sentence"] = "token") -> list[Chunk]:
    """``text`` -> chunks of at most ``max_tokens`` tokens (special tokens included), ``overlap`` shared.

    ``boundary="sentence"`` ends each chunk at a sentence end where one fits (then neighbours share at most
    ``overlap`` tokens, starting at a sentence start where there is one).

    >>> from transformers import AutoTokenizer
    >>> from minist.hub import resolve_model_folder
    >>> tokenizer = AutoTokenizer.from_pretrained(resolve_model_folder("all-MiniLM-L6-v2"))
    >>> chunks = chunk_text("One cat sleeps. Two dogs run. Birds sing.", tokenizer, 8, overlap=0, boundary="sentence")
    >>> [chunk.text for chunk in chunks], (chunks[1].start, chunks[1].end)  # text == original[start:end]
    (['One cat sleeps.', 'Two dogs run.', 'Birds sing.'], (16, 29))
    """
    check_text(text, "text")
    width = window_width(tokenizer, max_tokens, overlap)
    check_boundary(boundary)
    # verbose=False: a text longer than the model reads is the point here, not a mistake to warn about.
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    ends = sentence_ends(text, offsets) if boundary == "sentence" else set()
    chunks, first = [], 0
    while first < len(offsets):
        last = min(first + width, len(offsets))  # one past the window's last token
        if last < len(offsets):
            # The last sentence end in the window, but past the overlap, so that the next chunk moves on.
            cut = max((i for i in range(first + overlap, last) if i in ends), default=None)
            last = last if cut is None else cut + 1
        chunks.append(Chunk(text[offsets[first][0]:offsets[last - 1][1]], offsets[first][0], offsets[last - 1][1]))
        if last == len(offsets):  # this window reached the end
            break
        # The next chunk shares the last `overlap` tokens: from the first sentence start among them, if any.
        first = min((i for i in range(last - overlap, last) if i - 1 in ends), default=last - overlap)
    return chunks


def chunk_documents(documents: list[str], tokenizer, max_tokens: int, overlap: int = 32,
                    boundary: Literal["token", "sentence"] = "token") -> tuple[list[str], list[int]]:
    """Many documents -> (all their chunk texts, the index of the document each chunk came from)."""
    if isinstance(documents, str) or not isinstance(documents, Iterable):  # a string would go letter by letter
        raise TypeError(f"documents must be a list of strings (chunk_text takes one), not a "
                        f"{type(documents).__name__}.")
    documents = list(documents)
    for number, document in enumerate(documents):
        check_text(document, f"documents[{number}]")
    window_width(tokenizer, max_tokens, overlap)  # the arguments are checked even when there are no documents
    check_boundary(boundary)
    texts, owners = [], []
    for number, document in enumerate(documents):
        for chunk in chunk_text(document, tokenizer, max_tokens, overlap, boundary):
            texts.append(chunk.text)
            owners.append(number)
    return texts, owners
