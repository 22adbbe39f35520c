"""The whole pipeline in one object: ``SentenceTransformer(name).encode(texts)`` -> embeddings.

A ``SentenceTransformer`` is an ``nn.Sequential`` of steps, each adding to one ``features`` dict:
``Transformer`` (input_ids -> token_embeddings), ``Pooling`` (-> sentence_embedding), then
optionally ``Dense`` and ``Normalize``. Index it to open a step: ``model[0].tokenizer``.
The folder layout it reads and writes is sentence-transformers' own (``modules.json`` lists the
steps), so models move between the two libraries in both directions.
Faster, a little less exact: ``quantize="int8"`` (CPU: int8 linear layers, see ``minist.quantization``),
``"bf16"`` or ``"fp16"`` (encode under ``torch.autocast``: matrix products in 16 bits, weights kept).
``backend="onnx"`` runs the transformer on ONNX Runtime (``minist.ort``), alone or with "int8".
Which of these runs fast depends on the CPU; ``minist.cpu.choose_path`` decides what runs.
Bad input is refused by name before any work: a text that is not a string or holds a lone surrogate, a
count out of range (both ``minist.inputs``), a device this machine lacks, a damaged file in the model
folder (``minist.loading``).
Prompts: ``prompts={"query": "query: "}`` names texts to put before the inputs (E5, BGE, INSTRUCTOR models
are trained so); ``encode_query`` and ``encode_document`` pick the right one, and a model folder's
``config_sentence_transformers.json`` brings its own.
Several processes or GPUs: ``start_multi_process_pool`` and ``encode(texts, pool=pool)`` (``minist.parallel``).
This module picks the path; ``encode``'s argument checks and batch loop are in ``minist.encoding``, the
folder writing in ``minist.saving``.
Left out: the OpenVINO backend.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import transformers
from torch import Tensor, nn

from minist.cpu import choose_path
from minist.encoding import AUTOCAST_DTYPES, OutputValue, as_results, check_arguments, empty_result, encode_texts
from minist.hub import resolve_model_folder
from minist.inputs import check_count, check_text, log_once, renamed_keywords, text_list
from minist.loading import load_steps, output_dimension, read_model_config
from minist.ort import onnx_model
from minist.parallel import Pool, encode_in_pool, start_pool, stop_pool
from minist.pooling import Pooling
from minist.quantization import Precision, quantize_linear_layers
from minist.saving import save_folder, write_model
from minist.similarity import SimilarityFunction
from minist.training import fit
from minist.transformer import Backend, Transformer

logger = logging.getLogger("minist")

Quantize = Literal["int8", "bf16", "fp16"]
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")  # encode_document takes the first the model has


def default_device() -> str:
    """CUDA if present, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class SentenceTransformer(nn.Sequential):
    """Load a model by folder, Hub id or short name, or build one from ``modules``.

    ``backend``: "hf" (default, transformers), "minist" (BERT-family models on the from-scratch
    ``minist.bert``) or "onnx" (CPU: ONNX Runtime, same numbers, faster; see ``minist.ort``).
    ``quantize`` trades a little accuracy for speed (default None: float32, the same numbers as
    sentence-transformers): "int8" on CPUs, "fp16" on GPUs, "bf16" on CPUs and GPUs that have bfloat16
    units. On a CPU that lacks the instructions a kernel needs, minist runs the fast one it has instead
    (int8 on ONNX Runtime) or float32, says so once in the log and in ``model.path_note``, and
    ``model.quantize`` / ``model.backend`` say what runs (``minist.cpu``). ``minist.measure.fastest_path``
    and notebook 08 measure what each buys on your machine; notebook 09 what each costs in quality.
    ``prompts`` (name -> text) add to the saved ones and win over them; ``default_prompt_name`` names the one
    ``encode`` uses when given none (default: none), as in sentence-transformers.

    >>> model = SentenceTransformer("all-MiniLM-L6-v2", device="cpu")
    >>> model.encode(["A cat sleeps.", "A kitten naps."]).shape
    (2, 384)
    """

    def __init__(self, model_name_or_path: str | Path | None = None, modules: list[nn.Module] | None = None,
                 device: str | None = None, cache_folder: str | Path | None = None, backend: Backend = "hf",
                 quantize: Quantize | None = None, similarity_fn_name: str | SimilarityFunction | None = None,
                 truncate_dim: int | None = None, prompts: dict[str, str] | None = None,
                 default_prompt_name: str | None = None):
        if quantize not in (None, "int8", *AUTOCAST_DTYPES):
            raise ValueError(f"quantize must be None, 'int8', 'bf16' or 'fp16', not {quantize!r}.")
        if backend == "onnx" and quantize in AUTOCAST_DTYPES:
            raise ValueError(f"quantize={quantize!r} runs torch.autocast; backend='onnx' takes None or 'int8'.")
        saved = {}
        if model_name_or_path is not None:
            folder = resolve_model_folder(model_name_or_path, cache_folder)
            modules = load_steps(folder, backend)
            saved = read_model_config(folder / "config_sentence_transformers.json")
        if not modules or not isinstance(modules[0], Transformer):
            raise ValueError("Give a model name or path, or modules that start with a minist Transformer.")
        super().__init__(*modules)
        self.name_or_path = None if model_name_or_path is None else str(model_name_or_path)
        # The arguments win over the saved config, as in sentence-transformers.
        self.similarity_fn_name = similarity_fn_name or saved.get("similarity_fn_name")
        self.prompts = {"query": "", "document": ""} | saved.get("prompts", {}) | (prompts or {})
        self.prompts = {name: "" if text is None else text for name, text in self.prompts.items()}  # None: no prompt
        if not all(isinstance(name, str) and isinstance(text, str) for name, text in self.prompts.items()):
            raise TypeError(f"prompts must map names to texts (strings), not {prompts!r:.80}.")
        self.default_prompt_name = default_prompt_name or saved.get("default_prompt_name")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(f"Default prompt name '{self.default_prompt_name}' not found in the configured prompts "
                             f"dictionary with keys {list(self.prompts)!r}.")  # upstream's words, and below
        if self.default_prompt_name:
            log_once(logging.WARNING, f"Default prompt name is set to '{self.default_prompt_name}'. This prompt "
                     "applies unless overridden by `prompt`, `prompt_name`, or a method-specific prompt, including "
                     "an empty prompt.")
        check_count("truncate_dim", truncate_dim, most=output_dimension(self), what="the embedding size", optional=True)
        self.truncate_dim = truncate_dim  # encode's default: keep the first truncate_dim numbers
        self.quantize, self.backend = quantize, backend
        device = self._usable_device(device or default_device())
        # What runs may differ from what was asked: the fast kernels need instructions not every CPU has.
        self.quantize, self.backend, self.path_note = choose_path(quantize, backend, device.type)
        if self.path_note:
            log_once(logging.WARNING if self.quantize is None else logging.INFO, self.path_note)
        self.to(device)
        if self.backend == "onnx":
            self[0].auto_model = onnx_model(self[0], int8=self.quantize == "int8")
        elif self.quantize == "int8":
            quantize_linear_layers(self[0].auto_model)

    def extra_repr(self) -> str:
        """What runs and what encode returns, where not the defaults: the first line of ``repr(model)``."""
        prompts = {name: text for name, text in self.prompts.items() if text}
        return ", ".join([f"quantize={self.quantize!r}"] * bool(self.quantize)
                         + [f"backend={self.backend!r}"] * (self.backend != "hf")
                         + [f"truncate_dim={self.truncate_dim}"] * (self.truncate_dim is not None)
                         + [f"prompts={prompts}"] * bool(prompts)
                         + [f"default_prompt_name={self.default_prompt_name!r}"] * bool(self.default_prompt_name))

    def _usable_device(self, device: str | torch.device) -> torch.device:
        """``device`` parsed and checked: one torch knows, this machine has, and this model can run on."""
        try:
            parsed = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device={device!r} is not a device torch knows ({error}).") from error
        if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s).")
        if parsed.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device={device!r}, but Apple's MPS is not available on this machine.")
        if (self.quantize == "int8" or self.backend == "onnx") and parsed.type != "cpu":
            raise ValueError(f"quantize='int8' and backend='onnx' run on the CPU, not {parsed.type}; "
                             "use quantize='fp16' on a GPU.")
        return parsed

    # --- the pieces, for inspection -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters(), torch.empty(0)).device  # an ONNX model has no torch parameters: the CPU

    @property
    def tokenizer(self):
        return self[0].tokenizer

    @property
    def max_seq_length(self) -> int:
        return self[0].max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self[0].max_seq_length = value

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """texts -> padded (batch, seq) tensors: ``input_ids``, ``attention_mask`` (and ``token_type_ids``)."""
        return self[0].tokenize(texts)

    @property
    def transformers_model(self) -> transformers.PreTrainedModel | None:
        """The Hugging Face model inside, or None where another backend runs it (ONNX Runtime, minist.bert)."""
        model = self[0].auto_model
        return model if isinstance(model, transformers.PreTrainedModel) else None

    def get_embedding_dimension(self) -> int:
        """The size of what ``encode`` returns: the last step that changes it decides, then ``truncate_dim``."""
        full = output_dimension(self)
        return min(full, self.truncate_dim or full)

    get_sentence_embedding_dimension = get_embedding_dimension  # the name before sentence-transformers 6

    @contextmanager
    def truncate_embeddings(self, truncate_dim: int | None) -> Iterator[None]:
        """``with model.truncate_embeddings(64): model.encode(...)`` returns 64 numbers per text."""
        kept, self.truncate_dim = self.truncate_dim, truncate_dim
        try:
            yield
        finally:
            self.truncate_dim = kept

    @property
    def similarity_fn_name(self) -> str:
        """"cosine", "dot", "euclidean" or "manhattan": what ``model.similarity`` computes."""
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, name: str | SimilarityFunction | None) -> None:
        """Checked when set, as upstream: an unknown name fails here, not at the first ``similarity`` call."""
        try:
            self._similarity_fn_name = SimilarityFunction(name or "cosine").value
        except ValueError:
            raise ValueError(f"similarity_fn_name must be one of {SimilarityFunction.possible_values()}, "
                             f"not {name!r}.") from None

    def similarity(self, a, b) -> Tensor:
        """The model's similarity function (cosine unless its config names another): (n, dim), (m, dim) -> (n, m)."""
        return SimilarityFunction.to_similarity_fn(self.similarity_fn_name)(a, b)

    def similarity_pairwise(self, a, b) -> Tensor:
        """The same function, row by row: (n, dim), (n, dim) -> (n,) with ``[i] = similarity(a[i], b[i])``."""
        return SimilarityFunction.to_similarity_pairwise_fn(self.similarity_fn_name)(a, b)

    def set_pooling_include_prompt(self, include_prompt: bool) -> None:
        """Whether pooling counts the prompt's tokens (INSTRUCTOR models are trained without them)."""
        for step in self:
            if isinstance(step, Pooling):
                step.include_prompt = include_prompt
                break

    fit = fit  # model.fit(train_objectives=[(dataloader, loss)], ...): see minist.training

    # --- encode ------------------------------------------------------------------------------------
    @renamed_keywords(sentences="inputs")
    def encode_query(self, inputs: str | list[str], prompt_name: str | None = None, prompt: str | None = None,
                     **kwargs):
        """``encode`` for search queries: with the model's "query" prompt, unless given another."""
        if prompt_name is None and prompt is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    @renamed_keywords(sentences="inputs")
    def encode_document(self, inputs: str | list[str], prompt_name: str | None = None, prompt: str | None = None,
                        **kwargs):
        """``encode`` for what is searched: with the model's "document" prompt ("passage", "corpus" as a second
        and third choice), unless given another."""
        if prompt_name is None and prompt is None:
            prompt_name = next((name for name in DOCUMENT_PROMPT_NAMES if name in self.prompts), None)
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    @renamed_keywords(sentences="inputs")  # upstream's name before version 6, still taken with a warning
    def encode(self, inputs: str | list[str], prompt_name: str | None = None, prompt: str | None = None,
               batch_size: int | None = None, show_progress_bar: bool | None = None,
               output_value: OutputValue | None = "sentence_embedding", convert_to_numpy: bool = True,
               convert_to_tensor: bool = False, normalize_embeddings: bool = False,
               device: str | list[str] | None = None, truncate_dim: int | None = None,
               max_batch_tokens: int | None = None, precision: Precision | None = "float32", pool: Pool | None = None,
               chunk_size: int | None = None):
        """Texts -> embeddings, in input order.

        ``prompt`` is put before every text ("query: " + text); ``prompt_name`` picks one of ``model.prompts``
        instead; with neither, the ``default_prompt_name`` prompt, if the model has one.
        A string gives one (dim,) vector; a list gives (len, dim): a numpy array, or a tensor with
        ``convert_to_tensor=True``, or a list of tensors when both conversions are off.
        ``output_value="token_embeddings"`` gives each text's (tokens, dim) tensor instead, and ``None`` each
        text's every feature as a dict (``input_ids``, ``attention_mask``, ``token_embeddings``, ...; its own
        tokens, where upstream keeps the batch's padding), as sentence-transformers does.
        ``truncate_dim`` keeps the first numbers of each embedding (for Matryoshka-trained models), before
        any normalization. ``precision`` other than "float32" (or None) quantizes the embeddings at the end, as
        ``minist.quantization.quantize_embeddings`` does (int8/uint8 ranges from these embeddings themselves).
        Batches are formed by token count: texts sorted by length, each batch padded to its own longest and
        holding at most ``max_batch_tokens`` tokens that way (default 2,048 on a CPU, 16,384 on a GPU), so
        short texts go many to a batch and long ones few. ``batch_size`` also caps the texts per batch.
        ``pool`` (from ``start_multi_process_pool``), or ``device`` as a list of devices, encodes in worker
        processes, ``chunk_size`` texts at a time (``minist.parallel``); the result is the same within 1e-5.
        The batch loop itself is ``minist.encoding.encode_texts``.
        """
        single = isinstance(inputs, str)
        texts = text_list(inputs)  # every item checked before any work
        prompt = self._resolve_prompt(prompt, prompt_name)
        precision = check_arguments(len(texts), output_value, precision, output_dimension(self), truncate_dim=
                                    truncate_dim, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                    chunk_size=chunk_size)
        truncate_dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        if pool is not None or isinstance(device, list):  # worker processes encode chunks: minist.parallel
            if output_value is None:
                raise ValueError("output_value=None (every feature) is not sent back by a pool: encode without one.")
            if not texts:
                return empty_result(truncate_dim or self.get_embedding_dimension(), self.device, output_value,
                                    convert_to_numpy, convert_to_tensor, precision)
            encoded = encode_in_pool(self, texts, pool or device, chunk_size, show_progress_bar, dict(
                prompt=prompt or "", batch_size=batch_size, output_value=output_value, truncate_dim=truncate_dim,
                normalize_embeddings=normalize_embeddings, max_batch_tokens=max_batch_tokens))
            return as_results(encoded, single, output_value, convert_to_numpy, convert_to_tensor, precision)
        if device is not None:
            self.to(self._usable_device(device))
        if max_batch_tokens is None:  # on a CPU, batches whose activations stay in the cache run fastest
            max_batch_tokens = 2048 if self.device.type == "cpu" else 16384  # (measured: notebook 08)
        self.eval()
        if not texts:
            return empty_result(truncate_dim or self.get_embedding_dimension(), self.device, output_value,
                                convert_to_numpy, convert_to_tensor, precision)

        encoded = encode_texts(self, texts, prompt, batch_size, max_batch_tokens, output_value, truncate_dim,
                               normalize_embeddings, show_progress_bar)
        return as_results(encoded, single, output_value, convert_to_numpy, convert_to_tensor, precision)

    # --- several processes: minist.parallel ----------------------------------------------------------
    def start_multi_process_pool(self, target_devices: list[str] | None = None) -> Pool:
        """Worker processes with a copy of this model each, for ``encode(texts, pool=pool)``: one per GPU, else
        ``min(4, cores)`` on the CPU sharing the cores. Stop it with ``stop_multi_process_pool`` or a ``with``."""
        return start_pool(self, target_devices)

    stop_multi_process_pool = staticmethod(stop_pool)

    def encode_multi_process(self, sentences: list[str], pool: Pool, prompt_name: str | None = None,
                             prompt: str | None = None, batch_size: int | None = None, chunk_size: int | None = None,
                             show_progress_bar: bool | None = None, precision: Precision = "float32",
                             normalize_embeddings: bool = False, truncate_dim: int | None = None) -> np.ndarray:
        """The older name (sentence-transformers < 5) of ``encode(sentences, pool=pool, ...)``: numpy out."""
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, batch_size=batch_size,
                           show_progress_bar=show_progress_bar, precision=precision, pool=pool, chunk_size=chunk_size,
                           normalize_embeddings=normalize_embeddings, truncate_dim=truncate_dim)

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        """The prompt text encode puts first: ``prompt``, else ``prompts[prompt_name]``, else the default's.
        The warning and the error are sentence-transformers' own words."""
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, not {type(prompt).__name__}.")
            if prompt_name is not None:
                logger.warning("Provide either a `prompt`, a `prompt_name`, or neither, but not both. "
                               "Ignoring the `prompt_name` in favor of `prompt`.")
            check_text(prompt, "prompt")  # a lone surrogate is named here, not by the tokenizer
            return prompt
        if prompt_name is not None and prompt_name not in self.prompts:
            raise ValueError(f"Prompt name '{prompt_name}' not found in the configured prompts dictionary with keys "
                             f"{list(self.prompts)!r}.")
        prompt_name = prompt_name or self.default_prompt_name
        if prompt_name in self.prompts:  # set in the constructor or since: checked as a given one is
            check_text(self.prompts[prompt_name], f"prompt {prompt_name!r}")
        return self.prompts.get(prompt_name)

    # --- save --------------------------------------------------------------------------------------
    def save(self, path: str | Path, safe_serialization: bool = True) -> None:
        """Write the model in sentence-transformers' layout, all or nothing (see ``minist.saving``).

        ``safe_serialization=False`` writes Dense weights as ``pytorch_model.bin``, as sentence-transformers
        does; the transformer's are safetensors either way (transformers 5 writes no other format).
        """
        if self.quantize == "int8" or self.backend == "onnx":
            raise ValueError("An int8-quantized or ONNX model cannot be saved (its torch weights are gone): save the "
                             "float32 model and load that with quantize='int8' or backend='onnx'.")
        save_folder(functools.partial(write_model, self, safe_serialization=safe_serialization), path)

    save_pretrained = save  # sentence-transformers' other name for it


