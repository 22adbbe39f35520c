"""Optional step 4 of the pipeline: a dense layer on the pooled embedding, ``activation(W x + b)``.

Some sentence-transformers models (e.g. LaBSE, the sentence-t5 family) end with a ``Dense`` module
that projects the pooled vector to another size. Its folder holds ``config.json``
(``in_features``, ``out_features``, ``bias``, ``activation_function``) and the ``linear`` weights.
Left out: ``use_residual`` and activation functions outside ``torch.nn``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


def activation_from_name(name: str) -> nn.Module:
    """``"torch.nn.modules.activation.Tanh"`` -> ``nn.Tanh()``; only classes from ``torch.nn`` are built."""
    module_name, _, class_name = name.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name, None) if name.startswith("torch.nn.") else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"Unsupported activation_function {name!r}: minist builds only torch.nn modules.")
    return cls()


class Dense(nn.Module):
    """(batch, in_features) ``sentence_embedding`` -> (batch, out_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: nn.Module | None = None):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = nn.Tanh() if activation is None else activation  # Tanh is sentence-transformers' default

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        features["sentence_embedding"] = self.activation(self.linear(features["sentence_embedding"]))
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.linear.out_features

    @classmethod
    def load(cls, folder: Path) -> Dense:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        activation = activation_from_name(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
        dense = cls(config["in_features"], config["out_features"], config.get("bias", True), activation)
        if (folder / "model.safetensors").is_file():
            state = load_file(folder / "model.safetensors")
        elif (folder / "pytorch_model.bin").is_file():
            state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(f"No Dense weights in {folder}: expected model.safetensors or pytorch_model.bin.")
        dense.load_state_dict(state)
        return dense

    def save(self, folder: Path) -> None:
        cls = type(self.activation)
        config = {
            "in_features": self.linear.in_features,
            "out_features": self.linear.out_features,
            "bias": self.linear.bias is not None,
            "activation_function": f"{cls.__module__}.{cls.__name__}",
        }
        (Path(folder) / "config.json").write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, Path(folder) / "model.safetensors")
