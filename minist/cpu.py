"""What this CPU does fast: which kernel ``quantize=`` runs on it, and a measured choice on your own texts.

The same ``quantize=`` can be 2x faster than float32 on one CPU and 25x slower on another, because the
fast int8 and 16-bit kernels need instructions that not every CPU has (figures: benchmarks/README.md):

- int8: torch's int8 product (``torch._int_mm``, used by ``minist.quantization.Int8Linear``) is fast with
  AVX-512 VNNI or AMX; without them it falls back to a slow loop (0.04x float32 on an AVX2-only EPYC).
  ONNX Runtime's int8 kernels are fast on any AVX2 CPU (1.1x float32 on that EPYC).
- bf16 and fp16 (``torch.autocast``): fast with bfloat16 (AVX-512 BF16, AMX) or float16 (AVX-512 FP16,
  AMX-FP16) units; without them every product is converted and emulated (bf16: 0.15x float32 there).

So ``SentenceTransformer(name, quantize=...)`` asks ``choose_path``: int8 runs on torch where the CPU has
VNNI or AMX, else on ONNX Runtime where it is installed, else float32 with a warning that names the
missing instructions; bf16 and fp16 on a CPU without their units run float32, with a warning. What runs
is in ``model.quantize``, ``model.backend`` and ``repr(model)``, and is logged once.
To measure what each path buys on your texts before choosing: ``minist.measure.fastest_path``.
Left out: ARM's int8 and bf16 instructions (i8mm, SVE): there int8 takes ONNX Runtime and bf16 float32.
"""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import torch

# Our name: (torch's cpuinfo key, the flag in Linux's /proc/cpuinfo, read where torch lacks get_capabilities).
FEATURES = {
    "AVX2": ("avx2", "avx2"),
    "AVX-512": ("avx512_f", "avx512f"),
    "AVX-512 VNNI": ("avx512_vnni", "avx512_vnni"),
    "AVX-512 BF16": ("avx512_bf16", "avx512_bf16"),
    "AVX-512 FP16": ("avx512_fp16", "avx512_fp16"),
    "AMX-INT8": ("amx_int8", "amx_int8"),
    "AMX-BF16": ("amx_bf16", "amx_bf16"),
    "AMX-FP16": ("amx_fp16", "amx_fp16"),
}
# What each arithmetic needs on a CPU to be faster than float32: any one of these.
NEEDS = {"int8": ("AVX-512 VNNI", "AMX-INT8"), "bf16": ("AVX-512 BF16", "AMX-BF16"),
         "fp16": ("AVX-512 FP16", "AMX-FP16")}
SLOWER = {"int8": "about 25x", "bf16": "4-7x", "fp16": "about 4x"}  # measured on an AVX2-only EPYC


def instruction_sets() -> dict[str, bool]:
    """The instructions that decide the fast paths: ``{"AVX2": True, "AVX-512": False, ...}``."""
    if hasattr(torch.cpu, "get_capabilities"):  # torch >= 2.9: cpuinfo, on every OS
        capabilities = torch.cpu.get_capabilities()
        return {name: bool(capabilities.get(key, False)) for name, (key, _) in FEATURES.items()}
    flags = set(_proc_cpuinfo().get("flags", "").split())
    return {name: flag in flags for name, (_, flag) in FEATURES.items()}


def cpu_name() -> str:
    """The CPU's model name, e.g. ``"AMD EPYC 9R14 96-Core Processor"``."""
    return _proc_cpuinfo().get("model name") or platform.processor() or platform.machine()


def _proc_cpuinfo() -> dict[str, str]:
    """The first processor's entries of /proc/cpuinfo (Linux; empty elsewhere)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return {}
    first = path.read_text().split("\n\n")[0]
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}


def has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def choose_path(quantize: str | None, backend: str, device_type: str) -> tuple[str | None, str, str]:
    """The (quantize, backend) that runs for the one asked on this CPU, and why ('' when as asked).

    >>> choose_path("int8", "hf", "cpu")  # on an AVX2-only CPU with onnxruntime (the CPU decides)  # doctest: +SKIP
    ('int8', 'onnx', "quantize='int8' runs on ONNX Runtime: this CPU has no AVX-512 VNNI or AMX-INT8, ...")
    """
    if device_type != "cpu" or quantize is None or (quantize, backend) == ("int8", "onnx"):
        return quantize, backend, ""  # GPUs, float32 and ONNX Runtime's int8 run as asked
    if any(instruction_sets()[name] for name in NEEDS[quantize]):
        return quantize, backend, ""
    lacks = f"this CPU has no {' or '.join(NEEDS[quantize])}"
    if quantize == "int8" and backend == "hf" and has_onnxruntime():
        return "int8", "onnx", (f"quantize='int8' runs on ONNX Runtime: {lacks}, without which torch's int8 "
                                f"product runs {SLOWER['int8']} slower than float32.")
    why = f"quantize={quantize!r} would run {SLOWER[quantize]} slower than float32 here ({lacks})"
    if quantize == "int8":  # ONNX Runtime stands in only for transformers' model, not the from-scratch one
        why += "; ONNX Runtime's int8 needs no VNNI: " + (
            "pip install 'minist[onnx]'" if backend == "hf" else "load with backend='hf' to use it")
    return None, backend, why + ". Running float32."
