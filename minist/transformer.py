"""Steps 1 and 2 of the pipeline: text -> token ids (the tokenizer) -> token embeddings (the model).

A thin wrapper over a Hugging Face fast tokenizer and ``transformers.AutoModel``, as
sentence-transformers' ``Transformer`` module is. Texts are cut at ``max_seq_length`` tokens,
from the right, exactly as the tokenizer's ``truncation=True`` does.
Left out: prompts, images and audio, ``trust_remote_code``, the OpenVINO backend.
With ``backend="minist"`` the model is ``minist.bert``'s from-scratch BERT (BERT-family folders only).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import transformers
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from minist import bert

Backend = Literal["hf", "minist", "onnx"]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model")


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' own bars ("Loading weights ...") while minist loads or saves, then restore them."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def check_model_folder(folder: Path) -> None:
    """Raise FileNotFoundError naming what a Hugging Face model folder lacks: config, weights or tokenizer."""
    wanted = {"a config": ("config.json",), "weights": WEIGHT_FILES, "a tokenizer": TOKENIZER_FILES}
    missing = [f"{what} ({' or '.join(names)})" for what, names in wanted.items()
               if not any((folder / name).is_file() for name in names)]
    if missing:
        raise FileNotFoundError(f"The model folder {folder} has no {' and no '.join(missing)}.")


class Transformer(nn.Module):
    """Holds ``tokenizer`` and ``auto_model``; adds ``token_embeddings`` (batch, seq, dim) to the features."""

    def __init__(self, auto_model: nn.Module, tokenizer, max_seq_length: int, do_lower_case: bool = False):
        super().__init__()
        if not tokenizer.is_fast:
            raise TypeError(f"minist needs a fast (Rust) tokenizer; got {type(tokenizer).__name__}.")
        self.auto_model = auto_model
        self.tokenizer = tokenizer
        # What the model's forward takes (DistilBERT, for one, takes no token_type_ids).
        self.input_names = [n for n in tokenizer.model_input_names
                            if n in inspect.signature(auto_model.forward).parameters]
        self.max_seq_length = max_seq_length
        self.do_lower_case = do_lower_case

    @property
    def max_seq_length(self) -> int:
        """Longest input in tokens, special tokens included; kept in the tokenizer, which does the cutting."""
        return self.tokenizer.model_max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.tokenizer.model_max_length = value

    @classmethod
    def load(cls, folder: Path, backend: Backend = "hf") -> Transformer:
        """Load a Hugging Face model folder; ``sentence_bert_config.json``, when present, sets the options.

        ``backend="minist"`` runs the from-scratch ``minist.bert.BertModel`` instead of transformers' model;
        "onnx" loads transformers' model, which ``SentenceTransformer`` then exports (``minist.ort``).
        """
        if backend not in ("hf", "minist", "onnx"):
            raise ValueError(f"backend must be 'hf' (transformers), 'minist' (minist.bert) or 'onnx' (ONNX Runtime), "
                             f"not {backend!r}.")
        folder = Path(folder)
        check_model_folder(folder)
        options_file = folder / "sentence_bert_config.json"
        options = json.loads(options_file.read_text()) if options_file.is_file() else {}
        try:
            config = AutoConfig.from_pretrained(folder)
        except ValueError as error:  # an architecture this transformers does not know
            model_type = json.loads((folder / "config.json").read_text()).get("model_type")
            raise ValueError(f"{folder} holds a {model_type!r} model, which transformers {transformers.__version__} "
                             "cannot load (unknown architecture; a newer transformers may know it).") from error
        with quiet_progress_bars():
            if backend == "minist":
                auto_model = bert.BertModel.from_pretrained(folder)
            else:
                auto_model = AutoModel.from_pretrained(folder, config=config)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        # As in sentence-transformers: the saved max_seq_length, else the tokenizer's limit, never past
        # the model's position table.
        max_seq_length = options.get("max_seq_length") or tokenizer.model_max_length
        max_seq_length = min(max_seq_length, getattr(config, "max_position_embeddings", max_seq_length))
        return cls(auto_model.eval(), tokenizer, max_seq_length, options.get("do_lower_case", False))

    def tokenize(self, texts: list[str], padding: bool = True) -> dict:
        """texts -> ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` for BERT), (batch, seq) tensors.

        With ``padding=False`` it returns the tokenizer's lists instead, one row per text, unpadded.
        """
        if self.do_lower_case:
            texts = [text.lower() for text in texts]
        return self.tokenizer(texts, padding=padding, truncation=True, max_length=self.max_seq_length,
                              return_tensors="pt" if padding else None)

    def pad(self, rows: list[dict[str, list[int]]]) -> dict[str, Tensor]:
        """Unpadded rows from ``tokenize(..., padding=False)`` -> one batch padded to its longest row."""
        return dict(self.tokenizer.pad(rows, return_tensors="pt"))

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        inputs = {name: features[name] for name in self.input_names if name in features}
        outputs = self.auto_model(**inputs)  # minist.bert returns the tensor itself
        features["token_embeddings"] = outputs if isinstance(outputs, Tensor) else outputs.last_hidden_state
        return features

    def get_word_embedding_dimension(self) -> int:
        return self.auto_model.config.hidden_size

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        with quiet_progress_bars():
            self.auto_model.save_pretrained(folder, safe_serialization=True)
            self.tokenizer.save_pretrained(folder)
        options = {"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case}
        (folder / "sentence_bert_config.json").write_text(json.dumps(options, indent=2))
