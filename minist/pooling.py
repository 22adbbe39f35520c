"""Step 3 of the pipeline: pool a sentence's token embeddings into one vector.

The six modes of sentence-transformers' ``Pooling`` module (Reimers & Gurevych, 2019,
https://arxiv.org/abs/1908.10084), each a few lines below:

- ``cls``: the first real token's embedding (BERT's [CLS]);
- ``mean``: the average over real tokens (padding masked out);
- ``max``: the element-wise maximum over real tokens;
- ``mean_sqrt_len_tokens``: the sum over real tokens divided by sqrt(number of tokens);
- ``weightedmean``: a mean where the i-th token weighs i (later tokens count more; SGPT);
- ``lasttoken``: the last real token, right or left padding alike (decoder models).

Several modes at once are concatenated, as in sentence-transformers. With ``include_prompt=False`` the
tokens of a prompt (``encode(prompt=...)``: "query: " before every text) are left out of every mode, as
instruction models such as INSTRUCTOR are trained; the rest keep their positions' weights.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from minist.inputs import json_field, read_json, renamed_keywords

PoolingMode = Literal["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
MODES: tuple[str, ...] = get_args(PoolingMode)  # in upstream's order, which its error message lists

# The boolean keys sentence-transformers (v2 to v5) writes in 1_Pooling/config.json, one per mode.
# Their order is the order in which sentence-transformers concatenates several modes.
_LEGACY_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


def pool(token_embeddings: Tensor, attention_mask: Tensor, mode: PoolingMode = "mean",
         prompt_length: int = 0) -> Tensor:
    """(batch, seq, dim) token embeddings and a (batch, seq) mask of 1s and 0s -> (batch, dim).

    ``prompt_length``: how many real tokens at the start (the [CLS] and a prompt's) to leave out.

    >>> pool(torch.tensor([[[1.0], [3.0], [9.0]]]), torch.tensor([[1, 1, 0]]), "mean")
    tensor([[2.]])
    """
    first = attention_mask.int().argmax(dim=1)  # (batch,) first real token: 0 unless padded on the left
    if prompt_length:  # the mask loses the prompt's tokens; weightedmean still counts positions from `first`
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        attention_mask = attention_mask * (positions >= (first + prompt_length)[:, None])
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)  # (batch, seq, 1)
    rows = torch.arange(len(first), device=first.device)
    if mode == "cls":
        return token_embeddings[rows, attention_mask.int().argmax(dim=1)]  # the first token kept
    if mode == "max":
        # Padding must never win the maximum, so it is pushed far below any real value.
        return token_embeddings.masked_fill(mask == 0, -1e9).max(dim=1).values
    if mode == "lasttoken":
        # The last 1 in each mask row; flipping finds it for right and left padding alike.
        seq_len = attention_mask.shape[1]
        last = seq_len - 1 - attention_mask.flip(dims=[1]).int().argmax(dim=1)  # (batch,)
        real = attention_mask.any(dim=1, keepdim=True).to(token_embeddings.dtype)  # a row of padding only: zeros,
        return token_embeddings[rows, last] * real  # as sentence-transformers gives
    if mode == "weightedmean":
        # The i-th real token (counting from 1) weighs i, also when padding comes first.
        positions = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=mask.dtype) - first[:, None]
        mask = mask * positions.unsqueeze(-1)
    summed = (token_embeddings * mask).sum(dim=1)  # (batch, dim)
    counts = mask.sum(dim=1).clamp(min=1e-9)  # (batch, 1); clamp keeps an all-padding row finite
    if mode in ("mean", "weightedmean"):
        return summed / counts
    if mode == "mean_sqrt_len_tokens":
        return summed / counts.sqrt()
    raise ValueError(f"Invalid pooling mode: {mode!r}. Valid pooling modes are: {MODES}.")


class Pooling(nn.Module):
    """Adds ``sentence_embedding`` (batch, len(modes) * dim) to the features dict."""

    @renamed_keywords(word_embedding_dimension="embedding_dimension")  # sentence-transformers 5's name
    def __init__(self, embedding_dimension: int, pooling_mode: str | Sequence[str] | None = None,
                 include_prompt: bool = True, **mode_flags: bool):
        """``Pooling(384)``, ``Pooling(384, "cls")`` or ``Pooling(384, ["cls", "mean"])`` (sentence-transformers 6).
        The older booleans (``pooling_mode_cls_token=True``, ...) work too, with upstream's FutureWarning, and
        are read as upstream reads them: the modes set True, in the booleans' order; ignored beside
        ``pooling_mode``."""
        super().__init__()
        if unknown := set(mode_flags) - set(_LEGACY_KEYS.values()):
            raise TypeError(f"Pooling.__init__() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        if mode_flags:
            warnings.warn(f"The {', '.join(f'`{key}`' for key in mode_flags)} argument(s) are deprecated. Please use "
                          "`pooling_mode` instead.", FutureWarning, stacklevel=3)
        if pooling_mode is None:  # the modes whose boolean is True; none: mean
            pooling_mode = [mode for mode, key in _LEGACY_KEYS.items() if mode_flags.get(key)] or "mean"
        self.modes = [pooling_mode] if isinstance(pooling_mode, str) else list(pooling_mode)
        for mode in self.modes:
            if mode not in MODES:  # upstream's words
                raise ValueError(f"Invalid pooling mode: {mode!r}. Valid pooling modes are: {MODES}.")
        if not self.modes:
            raise ValueError(f"No pooling mode given. Valid pooling modes are: {MODES}.")
        self.embedding_dimension = embedding_dimension
        self.include_prompt = include_prompt

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        tokens, mask = features["token_embeddings"], features["attention_mask"]
        skipped = 0 if self.include_prompt else features.get("prompt_length", 0)  # set by encode(prompt=...)
        pooled = [features["cls_token_embeddings"] if mode == "cls" and "cls_token_embeddings" in features
                  else pool(tokens, mask, mode, skipped) for mode in self.modes]  # a model may give its own CLS
        features["sentence_embedding"] = torch.cat(pooled, dim=1)
        return features

    @property
    def pooling_mode(self) -> str | tuple[str, ...]:
        """As sentence-transformers 6 gives it: the mode, or a tuple of them when several are concatenated."""
        return self.modes[0] if len(self.modes) == 1 else tuple(self.modes)

    def get_sentence_embedding_dimension(self) -> int:
        return len(self.modes) * self.embedding_dimension

    get_embedding_dimension = get_sentence_embedding_dimension  # sentence-transformers 6's name

    def extra_repr(self) -> str:
        return f"embedding_dimension={self.embedding_dimension}, modes={self.modes}" + (
            ", include_prompt=False" * (not self.include_prompt))

    @classmethod
    def load(cls, folder: Path) -> Pooling:
        """Reads ``config.json`` in either format: v6's ``pooling_mode`` or the older boolean keys."""
        path = Path(folder) / "config.json"
        config = read_json(path)
        keys = [key for key in ("embedding_dimension", "word_embedding_dimension") if key in config]  # v6, older
        if not keys:
            raise ValueError(f"{path} has no 'embedding_dimension' (or 'word_embedding_dimension'): the size of the "
                             "token embeddings it pools.")
        dimension = json_field(config, keys[0], int, path)
        mode = json_field(config, "pooling_mode", (str, list), path, None)
        mode = mode or [m for m, legacy in _LEGACY_KEYS.items() if json_field(config, legacy, bool, path, False)]
        try:
            return cls(dimension, mode, json_field(config, "include_prompt", bool, path, True))
        except ValueError as error:  # an unknown mode, or none at all
            raise ValueError(f"{path}: {error}") from error

    def save(self, folder: Path) -> None:
        """Writes the boolean-key format, which every sentence-transformers version reads."""
        config = {"word_embedding_dimension": self.embedding_dimension}
        config |= {key: mode in self.modes for mode, key in _LEGACY_KEYS.items()}
        if self.modes != [m for m in _LEGACY_KEYS if m in self.modes]:
            config["pooling_mode"] = self.modes  # booleans cannot keep an unusual order; v6 reads this
        config["include_prompt"] = self.include_prompt
        (Path(folder) / "config.json").write_text(json.dumps(config, indent=2))
