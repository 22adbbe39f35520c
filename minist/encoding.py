"""Texts -> embeddings, batch by batch: the loop inside ``SentenceTransformer.encode``.

``encode`` checks its arguments (``check_arguments``), then calls ``encode_texts`` here, which:

1. tokenizes every text once, unpadded (with the prompt in front, if any), so their lengths are known;
2. cuts the texts into batches by token count (``token_batches``): longest first, each batch padded only to
   its own longest text and holding at most ``max_batch_tokens`` tokens that way, so little is spent on
   padding (notebook 08 measures it);
3. runs each batch through the model's steps, under ``torch.autocast`` when the model runs in bf16 or fp16;
4. puts each batch's vectors back in input order.

``as_results`` then gives them the type ``encode`` promises (numpy, a tensor, a list; quantized with
``precision=``). sentence-transformers sorts by character length and pads batches of a fixed count instead;
the numbers are the same.
Left out: a text's features padded to its batch's longest (``output_value=None`` gives each text its own).
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from minist.inputs import check_count
from minist.quantization import Precision, quantize_embeddings

logger = logging.getLogger("minist")

OutputValue = Literal["sentence_embedding", "token_embeddings"]  # or None: every feature, as dicts
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TRUNCATED = "%d of %d texts were longer than max_seq_length=%d tokens and were truncated."  # a pool sums them


def check_arguments(texts: int, output_value: str | None, precision: str | None, dimension: int,
                    **counts: int | None) -> Precision:
    """Refuse, by name, what ``encode`` cannot do with ``texts`` texts; returns the precision (None: "float32").

    ``counts``: ``truncate_dim`` (up to ``dimension``), ``batch_size`` and the others, each None or at least 1.
    The precision message is sentence-transformers' own.
    """
    if output_value not in (*get_args(OutputValue), None):
        raise ValueError(f"output_value must be 'sentence_embedding', 'token_embeddings' or None, "
                         f"not {output_value!r}.")
    for name, value in counts.items():
        check_count(name, value, most=dimension if name == "truncate_dim" else None, what="the embedding size",
                    optional=True)
    precision = precision or "float32"  # None: the default, as upstream
    if precision not in get_args(Precision):
        raise ValueError(f"Precision {precision!r} is not supported, must be one of {get_args(Precision)}")
    if precision != "float32" and output_value != "sentence_embedding":
        raise ValueError(f"precision quantizes sentence embeddings; output_value={output_value!r} comes in float32 "
                         "only.")
    if precision in ("int8", "uint8") and texts == 1:  # upstream returns garbage here (zero-width ranges)
        raise ValueError(f"precision={precision!r} takes its ranges from the embeddings encoded together, so it "
                         "needs two texts or more; for one, use minist.quantization.quantize_embeddings(..., "
                         "ranges=...) with ranges from a larger set.")
    return precision


def token_batches(lengths: list[int], batch_size: int | None, max_batch_tokens: int) -> list[list[int]]:
    """Text indices, longest first, cut into batches of at most ``batch_size`` texts (None: no limit) and
    ``max_batch_tokens`` tokens once padded to the batch's longest (a text past the budget goes alone).

    >>> token_batches([3, 9, 5, 4], batch_size=None, max_batch_tokens=10)
    [[1], [2, 3], [0]]
    """
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # longest first: memory errors show early
        batch = batches[-1] if batches else []
        if not batch or len(batch) == batch_size or (len(batch) + 1) * lengths[batch[0]] > max_batch_tokens:
            batches.append(batch := [])
        batch.append(i)
    return batches


def encode_texts(model, texts: list[str], prompt: str | None, batch_size: int | None, max_batch_tokens: int,
                 output_value: str, truncate_dim: int | None, normalize_embeddings: bool,
                 show_progress_bar: bool) -> Tensor | list[Tensor]:
    """A (texts, dim) float32 tensor of sentence embeddings in input order, or with
    ``output_value="token_embeddings"`` one (tokens, dim) tensor per text, or with None one dict of every
    feature per text (``text_features``). ``texts`` is not empty."""
    rows = model[0].tokenize([prompt + text for text in texts] if prompt else texts, padding=False)
    extra = {"prompt_length": model[0].prompt_length(prompt)} if prompt else {}  # Pooling may leave it out
    cut = sum(bool(encoding.overflowing) for encoding in rows.encodings)
    if cut:
        logger.warning(TRUNCATED, cut, len(texts), model.max_seq_length)
    batches = token_batches([len(ids) for ids in rows["input_ids"]], batch_size, max_batch_tokens)

    tokens: list = [None] * len(texts)  # token_embeddings or None: one tensor or dict per text
    embeddings = None  # sentence_embedding: one (texts, dim) block, filled batch by batch
    autocast = torch.autocast(model.device.type, dtype=AUTOCAST_DTYPES.get(model.quantize),
                              enabled=model.quantize in AUTOCAST_DTYPES)
    with torch.inference_mode(), autocast:
        for batch in tqdm(batches, desc="Batches", disable=not show_progress_bar):
            features = model[0].pad([{key: rows[key][i] for key in rows} for i in batch])
            features = model({key: value.to(model.device) for key, value in features.items()} | extra)
            if output_value != "sentence_embedding":
                # Each text's own rows: trailing padding dropped, as sentence-transformers does.
                kept = features["attention_mask"].cumsum(dim=1).argmax(dim=1) + 1  # up to the last real token
                for row, (i, n) in enumerate(zip(batch, kept.tolist(), strict=True)):
                    tokens[i] = features["token_embeddings"][row, :n].float() if output_value else \
                        text_features(features, row, n, truncate_dim)
            else:
                outputs = features["sentence_embedding"][:, :truncate_dim].float()  # [:, :None] keeps all
                outputs = F.normalize(outputs, p=2, dim=1) if normalize_embeddings else outputs
                if embeddings is None:
                    embeddings = outputs.new_empty(len(texts), outputs.shape[1])
                embeddings[batch] = outputs  # back in input order
    return embeddings if output_value == "sentence_embedding" else tokens


def text_features(features: dict, row: int, length: int, truncate_dim: int | None) -> dict:
    """One text's share of a batch's features: per-token ones cut to its ``length`` tokens, the sentence
    embedding to ``truncate_dim`` numbers, values of the whole batch (``prompt_length``) as they are."""
    batch, seq = features["attention_mask"].shape
    own = {}
    for name, value in features.items():
        if isinstance(value, Tensor) and value.dim() and value.shape[0] == batch:
            value = value[row]
            if name == "sentence_embedding":
                value = value[:truncate_dim]
            elif value.dim() and value.shape[0] == seq:  # (seq, ...) per token
                value = value[:length]
            value = value.float() if value.is_floating_point() else value
        own[name] = value
    return own


def as_results(encoded, single: bool, output_value: str, convert_to_numpy: bool, convert_to_tensor: bool,
               precision: str):
    """What ``encode`` returns, from the (texts, dim) tensor or the list of token tensors it computed."""
    if output_value != "sentence_embedding":
        results = encoded
    elif precision != "float32":
        quantized = quantize_embeddings(encoded.cpu(), precision)
        results = torch.from_numpy(quantized) if convert_to_tensor else (
            quantized if convert_to_numpy else list(torch.from_numpy(quantized)))
    elif convert_to_tensor:
        results = encoded
    else:
        results = encoded.cpu().numpy() if convert_to_numpy else list(encoded)
    return results[0] if single else results


def empty_result(dim: int, device: torch.device, output_value: str, convert_to_numpy: bool,
                 convert_to_tensor: bool, precision: str):
    """What ``encode([])`` returns: no rows, but the type, dtype and width that ``precision`` gives
    (int8 ``(0, dim)``; binary ``(0, ceil(dim / 8))``), so that it joins the other batches' results."""
    if output_value != "sentence_embedding" or not (convert_to_numpy or convert_to_tensor):
        return []
    if precision == "float32":
        return torch.empty(0, dim, device=device) if convert_to_tensor else np.zeros((0, dim), np.float32)
    empty = quantize_embeddings(np.zeros((0, dim), np.float32), precision, ranges=np.zeros((2, dim), np.float32))
    return torch.from_numpy(empty) if convert_to_tensor else empty  # on the CPU, as as_results puts quantized ones
