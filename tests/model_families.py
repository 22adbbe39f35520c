"""Tiny random models of five families, each with a fast tokenizer built with the `tokenizers` library.

Real weights of these families are not reachable here, so the parity tests build stand-ins in code:
a 2-layer model of hidden size 32 and a tokenizer of the family's kind (WordPiece, byte-level BPE or
Unigram), saved in plain Hugging Face layout.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    MPNetConfig,
    MPNetModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)

CORPUS = ["the cat sat on the mat", "the dogs run fast", "a bird sings in the tree", "slow rivers and fast cars",
          "Zoé's café serves naïve crêpes", "embeddings turn sentences into vectors", "你好 世界", "emoji 🙂 here",
          ] * 5
SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def wordpiece(cls: str, sep: str, pad: str, unk: str, mask: str) -> Tokenizer:
    vocab = [pad, unk, cls, sep, mask, *string.ascii_lowercase, *string.punctuation,
             *(f"##{c}" for c in string.ascii_lowercase), "the", "cat", "dog", "##s", "run", "fast"]
    tokenizer = Tokenizer(models.WordPiece({p: i for i, p in enumerate(dict.fromkeys(vocab))}, unk_token=unk))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))])
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def byte_level_bpe() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tokenizer


def unigram() -> Tokenizer:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=200, special_tokens=special,
                                                                  unk_token="<unk>"))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                            special_tokens=[("<s>", 0), ("</s>", 2)])
    return tokenizer


def build(family: str, folder: Path, seed: int = 0, padding_side: str = "right") -> Path:
    """Save a tiny random ``family`` model ("bert", "roberta", "mpnet", "xlm-roberta", "distilbert") in ``folder``."""
    torch.manual_seed(seed)
    if family in ("bert", "distilbert"):
        tok = wordpiece("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")
        specials = dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
        if family == "bert":
            model = BertModel(BertConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=64, **SIZE))
            names = ["input_ids", "token_type_ids", "attention_mask"]
        else:
            model = DistilBertModel(DistilBertConfig(vocab_size=tok.get_vocab_size(), dim=32, n_layers=2, n_heads=4,
                                                     hidden_dim=37, max_position_embeddings=64))
            names = ["input_ids", "attention_mask"]
    else:
        specials = dict(bos_token="<s>", cls_token="<s>", eos_token="</s>", sep_token="</s>", pad_token="<pad>",
                        unk_token="<unk>", mask_token="<mask>")
        names = ["input_ids", "attention_mask"]
        if family == "mpnet":
            tok = wordpiece("<s>", "</s>", "<pad>", "<unk>", "<mask>")
            model = MPNetModel(MPNetConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=66,
                                           pad_token_id=tok.token_to_id("<pad>"), **SIZE))
        elif family == "roberta":
            tok = byte_level_bpe()
            model = RobertaModel(RobertaConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=66,
                                               pad_token_id=1, type_vocab_size=1, **SIZE))
        else:
            tok = unigram()
            model = XLMRobertaModel(XLMRobertaConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=66,
                                                     pad_token_id=1, type_vocab_size=1, **SIZE))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=names, model_max_length=64,
                                        padding_side=padding_side, **specials)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


FAMILIES = ["bert", "roberta", "mpnet", "xlm-roberta", "distilbert"]
