"""The second kind of model: a cross-encoder reads a (query, document) pair together and gives it a score.

A bi-encoder (``SentenceTransformer``) embeds each text alone, so a corpus is embedded once and searched by
cosine. A cross-encoder puts both texts through the transformer as one input, ``[CLS] query [SEP] document
[SEP]``, so that attention runs across the two; a classification head on [CLS] gives ``num_labels`` logits
(``transformers.AutoModelForSequenceClassification``). That reads the pair better, at one forward pass per
pair: it reranks the top hits of a bi-encoder rather than searching a corpus (notebook 11).
``predict`` scores pairs, ``rank`` sorts documents for a query: sentence-transformers 6's API and numbers.
The default activation is sentence-transformers': sigmoid for one label (a score in 0-1), none for more.

Folders: it reads both layouts found in the wild, sentence-transformers 6's (``modules.json`` with one
Transformer, ``config_sentence_transformers.json`` with the activation) and a plain sequence-classification
folder (most rerankers on the Hub; the activation, if any, in ``config.json``'s ``sentence_transformers``).
It writes sentence-transformers 6's. An embedding model's folder has no head: it is refused unless
``num_labels`` is given, which starts a new, untrained head on its transformer.
Left out: multi-process and multi-GPU predict, prompts, causal-LM rerankers (LogitScore), ONNX.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import Tensor, nn
from tqdm.auto import trange
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging as hf_logging

from minist.hub import resolve_model_folder
from minist.inputs import check_count, check_text, json_field, read_json, renamed_keywords
from minist.loading import blamed_on, check_model_folder, load_config, load_tokenizer, quiet_progress_bars
from minist.saving import save_folder, write_modules_json
from minist.transformer import Transformer, position_limit

logger = logging.getLogger("minist")

# What sentence-transformers 6 writes beside a cross-encoder's transformer, and reads back.
ST_CONFIG = {"transformer_task": "sequence-classification", "module_output_name": "scores",
             "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}}}


def check_pairs(inputs) -> list[tuple[str, str]]:
    """A list of (text, text) pairs, each text checked (``check_text``), before any work."""
    if not isinstance(inputs, list | tuple):
        raise TypeError(f"Expected a (text, text) pair or a list of them, not {type(inputs).__name__}.")
    for i, pair in enumerate(inputs):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ValueError(f"Pair {i} is {pair!r:.60}: a cross-encoder scores (text, text) pairs, two texts each.")
        for j, text in enumerate(pair):
            check_text(text, f"pair {i}, text {j}")
    return [tuple(pair) for pair in inputs]


def activation_from_path(path: str | None, default: nn.Module) -> nn.Module:
    """A saved activation ("torch.nn.modules.activation.Sigmoid") -> the module; others are not run (warning)."""
    if path is None:
        return default
    module, _, name = path.rpartition(".")
    if not path.startswith("torch."):  # loading it would run code from the folder: upstream asks for trust
        logger.warning("Activation function path '%s' is not trusted, using default activation function instead.",
                       path)
        return default
    return getattr(importlib.import_module(module), name)()


class CrossEncoder(nn.Sequential):
    """A transformer with a classification head, scoring text pairs; ``model[0]`` is the ``Transformer`` step.

    >>> reranker = CrossEncoder("all-MiniLM-L6-v2", num_labels=1)  # a new head: train it (notebook 11)
    >>> reranker.predict([("How many people live in Berlin?", "Berlin has 3.5 million people.")]).shape
    (1,)
    """

    def __init__(self, model_name_or_path: str | Path, num_labels: int | None = None, max_length: int | None = None,
                 activation_fn: Callable | None = None, device: str | None = None,
                 cache_folder: str | Path | None = None):
        check_count("num_labels", num_labels, optional=True)
        folder = resolve_model_folder(model_name_or_path, cache_folder)
        saved = read_json(folder / "config_sentence_transformers.json") if (
            folder / "config_sentence_transformers.json").is_file() else {}
        if (folder / "modules.json").is_file():  # sentence-transformers' layout: the transformer's own folder
            folder = folder / json_field(read_json(folder / "modules.json", list)[0], "path", str, folder)
        check_model_folder(folder)
        config = load_config(folder)
        has_head = any(name.endswith("ForSequenceClassification") for name in config.architectures or [])
        if not has_head and num_labels is None:
            raise ValueError(f"{folder} holds an embedding model ({', '.join(config.architectures or ['?'])}), not a "
                             "reranker: it has no classification head. CrossEncoder(name, num_labels=1) starts a new "
                             "head on its transformer, to be trained before its scores mean anything.")
        if has_head and num_labels is not None and num_labels != config.num_labels:
            raise ValueError(f"num_labels={num_labels}, but the head saved in {folder} gives {config.num_labels}: "
                             "leave num_labels out to use it.")
        config.num_labels = num_labels or config.num_labels
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # transformers' load report would list the new head: minist says it below
        try:
            with quiet_progress_bars(), blamed_on(folder, "loading the weights"):
                auto_model, info = AutoModelForSequenceClassification.from_pretrained(folder, config=config,
                                                                                      output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        missing = [key for key in info["missing_keys"] if not (key.startswith("classifier.") and not has_head)]
        if missing:
            raise ValueError(f"{folder} lacks {len(missing)} of the model's weights ({', '.join(missing[:3])}, ...); "
                             "transformers would fill them with random numbers.")
        if not has_head:
            logger.warning("A new classification head (num_labels=%d) on the transformer of %s: train it before "
                           "its scores mean anything.", config.num_labels, model_name_or_path)
        tokenizer = load_tokenizer(folder)
        length = max_length or min(int(tokenizer.model_max_length), position_limit(config) or 10**9)
        super().__init__(Transformer(auto_model.eval(), tokenizer, length))
        self.name_or_path, self.quantize, self.backend = str(model_name_or_path), None, "hf"  # trainable float32
        # The arguments win over the saved activation (v6's file, then older ones' config.json), then the default.
        default = nn.Sigmoid() if self.num_labels == 1 else nn.Identity()
        saved_path = saved.get("activation_fn") or getattr(config, "sentence_transformers", {}).get(
            "activation_fn") or getattr(config, "sbert_ce_default_activation_function", None)
        self.activation_fn = activation_fn or activation_from_path(saved_path, default)
        self.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def __setattr__(self, name, value):
        if name == "activation_fn":  # a plain attribute, not a submodule: it is no step of the model
            return object.__setattr__(self, name, value)
        return super().__setattr__(name, value)

    # --- the pieces, for inspection -------------------------------------------------------------
    model = property(lambda self: self[0].auto_model, doc="transformers' model, with its head")
    tokenizer = property(lambda self: self[0].tokenizer)
    num_labels = property(lambda self: self.model.config.num_labels)
    device = property(lambda self: next(self.parameters()).device)
    config = property(lambda self: self.model.config)

    @property
    def max_length(self) -> int:
        """Most tokens of a pair, special tokens included; a longer pair loses tokens from its longer text."""
        return self[0].max_seq_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self[0].max_seq_length = value

    max_seq_length = max_length  # sentence-transformers 6's name for it

    def tokenize(self, pairs: list[tuple[str, str]]) -> dict[str, Tensor]:
        """pairs -> ``[CLS] a [SEP] b [SEP]`` ids, (batch, seq); cut as upstream: the longer text first."""
        firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
        tokens = self.tokenizer(firsts, seconds, padding=True, truncation="longest_first",
                                max_length=self.max_length, return_tensors="pt")
        return {name: tokens[name] for name in self[0].input_names if name in tokens}

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        features["scores"] = self.model(**features).logits  # (batch, num_labels)
        return features

    # --- scoring ------------------------------------------------------------------------------
    @renamed_keywords(sentences="inputs", activation_fct="activation_fn")  # upstream's older names, warned once
    @torch.inference_mode()
    def predict(self, inputs: Sequence[str] | Sequence[Sequence[str]], batch_size: int = 32,
                show_progress_bar: bool | None = None, activation_fn: Callable | None = None,
                apply_softmax: bool = False, convert_to_numpy: bool = True,
                convert_to_tensor: bool = False) -> np.ndarray | Tensor | list:
        """Scores of pairs: (n,) for one label, (n, num_labels) for more; one pair in, one score (row) out.

        ``activation_fn`` (default: the model's) is applied to the logits; ``apply_softmax`` then makes each row
        of a multi-label model sum to 1.
        """
        single = isinstance(inputs, list | tuple) and len(inputs) > 0 and not isinstance(inputs[0], list | tuple)
        pairs = check_pairs([inputs] if single else inputs)
        check_count("batch_size", batch_size)
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        activation_fn = activation_fn or self.activation_fn
        self.eval()
        order = np.argsort([-len(a) - len(b) for a, b in pairs], kind="stable")  # longest first: less padding
        scores = []
        for start in trange(0, len(pairs), batch_size, desc="Batches", disable=not show_progress_bar):
            batch = self.tokenize([pairs[i] for i in order[start:start + batch_size]])
            logits = self({name: value.to(self.device) for name, value in batch.items()})["scores"].float()
            logits = activation_fn(logits) if activation_fn is not None else logits
            logits = logits.squeeze(-1) if self.num_labels == 1 else logits
            scores.extend(torch.softmax(logits, dim=1) if apply_softmax and logits.ndim > 1 else logits)
        scores = [scores[i] for i in np.argsort(order)]
        if convert_to_tensor:
            result = torch.stack(scores) if scores else torch.tensor([], device=self.device)
        elif convert_to_numpy:
            result = torch.stack(scores).cpu().numpy() if scores else np.array([])
        else:
            result = scores
        return result[0] if single else result

    @renamed_keywords(activation_fct="activation_fn")
    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False,
             batch_size: int = 32, show_progress_bar: bool | None = None,
             activation_fn: Callable | None = None) -> list[dict]:
        """The documents sorted by their score with ``query``, best first: ``[{"corpus_id", "score"(, "text")}]``.

        >>> reranker.rank("a cat", ["a car", "a kitten"], top_k=1)  # doctest: +SKIP
        [{'corpus_id': 1, 'score': 0.97}]
        """
        if self.num_labels != 1:
            raise ValueError("CrossEncoder.rank() only works for models with num_labels=1. "
                             "Consider using CrossEncoder.predict() with input pairs instead.")
        check_text(query, "query")
        check_count("top_k", top_k, optional=True)
        if isinstance(documents, str):
            raise TypeError("documents must be a list of strings, not one str.")
        scores = self.predict([(query, document) for document in documents], batch_size, show_progress_bar,
                              activation_fn, convert_to_tensor=True).tolist()
        hits = [{"corpus_id": i, "score": score} | ({"text": documents[i]} if return_documents else {})
                for i, score in enumerate(scores)]
        return sorted(hits, key=lambda hit: hit["score"], reverse=True)[:top_k]

    # --- save --------------------------------------------------------------------------------------
    def save(self, path: str | Path, safe_serialization: bool = True) -> None:
        """Write the model in sentence-transformers 6's layout, all or nothing (``minist.saving.save_folder``)."""
        save_folder(functools.partial(write_cross_encoder, self), path)

    save_pretrained = save


def write_cross_encoder(model: CrossEncoder, folder: Path) -> None:
    """The transformer with its head and tokenizer (which keeps ``max_length``), and sentence-transformers 6's
    files: ``sentence_bert_config.json``, ``config_sentence_transformers.json`` (the activation), ``modules.json``."""
    activation = type(model.activation_fn)
    if not isinstance(model.activation_fn, nn.Module):
        logger.warning("Saving activation function %r: plain functions can't be restored from the configuration, so "
                       "loading will use the default activation function.", model.activation_fn)
    with quiet_progress_bars():
        model.model.save_pretrained(folder, safe_serialization=True)
        model.tokenizer.save_pretrained(folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps(ST_CONFIG, indent=4))
    config = {"__version__": {"minist": importlib.metadata.version("minist"), "transformers": transformers.__version__,
                              "pytorch": torch.__version__},
              "activation_fn": f"{activation.__module__}.{activation.__qualname__}", "default_prompt_name": None,
              "model_type": "CrossEncoder", "prompts": {}}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config, indent=2))
    write_modules_json(folder, [("", "sentence_transformers.base.modules.transformer.Transformer")])
