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
``fastest_path`` times every path on a few hundred of your texts and picks the fastest one that stays
faithful to float32. It is never the default: speed is the machine's, so you measure and then choose.
``fresh_process_cost`` gives a path's load time and peak memory, measured in a fresh Python.
Left out: ARM's int8 and bf16 instructions (i8mm, SVE): there int8 takes ONNX Runtime and bf16 float32.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

logger = logging.getLogger("minist")

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


@functools.cache  # once per process and message: a notebook that loads ten models hears it once
def log_once(level: int, message: str) -> None:
    logger.log(level, message)


def choose_path(quantize: str | None, backend: str, device_type: str) -> tuple[str | None, str, str]:
    """The (quantize, backend) that runs for the one asked on this CPU, and why ('' when as asked).

    >>> choose_path("int8", "hf", "cpu")  # an AVX2-only CPU, onnxruntime installed  # doctest: +SKIP
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


# --- a measured choice -----------------------------------------------------------------------------------
PATHS = {"float32": {}, "onnx": {"backend": "onnx"}, "int8": {"quantize": "int8"},
         "onnx int8": {"backend": "onnx", "quantize": "int8"}, "bf16": {"quantize": "bf16"}}
FAITHFUL = {"cosine mean": 0.99, "cosine worst": 0.95, "spearman drop": 0.5}


@dataclass
class PathReport:
    """What ``fastest_path`` measured: one row per path, and the options of the fastest faithful one."""

    rows: list[dict]
    best: dict  # SentenceTransformer(name, **report.best)
    cpu: str

    def __str__(self) -> str:
        columns = list(self.rows[0])
        lines = [f"{self.cpu}; fastest faithful path: {self.best or 'float32'}", "  ".join(columns)]
        for row in self.rows:
            lines.append("  ".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
        return "\n".join(lines)


def kernel(options: dict) -> tuple[str | None, str]:
    return options.get("quantize"), options.get("backend", "hf")


def fastest_path(model_name_or_path: str | Path, texts: list[str], sts: tuple | None = None, repeats: int = 3,
                 show_progress_bar: bool = True) -> PathReport:
    """Time each path of ``PATHS`` on ``texts`` (a few hundred of yours) and pick the fastest faithful one.

    Faithful: cosine to float32's embedding of each text at least 0.99 on average and 0.95 at worst, and,
    given ``sts=(sentences1, sentences2, gold_scores)``, a Spearman (x100) at most 0.5 below float32's.
    Paths that run the same kernel on this CPU (int8 on ONNX Runtime without VNNI, say) are timed once.
    Returns a ``PathReport``: ``rows`` (path, what runs, texts/s, speed-up, cosines, faithful) and ``best``.
    """
    from minist.evaluation import EmbeddingSimilarityEvaluator
    from minist.model import SentenceTransformer  # imported here: minist.model imports this module

    label_of = {kernel(options): label for label, options in PATHS.items()}
    runs = {label: label_of[choose_path(*kernel(options), "cpu")[:2]] for label, options in PATHS.items()}
    runs = {label: timed for label, timed in runs.items()  # path -> the path whose kernel runs it on this CPU
            if kernel(PATHS[timed])[1] != "onnx" or has_onnxruntime()}  # ONNX Runtime's paths, where installed
    models = {label: SentenceTransformer(model_name_or_path, device="cpu", **PATHS[label])
              for label in dict.fromkeys(runs.values())}
    for model in models.values():
        model.encode(texts[:32])  # warm-up: first-call costs are not the path's speed
    seconds, outputs = {label: [] for label in models}, {}
    with tqdm(total=repeats * len(models), desc="Timing paths", disable=not show_progress_bar) as progress:
        for _ in range(repeats):  # interleaved, so a slow spell of the machine hits every path alike
            for label, model in models.items():
                start = time.perf_counter()
                outputs[label] = model.encode(texts, convert_to_tensor=True)
                seconds[label].append(time.perf_counter() - start)
                progress.update()
    rates = {label: len(texts) / statistics.median(s) for label, s in seconds.items()}
    spearman = {}
    if sts:
        evaluator = EmbeddingSimilarityEvaluator(*sts, write_csv=False)
        spearman = {label: 100 * evaluator(model)[evaluator.primary_metric] for label, model in models.items()}
    rows = []
    for label, timed in runs.items():
        cosine = torch.nn.functional.cosine_similarity(outputs[timed], outputs["float32"])
        row = {"path": label, "runs": timed, "texts/s": rates[timed], "speed-up": rates[timed] / rates["float32"],
               "cosine mean": cosine.mean().item(), "cosine worst": cosine.min().item()}
        faithful = row["cosine mean"] >= FAITHFUL["cosine mean"] and row["cosine worst"] >= FAITHFUL["cosine worst"]
        if sts:
            row["spearman"] = spearman[timed]
            faithful = faithful and spearman["float32"] - spearman[timed] <= FAITHFUL["spearman drop"]
        rows.append(row | {"faithful": faithful})
    best = max((row for row in rows if row["faithful"]), key=lambda row: row["texts/s"])  # float32 always is
    features = ", ".join(name for name, present in instruction_sets().items() if present) or "none of " + \
        ", ".join(FEATURES)
    return PathReport(rows, PATHS[best["runs"]], f"{cpu_name()} ({features})")


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB, since its program started (Linux's VmHWM).

    Not ``resource.getrusage``'s ru_maxrss: Linux carries that across fork and exec, so a process started by a
    large parent (a notebook kernel) would report the parent's size.
    """
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024  # kB


# Run by fresh_process_cost in a new Python: the request comes on stdin, the costs go out as the last line.
_COST_SCRIPT = """
import json, sys, time
request = json.load(sys.stdin)
start = time.perf_counter()
from minist import SentenceTransformer
from minist.cpu import peak_rss_mb
model = SentenceTransformer(request["model"], device="cpu", **request["options"])
seconds = time.perf_counter() - start
model.encode(request["texts"])
print(json.dumps({"load (s)": seconds, "peak RSS (MB)": peak_rss_mb()}))
"""


def fresh_process_cost(model_name_or_path: str | Path, texts: list[str], **options) -> dict[str, float]:
    """``{"load (s)": ..., "peak RSS (MB)": ...}`` of a fresh Python that imports minist, loads the model with
    ``options`` (``backend=``, ``quantize=``) and encodes ``texts``: what a job doing only that would cost.

    A fresh process, because a process's high-water mark only rises: this one's holds all that ran before.
    Several can run at once (``ThreadPoolExecutor().map``); each process has its own mark. Linux only.
    """
    request = json.dumps({"model": str(model_name_or_path), "options": options, "texts": list(texts)})
    run = subprocess.run([sys.executable, "-c", _COST_SCRIPT], input=request, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"loading and encoding {model_name_or_path!r} with {options} failed in a fresh "
                           f"process:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.splitlines()[-1])
