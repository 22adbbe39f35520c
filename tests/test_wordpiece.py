"""minist.wordpiece gives exactly the ids of the Hugging Face fast tokenizer of all-MiniLM-L6-v2."""

import random
import unicodedata

import pytest
import torch
from test_real_model import SENTENCES as REAL_SENTENCES
from transformers import AutoTokenizer

from minist.wordpiece import WordPieceTokenizer, normalize, split_words, wordpiece


@pytest.fixture(scope="module")
def tokenizers(real_model_dir):
    return WordPieceTokenizer.from_pretrained(real_model_dir), AutoTokenizer.from_pretrained(real_model_dir)


def random_unicode_texts(n: int, seed: int = 0) -> list[str]:
    """Seeded random strings over all of Unicode, ASCII and control characters weighted up.

    Only characters whose general category is the same in Unicode 3.2 and in Python's Unicode are drawn
    (unassigned code points included): the fast tokenizer's Rust tables predate many recent
    punctuation marks and combining marks, which Python's current tables classify differently.
    """
    rng = random.Random(seed)

    def char() -> str:
        while True:
            low, high = rng.choice([(0, 0x7F), (0, 0x7F), (0x80, 0x2FFF), (0x3000, 0xFFFF), (0x10000, 0x10FFFF)])
            c = chr(rng.randint(low, high))
            if not 0xD800 <= ord(c) <= 0xDFFF and unicodedata.ucd_3_2_0.category(c) == unicodedata.category(c):
                return c

    return ["".join(char() for _ in range(rng.randint(0, 40))) for _ in range(n)]


def word_salad(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["Embedding", "naïve", "CAFÉ", "don't", "e-mail", "U.S.A.", "3.14", "東京", "straße", "ÅNGSTRÖM",
             "Σίσυφος", "привет", "مرحبا", "🙂", "👨‍👩‍👧", "x\u0301", "tab\there", "unbelievably", "##", "[CLS]",
             "a" * 120]
    return [" ".join(rng.choices(words, k=rng.randint(1, 60))) for _ in range(n)]


TEXTS = REAL_SENTENCES + random_unicode_texts(3000) + word_salad(2000)


@pytest.mark.slow
def test_same_ids_and_masks_as_the_fast_tokenizer_on_5000_texts(tokenizers):
    ours, theirs = tokenizers
    assert len(TEXTS) >= 5000
    for max_length in (256, 16):  # 16 truncates most texts
        expected = theirs(TEXTS, max_length=max_length, padding=True, truncation=True)
        got = ours(TEXTS, max_length=max_length, padding=True, truncation=True)
        assert got["input_ids"] == expected["input_ids"]
        assert got["attention_mask"] == expected["attention_mask"]
        assert got["token_type_ids"] == expected["token_type_ids"]


def test_word_pieces_match(tokenizers):
    ours, theirs = tokenizers
    for text in REAL_SENTENCES + word_salad(200, seed=1):
        assert ours.tokenize(text) == theirs.tokenize(text)


def test_tensors_like_hugging_face(tokenizers):
    ours, theirs = tokenizers
    texts = ["A short one.", "A somewhat longer sentence, with a comma."]
    got = ours(texts, padding=True, truncation=True, max_length=8, return_tensors="pt")
    expected = theirs(texts, padding=True, truncation=True, max_length=8, return_tensors="pt")
    for key in expected:
        assert torch.equal(got[key], expected[key])


def test_hand_checked_cases(tokenizers):
    ours, _ = tokenizers
    assert ours.tokenize("Tokenizers aren't magic") == ["token", "##izer", "##s", "aren", "'", "t", "magic"]
    assert normalize("Café\u200b 東京") == "cafe  東  京 "
    assert split_words("don't stop!") == ["don", "'", "t", "stop", "!"]
    vocab = {"un": 0, "##aff": 1, "##able": 2, "[UNK]": 3}
    assert wordpiece("unaffable", vocab) == ["un", "##aff", "##able"]
    assert wordpiece("unx", vocab) == ["[UNK]"]
    assert ours("")["input_ids"] == [ours.cls_id, ours.sep_id]  # an empty text: just the special tokens
    assert ours.tokenize("a" * 101) == ["[UNK]"]


def test_any_unicode_tokenizes_without_error(tokenizers):
    ours, _ = tokenizers
    rng = random.Random(7)
    texts = ["".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 50))) for _ in range(2000)]
    texts += ["\ud800 lone surrogate", "\u202eright-to-left override", "\U000e0041 tag", "\u0000 nul", "\ufeff"]
    batch = ours(texts, padding=True, truncation=True, max_length=64)
    assert len(batch["input_ids"]) == len(texts)
    assert all(row[0] == ours.cls_id for row in batch["input_ids"])


def test_bad_input(tokenizers, tmp_path):
    ours, _ = tokenizers
    with pytest.raises(TypeError, match="not a int"):
        ours.tokenize(5)
    with pytest.raises(TypeError):
        ours(["fine", None])
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt"):
        WordPieceTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\nhello\n")
    with pytest.raises(ValueError, match=r"Malformed vocabulary file .*vocab.txt.*\[CLS\]"):
        WordPieceTokenizer.from_pretrained(tmp_path)
