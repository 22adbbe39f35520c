"""The ONNX Runtime backend (``backend="onnx"``): the transformer exported once to ONNX and run by ONNX Runtime.

Why another runtime: ONNX Runtime fuses attention, GELU and layer norms into a few kernels, and its
matrix products use AVX-512 where PyTorch's MKL may not (on AMD CPUs). On the development machine it
encoded 1.5x as fast as sentence-transformers on long texts, with the same numbers (3e-7 apart).
With ``quantize="int8"`` the exported graph is quantized by ONNX Runtime's own dynamic int8
(``quantize_dynamic``, weights per output channel). Its activations get one scale per tensor, taken from
the whole padded batch, so a text's int8 embedding depends on the texts encoded with it: for
all-MiniLM-L6-v2, 64 corpus texts encoded alone and together were down to cosine 0.987 apart (float32 on
ONNX Runtime: identical). Encode what you will compare in the same way, or keep float32.

The export (``torch.onnx.export``) runs once per model and is cached under ``$MINIST_CACHE/onnx`` (default
``~/.cache/minist/onnx``; ``minist.packages.minist_cache``), keyed by a fingerprint of the weights; each new
export is checked against the torch model on a padded batch before it is used, as exports have been known
to get padding wrong.
Needs the ``onnx`` extra: ``pip install "minist[onnx]"``.
Left out: OpenVINO, GPU execution providers, static (calibrated) quantization.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from minist.cache import model_fingerprint
from minist.packages import minist_cache

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError('backend="onnx" needs ONNX Runtime: pip install "minist[onnx]" (onnxruntime, onnx, '
                          "onnxscript).") from error
    return onnxruntime


def cache_folder() -> Path:
    return minist_cache() / "onnx"


class OnnxModel(nn.Module):
    """Stands in for the transformers model: same inputs, returns last_hidden_state (batch, seq, dim)."""

    def __init__(self, path: Path, config, input_names: list[str]):
        super().__init__()
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as many threads as torch uses
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path, self.config, self.input_names = path, config, input_names

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {name: given[name].cpu().numpy() for name in self.input_names}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def extra_repr(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


def onnx_model(transformer, int8: bool = False) -> OnnxModel:
    """A minist ``Transformer`` step -> its model exported to ONNX (cached), as an ``OnnxModel``."""
    import_onnxruntime()
    folder = cache_folder() / model_fingerprint(transformer)[:16]
    fp32, quantized = folder / "model.onnx", folder / "model_int8.onnx"
    names = [name for name in INPUT_NAMES if name in transformer.input_names]
    if not fp32.is_file():
        export(transformer, fp32, names)
    if int8 and not quantized.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared, partial = folder / f"prepared.{os.getpid()}.partial", quantized.with_suffix(f".{os.getpid()}.partial")
        quant_pre_process(fp32, prepared, skip_symbolic_shape=True)  # (symbolic shape inference fails on BERT)
        silent = logging.NullHandler()  # the quantizer logs through the root logger, which would print it
        logging.getLogger().addHandler(silent)
        try:
            quantize_dynamic(prepared, partial, weight_type=QuantType.QUInt8, per_channel=True)
        finally:
            logging.getLogger().removeHandler(silent)
        prepared.unlink()
        partial.replace(quantized)  # all or nothing: a crash leaves no half-written model behind
    return OnnxModel(quantized if int8 else fp32, transformer.auto_model.config, names)


def export(transformer, path: Path, names: list[str]) -> None:
    """Export ``transformer.auto_model`` with dynamic batch and sequence axes, check it, then move it in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = transformer.tokenize(["A short one.", "A longer sentence, so that the first one is padded."])
    inputs = tuple(sample[name] for name in names)

    class LastHiddenState(nn.Module):  # tensors in, one tensor out: what ONNX wants
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.model(**{name: given[name] for name in names}).last_hidden_state

    longest = getattr(transformer.auto_model.config, "max_position_embeddings", transformer.max_seq_length)
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("seq", min=2, max=longest)
    partial = path.with_suffix(f".{os.getpid()}.partial")  # one per process: two may export at once
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # the exporter narrates
        warnings.simplefilter("ignore")
        exporter_log.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(LastHiddenState(transformer.auto_model).eval(), inputs, dynamo=True,
                                        input_names=names, output_names=["last_hidden_state"],
                                        dynamic_shapes={name: {0: batch, 1: seq} for name in names})
            program.save(str(partial), external_data=False)
        finally:
            exporter_log.setLevel(level)
    got = OnnxModel(partial, None, names)(*inputs)
    with torch.inference_mode():
        expected = transformer.auto_model(**sample).last_hidden_state
    real = sample["attention_mask"].bool()
    error = (got - expected)[real].abs().max().item()
    if not np.isfinite(error) or error > 1e-4:
        partial.unlink()
        raise RuntimeError(f"The ONNX export differs from the torch model by {error:.1e} on a padded batch; "
                           "use backend='hf'.")
    partial.replace(path)
