"""A BERT encoder in plain torch, to read in one sitting next to the Hugging Face one it equals.

token ids -> embeddings (word + position + token type, then LayerNorm) -> N identical layers, each:
multi-head self-attention over the non-padding tokens, residual + LayerNorm, a feed-forward block
(Linear, GELU, Linear), residual + LayerNorm (Vaswani et al., 2017; Devlin et al., 2019).
The submodules carry the names of transformers' ``BertModel``, so its ``model.safetensors`` loads as is.
Leaves out: dropout (this is for inference), the pooler, relative position embeddings, caching,
cross-attention and decoder use.

>>> from transformers import AutoTokenizer
>>> from minist.hub import resolve_model_folder
>>> folder = resolve_model_folder("all-MiniLM-L6-v2")
>>> batch = AutoTokenizer.from_pretrained(folder)(["A cat sleeps.", "A kitten naps on the mat."], padding=True,
...                                               return_tensors="pt")
>>> BertModel.from_pretrained(folder)(batch["input_ids"], batch["attention_mask"]).shape  # (texts, tokens, dim)
torch.Size([2, 10, 384])
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


class Embeddings(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        hidden = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, hidden)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, hidden)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (seq,)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(
            token_type_ids)
        return self.LayerNorm(x)  # (batch, seq, hidden)


class SelfAttention(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        hidden = config.hidden_size
        self.heads = config.num_attention_heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        batch, seq, hidden = x.shape

        def split_heads(t: Tensor) -> Tensor:  # (batch, seq, hidden) -> (batch, heads, seq, head_dim)
            return t.view(batch, seq, self.heads, hidden // self.heads).transpose(1, 2)

        q, k, v = split_heads(self.query(x)), split_heads(self.key(x)), split_heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hidden // self.heads)  # (batch, heads, seq, seq)
        # Padding keys get the lowest score, so softmax gives them (almost exactly) zero weight.
        scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, seq, hidden)  # heads side by side again
        return out, weights


class AddNorm(nn.Module):
    """``LayerNorm(residual + dense(x))``; transformers names it BertSelfOutput or BertOutput."""

    def __init__(self, d_in: int, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dense(x))


class Attention(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = AddNorm(config.hidden_size, config.hidden_size, config.layer_norm_eps)


class Intermediate(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # the exact (erf) GELU that BERT uses


class Layer(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = AddNorm(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        attended, weights = self.attention.self(x, mask)
        x = self.attention.output(attended, residual=x)
        return self.output(self.intermediate(x), residual=x), weights


class Encoder(nn.Module):
    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))


class BertModel(nn.Module):
    """``(input_ids, attention_mask, token_type_ids)`` -> last hidden state (batch, seq, hidden)."""

    def __init__(self, config: SimpleNamespace):
        super().__init__()
        if config.hidden_act != "gelu" or getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("minist.bert covers BERT with GELU and absolute positions only.")
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.attentions: list[Tensor] = []  # per layer (batch, heads, seq, seq), kept from the last call

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> BertModel:
        """Build from ``config.json`` and load ``model.safetensors`` by parameter name."""
        model_dir = Path(model_dir)
        config = SimpleNamespace(**json.loads((model_dir / "config.json").read_text()))
        if getattr(config, "model_type", None) != "bert":
            raise ValueError(f"{model_dir} holds a {getattr(config, 'model_type', None)!r} model; minist.bert reads "
                             "BERT only; load it with backend='hf' (transformers' model, the default).")
        model = cls(config)
        state = load_file(model_dir / "model.safetensors")
        state = {name.removeprefix("bert."): value for name, value in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        unexpected = [n for n in unexpected if not n.startswith(("pooler.", "embeddings.position_ids", "cls."))]
        if missing or unexpected:
            raise ValueError(f"{model_dir / 'model.safetensors'} does not fit: missing {missing}, "
                             f"unexpected {unexpected}.")
        return model.eval()

    def save_pretrained(self, model_dir: str | Path, **_) -> None:
        """Write ``config.json`` and ``model.safetensors`` under transformers' names (no pooler)."""
        (Path(model_dir) / "config.json").write_text(json.dumps(vars(self.config), indent=2))
        weights = {name: p.contiguous() for name, p in self.state_dict().items()}
        save_file(weights, Path(model_dir) / "model.safetensors")

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        self.attentions = []
        for layer in self.encoder.layer:
            x, weights = layer(x, attention_mask)
            self.attentions.append(weights)
        return x
