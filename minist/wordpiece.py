"""A BERT WordPiece tokenizer in plain Python, to read in one sitting and compare with the real one.

Text -> tokens in three stages, as in BERT (Devlin et al., 2019, https://arxiv.org/abs/1810.04805)
and the Hugging Face fast tokenizer it is tested against:

1. normalize: drop control characters, turn every kind of space into " ", put spaces around CJK
   ideographs, and for uncased vocabularies lower-case and strip accents (NFD, then drop the marks);
2. split on whitespace, and make each punctuation character a word of its own;
3. WordPiece: cut each word greedily into the longest pieces found in the vocabulary, the pieces after
   the first marked ``##`` ("playing" -> "play", "##ing"); a word it cannot cover, or longer than 100
   characters, becomes ``[UNK]``.

Then ``[CLS] ... [SEP]``, truncation, padding and the attention mask.
Leaves out: sentence pairs, ``never_split`` lists, turning off the CJK spacing, offsets, and decoding
ids back to text. Character classes come from Python's ``unicodedata``; the Rust tokenizer's tables are
older, so a character that Unicode assigned recently (say, a new punctuation mark) may be split
differently there. The tests draw their random characters from those both agree on.

>>> from minist.hub import resolve_model_folder
>>> tokenizer = WordPieceTokenizer.from_pretrained(resolve_model_folder("all-MiniLM-L6-v2"))
>>> tokenizer.tokenize("Tokenizers aren't magic")
['token', '##izer', '##s', 'aren', "'", 't', 'magic']
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import torch

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# CJK ideograph blocks, as BERT defines them (Hiragana, Katakana and Hangul are not among them).
CJK_RANGES = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]


def is_whitespace(char: str) -> bool:
    return char.isspace()


def is_control(char: str) -> bool:
    # Control, format, private-use and surrogate characters; unassigned code points (Cn) are kept.
    return char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs")


def is_punctuation(char: str) -> bool:
    # All non-letter, non-digit ASCII counts ("$", "^", "`"), as do Unicode's P* categories.
    return (char.isascii() and not char.isalnum() and not char.isspace()) or unicodedata.category(char)[0] == "P"


def is_cjk(char: str) -> bool:
    return any(low <= ord(char) <= high for low, high in CJK_RANGES)


def normalize(text: str, lowercase: bool = True, strip_accents: bool = True) -> str:
    """Stage 1. ``"Café\\u200b 東京"`` -> ``"cafe  東  京 "`` (lower-cased, accent and zero-width space gone)."""
    text = "".join(" " if is_whitespace(c) else f" {c} " if is_cjk(c) else c
                   for c in text if c not in "\x00\ufffd" and not is_control(c))
    if strip_accents:
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    # Character by character: str.lower() would turn a word-final "Σ" into "ς", which BERT does not.
    return "".join(c.lower() for c in text) if lowercase else text


def split_words(text: str) -> list[str]:
    """Stage 2. ``"don't stop!"`` -> ``["don", "'", "t", "stop", "!"]``."""
    words: list[str] = []
    for chunk in text.split():
        start = 0
        for i, char in enumerate(chunk):
            if is_punctuation(char):
                words += [chunk[start:i], char] if i > start else [char]
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


def wordpiece(word: str, vocab: dict[str, int], unk: str = "[UNK]", max_chars: int = 100) -> list[str]:
    """Stage 3. Greedy longest match first: ``"unaffable"`` -> ``["un", "##aff", "##able"]``."""
    if len(word) > max_chars:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:  # shrink from the right until the piece is in the vocabulary
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:  # not even one character matched: the whole word is unknown
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


class WordPieceTokenizer:
    """Texts -> ``input_ids``, ``token_type_ids``, ``attention_mask``, called like a Hugging Face tokenizer."""

    def __init__(self, vocab: dict[str, int], lowercase: bool = True, strip_accents: bool | None = None,
                 model_max_length: int = 512):
        self.vocab = vocab
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents  # BERT's default
        self.model_max_length = model_max_length
        self.cls_id, self.sep_id, self.pad_id = vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"]
        self.special_pattern = "(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS if t in vocab) + ")"

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> WordPieceTokenizer:
        """Read ``vocab.txt`` (one piece per line, the line number is its id) and ``tokenizer_config.json``."""
        model_dir = Path(model_dir)
        vocab_file, config_file = model_dir / "vocab.txt", model_dir / "tokenizer_config.json"
        if not vocab_file.is_file():
            raise FileNotFoundError(f"No vocabulary file: {vocab_file} does not exist.")
        lines = vocab_file.read_text(encoding="utf-8").splitlines()
        vocab = {piece: i for i, piece in enumerate(lines)}
        missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]") if t not in vocab]
        if not lines or missing or len(vocab) != len(lines):
            problem = f"lacks {missing}" if lines and missing else "is empty" if not lines else "repeats a line"
            raise ValueError(f"Malformed vocabulary file {vocab_file}: it {problem}.")
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        return cls(vocab, config.get("do_lower_case", True), config.get("strip_accents"),
                   min(config.get("model_max_length", 512), 10**6))

    def tokenize(self, text: str) -> list[str]:
        """``"Hello, world!"`` -> ``["hello", ",", "world", "!"]`` (word pieces, no special tokens)."""
        if not isinstance(text, str):
            raise TypeError(f"tokenize takes a string, not a {type(text).__name__}.")
        pieces = []
        # A special token written in the text ("[SEP]") stays one token, as in Hugging Face tokenizers.
        for part in re.split(self.special_pattern, text):
            if part in self.vocab and part in SPECIAL_TOKENS:
                pieces.append(part)
                continue
            words = split_words(normalize(part, self.lowercase, self.strip_accents))
            pieces += [piece for word in words for piece in wordpiece(word, self.vocab)]
        return pieces

    def encode(self, text: str, max_length: int | None = None, truncation: bool = False) -> list[int]:
        """One text -> ``[CLS] pieces [SEP]`` ids, cut to ``max_length`` (special tokens included)."""
        ids = [self.vocab[piece] for piece in self.tokenize(text)]
        if truncation:
            ids = ids[: (max_length or self.model_max_length) - 2]
        return [self.cls_id, *ids, self.sep_id]

    def __call__(self, texts: str | list[str], max_length: int | None = None, padding: bool = False,
                 truncation: bool = False, return_tensors: str | None = None) -> dict:
        """Like ``tokenizer(texts, ...)`` in Hugging Face: a dict of lists (or (batch, seq) tensors with "pt")."""
        rows = [self.encode(text, max_length, truncation) for text in ([texts] if isinstance(texts, str) else texts)]
        width = max(map(len, rows), default=0) if padding else 0
        out = {"input_ids": [row + [self.pad_id] * (width - len(row)) for row in rows],
               "token_type_ids": [[0] * max(width, len(row)) for row in rows],
               "attention_mask": [[1] * len(row) + [0] * (width - len(row)) for row in rows]}
        if isinstance(texts, str) and return_tensors is None:
            return {key: value[0] for key, value in out.items()}
        return {key: torch.tensor(value) for key, value in out.items()} if return_tensors == "pt" else out
