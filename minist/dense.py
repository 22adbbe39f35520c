"""Optional step 4 of the pipeline: a dense layer on the pooled embedding, ``activation(W x + b)``.

Some sentence-transformers models (e.g. LaBSE, the sentence-t5 family) end with a ``Dense`` module
that projects the pooled vector to another size. Its folder holds ``config.json``
(``in_features``, ``out_features``, ``bias``, ``activation_function``) and the ``linear`` weights.
A config that does not fit its weights is named with both shapes. Loading follows upstream: keys that are
not ``Dense``'s are ignored with a warning, and an activation outside ``torch`` falls back to Tanh with one.
Left out: ``use_residual``, other input and output features, and activations that take arguments: a
folder that uses them is refused by name.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from minist.inputs import check_count, json_field, read_json

logger = logging.getLogger("minist")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TANH = nn.Tanh()  # sentence-transformers' default; stateless, so one instance serves every Dense


# The constructor arguments of upstream's Dense; a config key outside them is ignored, as upstream ignores it.
UPSTREAM_KEYS = {"in_features", "out_features", "bias", "activation_function", "init_weight", "init_bias",
                 "module_input_name", "module_output_name", "use_residual"}
# What minist's Dense does (on the sentence embedding, no residual): a config that asks for more is refused.
LEFT_OUT = {"use_residual": (False,), "module_input_name": ("sentence_embedding",),
            "module_output_name": (None, "sentence_embedding")}


def activation_from_name(name: str) -> nn.Module:
    """``"torch.nn.modules.activation.Tanh"`` -> ``nn.Tanh()``, as upstream builds it without remote code: a
    path outside ``torch`` gives Tanh with a warning; a ``torch`` path that is not an ``nn.Module`` is refused."""
    if not name.startswith("torch."):
        logger.warning(f"Activation function path '{name}' is not trusted, falling back to the default activation "
                       "function (Tanh). minist builds activation functions from torch only.")
        return TANH
    module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Unsupported activation_function {name!r}: torch has no such name.") from error
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"Activation function {name!r} must be a torch.nn.Module class when trust_remote_code=False.")
    try:
        return cls()
    except TypeError as error:  # a class that needs arguments (nn.Linear)
        raise ValueError(f"Unsupported activation_function {name!r}: minist builds only torch.nn modules that take "
                         "no arguments.") from error


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
        if unknown := sorted(set(config) - UPSTREAM_KEYS):
            logger.warning(f"Ignoring unrecognized Dense config key(s) {unknown} from {str(folder)!r}: not "
                           "constructor parameters of Dense.")
        for key, allowed in LEFT_OUT.items():
            if key in config and config[key] not in allowed:
                raise ValueError(f"{path}: {key}={config[key]!r}, which minist's Dense leaves out; load this model "
                                 "with sentence-transformers.")
        sizes = [json_field(config, key, int, path) for key in ("in_features", "out_features")]
        for key, size in zip(("in_features", "out_features"), sizes, strict=True):
            check_count(f"{path}: {key}", size)
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
