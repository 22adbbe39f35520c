"""Steps 1 and 2 of the pipeline: text -> token ids (the tokenizer) -> token embeddings (the model).

A thin wrapper over a Hugging Face fast tokenizer and a model (``transformers.AutoModel``, or with
``backend="minist"`` the from-scratch ``minist.bert``), as sentence-transformers' ``Transformer`` module is.
Texts are cut at ``max_seq_length`` tokens, from the right, exactly as the tokenizer's ``truncation=True``
does; ``max_seq_length`` can never pass the model's position table (``position_limit``).
Reading a folder into this step, and naming what is wrong in it, is ``minist.loading.load_transformer``;
writing it, ``minist.saving``.
Left out: images and audio, ``trust_remote_code``, the OpenVINO backend.
"""

from __future__ import annotations

import inspect
from typing import Literal

from torch import Tensor, nn

from minist.inputs import check_count

Backend = Literal["hf", "minist", "onnx"]


# Models whose position ids start after the padding index (transformers' create_position_ids_from_input_ids):
# rows 0 .. pad_token_id of the position table are never a text's, so pad_token_id + 1 fewer tokens fit.
# MPNet's padding index is 1 whatever its config says.
POSITIONS_AFTER_PADDING = {"camembert", "data2vec-text", "esm", "ibert", "layoutlmv3", "lilt", "longformer", "luke",
                           "markuplm", "mpnet", "roberta", "roberta-prelayernorm", "xlm-roberta", "xlm-roberta-xl",
                           "xmod"}


def position_limit(config) -> int | None:
    """The most tokens the model's position table holds (None: no table, e.g. T5's relative positions).

    BERT: ``max_position_embeddings`` (512); RoBERTa: 514 - (pad_token_id 1 + 1) = 512.
    """
    table = getattr(config, "max_position_embeddings", None)
    model_type = getattr(config, "model_type", None)
    if table is None or table < 1:  # XLNet writes -1 for "no limit"
        return None
    if model_type not in POSITIONS_AFTER_PADDING:
        return table
    padding = 1 if model_type == "mpnet" else config.pad_token_id
    return table - (padding + 1)


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
        # Kept from the config now: backend="onnx" later swaps auto_model for an ONNX Runtime session.
        self.position_limit = position_limit(auto_model.config)
        self.max_seq_length = max_seq_length
        self.do_lower_case = do_lower_case

    @property
    def max_seq_length(self) -> int:
        """Longest input in tokens, special tokens included; kept in the tokenizer, which does the cutting."""
        return self.tokenizer.model_max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        # Past the position table the model would fail on long texts (an IndexError deep in the embeddings).
        check_count("max_seq_length", value, most=self.position_limit,
                    what="the most tokens this model's position table holds")
        self.tokenizer.model_max_length = int(value)

    def tokenize(self, texts: list[str], padding: bool = True) -> dict:
        """texts -> ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` for BERT), (batch, seq) tensors.

        With ``padding=False`` it returns the tokenizer's lists instead, one row per text, unpadded.
        """
        if self.do_lower_case:
            texts = [text.lower() for text in texts]
        return self.tokenizer(texts, padding=padding, truncation=True, max_length=self.max_seq_length,
                              return_tensors="pt" if padding else None)

    def prompt_length(self, prompt: str) -> int:
        """How many tokens a prompt adds at the start of each text, the leading special token ([CLS]) counted,
        as sentence-transformers counts them for ``Pooling(include_prompt=False)``: "query: " -> 3 for BERT."""
        ids = self.tokenize([prompt], padding=False)["input_ids"][0]
        return len(ids) - (ids[-1] in self.tokenizer.all_special_ids)  # the trailing [SEP] is the text's

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
