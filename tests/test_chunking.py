"""chunk_text: every token lands in a chunk that the model reads in full; chunks are slices of the text."""

import itertools
import json
import logging
from pathlib import Path

import pytest

from minist import SentenceTransformer
from minist.chunking import chunk_documents, chunk_text

CORPUS = [json.loads(line)["text"] for line in
          (Path(__file__).resolve().parent.parent / "data" / "corpus.jsonl").read_text().splitlines()]
LONG = " ".join(CORPUS[:60])  # about 900 tokens


@pytest.fixture(scope="module")
def model(real_model_dir):
    return SentenceTransformer(real_model_dir, device="cpu")


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


def test_bad_input(model):
    with pytest.raises(ValueError, match="overlap must be"):
        chunk_text(LONG, model.tokenizer, 64, overlap=64)
    with pytest.raises(TypeError, match="takes a string"):
        chunk_text(None, model.tokenizer, 64)
    assert chunk_text("", model.tokenizer, 64) == []
