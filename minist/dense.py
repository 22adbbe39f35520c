"""Optional step 4 of the pipeline: a dense layer on the pooled embedding, ``activation(W x + b)``.

Some sentence-transformers models (e.g. LaBSE, the sentence-t5 family) end with a ``Dense`` module
that projects the pooled vector to another size. Its folder holds ``config.json``
(``in_features``, ``out_features``, ``bias``, ``activation_function``) and the ``linear`` weights.
A config that does not fit its weights is named with both shapes.
Left out: ``use_residual`` and activation functions outside ``torch.nn`` (or that take arguments).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from minist.hub import json_field, read_json

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def activation_from_name(name: str) -> nn.Module:
    """``"torch.nn.modules.activation.Tanh"`` -> ``nn.Tanh()``; only classes from ``torch.nn`` are built."""
    module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name, None) if name.startswith("torch.nn.") else None
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls()
    except (ImportError, TypeError):  # no such torch.nn module, or a class that needs arguments (nn.Linear)
        pass
    raise ValueError(f"Unsupported activation_function {name!r}: minist builds only torch.nn modules that take "
                     "no arguments.")


TANH = nn.Tanh()  # sentence-transformers' default; stateless, so one instance serves every Dense


class Dense(nn.Module):
    """(batch, in_features) ``sentence_embedding`` -> (batch, out_features); ``activation_function=None``: none."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation_function: nn.Module | None = TANH):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation_function = nn.Identity() if activation_function is None else activation_function

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        features["sentence_embedding"] = self.activation_function(self.linear(features["sentence_embedding"]))
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.linear.out_features

    @classmethod
    def load(cls, folder: Path) -> Dense:
        """Build from ``config.json``, then load the weights, whose shapes must be the ones it names."""
        folder = Path(folder)
        path = folder / "config.json"
        config = read_json(path)
        sizes = [json_field(config, key, int, path) for key in ("in_features", "out_features")]
        if min(sizes) < 1:
            raise ValueError(f"{path}: in_features and out_features must be at least 1, not {sizes}.")
        name = json_field(config, "activation_function", str, path, "torch.nn.modules.activation.Tanh")
        try:
            activation = activation_from_name(name)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error
        dense = cls(*sizes, json_field(config, "bias", bool, path, True), activation)
        weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"No Dense weights in {folder}: expected {' or '.join(WEIGHT_FILES)}.")
        try:
            if weights.suffix == ".safetensors":
                state = load_file(weights)
            else:
                state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as error:  # safetensors, zip and pickle readers each raise their own kind
            raise ValueError(f"{weights} is damaged: not a readable weights file ({error}).") from error
        expected = {key: tuple(value.shape) for key, value in dense.state_dict().items()}
        found = {key: tuple(value.shape) for key, value in state.items()}
        if found != expected:
            raise ValueError(f"{weights} holds {found}, but {path} asks for {expected}.")
        dense.load_state_dict(state)
        return dense

    def save(self, folder: Path, safe_serialization: bool = True) -> None:
        """``config.json`` and the weights: ``model.safetensors``, or ``pytorch_model.bin`` (torch's pickle
        format, as sentence-transformers writes it) with ``safe_serialization=False``."""
        cls = type(self.activation_function)
        config = {
            "in_features": self.linear.in_features,
            "out_features": self.linear.out_features,
            "bias": self.linear.bias is not None,
            "activation_function": f"{cls.__module__}.{cls.__name__}",
        }
        (Path(folder) / "config.json").write_text(json.dumps(config, indent=2))
        if safe_serialization:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, Path(folder) / "model.safetensors")
        else:
            torch.save(self.state_dict(), Path(folder) / "pytorch_model.bin")
