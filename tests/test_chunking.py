"""chunk_text: every token lands in a chunk that the model reads in full; chunks are slices of the text."""

import itertools
import json
import logging
import re
from pathlib import Path

import pytest

from minist.chunking import chunk_documents, chunk_text
from minist.wordpiece import WordPieceTokenizer

CORPUS = [json.loads(line)["text"] for line in
          (Path(__file__).resolve().parent.parent / "data" / "corpus.jsonl").read_text().splitlines()]
LONG = " ".join(CORPUS[:60])  # about 900 tokens


@pytest.fixture
def model(real_model):
    return real_model


@pytest.mark.parametrize(("max_tokens", "overlap"), [(256, 32), (64, 0), (40, 10)])
def test_chunks_fit_overlap_and_cover_every_token(model, max_tokens, overlap):
    tokenizer = model.tokenizer
    chunks = chunk_text(LONG, tokenizer, max_tokens, overlap)
    assert len(chunks) > 1
    tokens = [tokenizer(c.text)["input_ids"] for c in chunks]
    assert all(len(t) <= max_tokens for t in tokens)  # each is read whole: nothing truncated
    assert all(c.text == LONG[c.start:c.end] for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(LONG.rstrip())
    offsets = tokenizer(LONG, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    covered = [any(c.start <= s and e <= c.end for c in chunks) for s, e in offsets]
    assert all(covered)
    if overlap:
        assert all(b.start < a.end for a, b in itertools.pairwise(chunks))


def test_chunks_are_encoded_without_truncation(model, caplog):
    texts, owners = chunk_documents([LONG, "a short one", ""], model.tokenizer, model.max_seq_length)
    assert owners.count(1) == 1 and 2 not in owners  # a short text is one chunk; an empty one, none
    with caplog.at_level(logging.WARNING, logger="minist"):
        model.encode(texts)
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="minist"):
        model.encode([LONG])
    assert [r for r in caplog.records if "truncated" in r.getMessage()]


@pytest.mark.parametrize(("max_tokens", "overlap", "named"), [
    ("64", 0, "max_tokens must be an int, not str '64'"),
    (64.0, 0, "max_tokens must be an int, not float 64.0"),
    (True, 0, "max_tokens must be an int, not bool"),
    (2, 0, r"max_tokens must be from 3 to 256 \(room for text beside the 2 special tokens, and no more than the "
           r"model reads\), not 2"),
    (-5, 0, "max_tokens must be from 3 to 256 .*, not -5"),
    (300, 0, "max_tokens must be from 3 to 256 .*, not 300"),
    (64, -1, r"overlap must be from 0 to 61 \(below the 62 tokens a chunk holds\), not -1"),
    (64, 62, "overlap must be from 0 to 61 .*, not 62"),
    (64, 3.5, "overlap must be an int, not float 3.5"),
    (3, 0, None),  # the smallest window: one token beside [CLS] and [SEP]
])
def test_wrong_numbers_are_named(model, max_tokens, overlap, named):
    if named is None:
        assert len(chunk_text("the cat sat", model.tokenizer, max_tokens, overlap)) == 3
        return
    error = ValueError if isinstance(max_tokens, int) and isinstance(overlap, int) else TypeError  # True: a bool
    error = TypeError if True in (max_tokens, overlap) and isinstance(max_tokens, bool) else error
    with pytest.raises(error, match=named):
        chunk_text(LONG, model.tokenizer, max_tokens, overlap)
    with pytest.raises(error, match=named):
        chunk_documents([], model.tokenizer, max_tokens, overlap)  # checked even with nothing to cut


def test_wrong_texts_are_named(model):
    with pytest.raises(TypeError, match="text is a NoneType, not a string"):
        chunk_text(None, model.tokenizer, 64)
    with pytest.raises(ValueError, match=r"text holds a lone surrogate \(U\+D800\) at character 4"):
        chunk_text("the \ud800 cat", model.tokenizer, 64)
    with pytest.raises(TypeError, match=r"documents must be a list of strings .*not a str"):
        chunk_documents(LONG, model.tokenizer, 64)  # one string would be cut letter by letter
    with pytest.raises(TypeError, match=r"documents\[2\] is a bytes, not a string"):
        chunk_documents(["a", "b", b"c"], model.tokenizer, 64)
    with pytest.raises(ValueError, match=r"documents\[1\] holds a lone surrogate"):
        chunk_documents(["a", "b\udcff"], model.tokenizer, 64)
    assert chunk_text("", model.tokenizer, 64) == []


def test_a_tokenizer_without_offsets_is_named(model, real_model_dir):
    with pytest.raises(TypeError, match=r"tokenizer must be a fast Hugging Face tokenizer.*got a WordPieceTokenizer"):
        chunk_text(LONG, WordPieceTokenizer.from_pretrained(real_model_dir), 64)  # minist's own: no offsets
    with pytest.raises(TypeError, match=r"tokenizer must be a fast .*got a SentenceTransformer"):
        chunk_text(LONG, model, 64)  # the model, not model.tokenizer


def greedy_sentence_chunks(text: str, tokenizer, width: int) -> list[str]:
    """The reference for overlap=0: pack whole sentences, in order, while they fit ``width`` tokens."""
    sentences, chunks, current = re.split(r"(?<=[.!?])\s+", text.strip()), [], ""
    for sentence in sentences:
        joined = f"{current} {sentence}" if current else sentence
        if len(tokenizer(joined, add_special_tokens=False)["input_ids"]) <= width:
            current = joined
        else:
            chunks.append(current)
            current = sentence
    return [*chunks, current]


@pytest.mark.parametrize("max_tokens", [40, 64, 96])
def test_sentence_chunks_without_overlap_pack_whole_sentences_as_a_greedy_reference_does(model, max_tokens):
    chunks = chunk_text(LONG, model.tokenizer, max_tokens, overlap=0, boundary="sentence")
    assert [c.text for c in chunks] == greedy_sentence_chunks(LONG, model.tokenizer, max_tokens - 2)


@pytest.mark.parametrize(("max_tokens", "overlap"), [(96, 16), (64, 8), (40, 10)])
def test_sentence_chunks_end_at_sentence_ends_fit_and_cover_every_token(model, max_tokens, overlap):
    tokenizer = model.tokenizer
    chunks = chunk_text(LONG, tokenizer, max_tokens, overlap, boundary="sentence")
    assert all(len(tokenizer(c.text)["input_ids"]) <= max_tokens for c in chunks)
    assert all(c.text == LONG[c.start:c.end] and c.text.endswith(".") for c in chunks)  # every sentence fits
    offsets = tokenizer(LONG, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert all(any(c.start <= s and e <= c.end for c in chunks) for s, e in offsets)
    assert all(a.start < b.start <= a.end + 1 for a, b in itertools.pairwise(chunks))  # moves on, leaves no gap
    token = chunk_text(LONG, tokenizer, max_tokens, overlap)  # the default cuts mid-sentence
    assert sum(c.text.endswith(".") for c in token) < len(token)


def test_a_sentence_longer_than_the_window_is_cut_between_tokens(model):
    text = "one two three four five six seven eight nine ten. Short one."
    chunks = chunk_text(text, model.tokenizer, 7, overlap=0, boundary="sentence")  # 5 text tokens a chunk
    assert [c.text for c in chunks] == ["one two three four five", "six seven eight nine ten", ". Short one."]
    with pytest.raises(ValueError, match='boundary must be "token" or "sentence", not \'word\''):
        chunk_text(text, model.tokenizer, 7, 0, boundary="word")
    with pytest.raises(ValueError, match='boundary must be "token" or "sentence"'):
        chunk_documents([], model.tokenizer, 7, 0, boundary="word")  # checked even with nothing to cut
