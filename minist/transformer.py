"""Steps 1 and 2 of the pipeline: text -> token ids (the tokenizer) -> token embeddings (the model).

A thin wrapper over a Hugging Face fast tokenizer and ``transformers.AutoModel``, as
sentence-transformers' ``Transformer`` module is. Texts are cut at ``max_seq_length`` tokens,
from the right, exactly as the tokenizer's ``truncation=True`` does.
Left out: images and audio, ``trust_remote_code``, the OpenVINO backend.
With ``backend="minist"`` the model is ``minist.bert``'s from-scratch BERT (BERT-family folders only).
``max_seq_length`` can never pass the model's position table (``position_limit``), and a damaged file in the
folder fails with that file's path (``blamed_on``), whichever library tripped over it.
"""

from __future__ import annotations

import inspect
import json
import logging
import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import transformers
from torch import Tensor, nn
from transformers import CONFIG_MAPPING, AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from minist import bert
from minist.hub import json_field, read_json

logger = logging.getLogger("minist")

Backend = Literal["hf", "minist", "onnx"]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model")
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


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


@contextmanager
def blamed_on(path: Path, what: str) -> Iterator[None]:
    """Re-raise a loader's failure as a ValueError naming the file it was reading (the cause stays chained).

    transformers, tokenizers, safetensors and pickle each fail in their own way on a damaged file, hence the
    broad except; a missing package or memory is not the file's fault and passes through.
    """
    try:
        yield
    except (ImportError, MemoryError):
        raise
    except Exception as error:
        raise ValueError(f"{path}: {what} failed ({type(error).__name__}: {error})") from error


def check_model_folder(folder: Path) -> None:
    """Raise FileNotFoundError naming what a Hugging Face model folder lacks: config, weights or tokenizer."""
    wanted = {"a config": ("config.json",), "weights": WEIGHT_FILES, "a tokenizer": TOKENIZER_FILES}
    missing = [f"{what} ({' or '.join(names)})" for what, names in wanted.items()
               if not any((folder / name).is_file() for name in names)]
    if missing:
        raise FileNotFoundError(f"The model folder {folder} has no {' and no '.join(missing)}.")


def load_config(folder: Path):
    """``folder/config.json`` -> transformers' config; a bad file or an unknown architecture is named."""
    path = folder / "config.json"
    try:
        return AutoConfig.from_pretrained(folder)
    except Exception as error:
        model_type = json_field(read_json(path), "model_type", str, path)  # first: is it JSON, with a model_type?
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"{folder} holds a {model_type!r} model, which transformers {transformers.__version__} "
                             "cannot load (unknown architecture; a newer transformers may know it).") from error
        with blamed_on(path, "reading the model's config"):
            raise  # transformers' own error, which blamed_on re-raises with the file named


def load_weights(folder: Path, config, backend: Backend) -> nn.Module:
    """The model with its weights; a weights file that is damaged, or lacks some of the weights, is named."""
    weights = next(folder / name for name in WEIGHT_FILES if (folder / name).is_file())
    with quiet_progress_bars(), blamed_on(weights, "loading the weights"):
        if backend == "minist":
            return bert.BertModel.from_pretrained(folder)  # it checks that every weight is there
        model, info = AutoModel.from_pretrained(folder, config=config, output_loading_info=True)
    # transformers fills missing weights with random numbers and only logs it; the pooler is never used.
    missing = sorted(key for key in info["missing_keys"] if not key.startswith("pooler."))
    if missing:
        raise ValueError(f"{weights} lacks {len(missing)} of the model's weights ({', '.join(missing[:3])}, ...); "
                         "transformers would fill them with random numbers.")
    return model


def load_tokenizer(folder: Path):
    """The fast tokenizer of ``folder``; when loading fails, the file to blame is named."""
    try:
        with quiet_progress_bars():
            return AutoTokenizer.from_pretrained(folder)
    except Exception:
        for name in TOKENIZER_JSON_FILES:  # a damaged JSON file names itself
            if (folder / name).is_file():
                read_json(folder / name)
        main = next(folder / name for name in TOKENIZER_FILES if (folder / name).is_file())
        with blamed_on(main, "building the tokenizer"):
            raise  # as in load_config


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
        limit = self.position_limit
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"max_seq_length must be an int, not {type(value).__name__} {value!r}.")
        if value < 1 or (limit is not None and value > limit):
            upper = "" if limit is None else f" to {limit} (the most tokens this model's position table holds)"
            raise ValueError(f"max_seq_length must be from 1{upper}, not {value}.")
        self.tokenizer.model_max_length = int(value)

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
        options = read_json(options_file) if options_file.is_file() else {}
        saved_length = json_field(options, "max_seq_length", (int, type(None)), options_file, None)
        do_lower_case = json_field(options, "do_lower_case", bool, options_file, False)
        if saved_length is not None and saved_length < 1:
            raise ValueError(f"{options_file}: max_seq_length must be at least 1, not {saved_length}.")
        config = load_config(folder)
        auto_model = load_weights(folder, config, backend)
        tokenizer = load_tokenizer(folder)
        # As in sentence-transformers: the saved max_seq_length, else the tokenizer's limit, never past the
        # model's position table (which sentence-transformers takes to be max_position_embeddings: for
        # RoBERTa, 2 too many, so a long text fails there).
        max_seq_length, limit = saved_length or int(tokenizer.model_max_length), position_limit(config)
        if limit is not None and max_seq_length > limit:
            if saved_length is not None:
                logger.warning("%s asks for max_seq_length=%d, but the model's position table holds %d tokens: "
                               "using %d.", options_file, saved_length, limit, limit)
            max_seq_length = limit
        return cls(auto_model.eval(), tokenizer, max_seq_length, do_lower_case)

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

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        with quiet_progress_bars():
            self.auto_model.save_pretrained(folder, safe_serialization=True)
            self.tokenizer.save_pretrained(folder)
        options = {"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case}
        (folder / "sentence_bert_config.json").write_text(json.dumps(options, indent=2))
