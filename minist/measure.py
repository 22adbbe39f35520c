"""Measure before you choose: every path's speed and faithfulness on your own texts, and a path's cost alone.

``minist.cpu`` decides which kernel a ``quantize=`` runs on this CPU; this module measures what each path
buys. ``fastest_path`` times every path (float32, ONNX Runtime, int8 on either, bf16) on a few hundred of
your texts and picks the fastest one that stays faithful to float32 (``FAITHFUL``). It is never the default:
speed is the machine's, so you measure and then choose. ``fresh_process_cost`` gives a path's load time and
peak memory, measured in a fresh Python, since a process's high-water mark only rises (``peak_rss_mb``).
Notebook 08 runs both; ``benchmarks/`` runs minist beside sentence-transformers.
Left out: GPU paths (``fastest_path`` times the CPU's), energy, and memory off Linux.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minist import cpu
from minist.evaluation import EmbeddingSimilarityEvaluator
from minist.model import SentenceTransformer

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
    label_of = {kernel(options): label for label, options in PATHS.items()}
    runs = {label: label_of[cpu.choose_path(*kernel(options), "cpu")[:2]] for label, options in PATHS.items()}
    runs = {label: timed for label, timed in runs.items()  # path -> the path whose kernel runs it on this CPU
            if kernel(PATHS[timed])[1] != "onnx" or cpu.has_onnxruntime()}  # ONNX Runtime's paths, where installed
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
    features = ", ".join(name for name, present in cpu.instruction_sets().items() if present) or "none of " + \
        ", ".join(cpu.FEATURES)
    return PathReport(rows, PATHS[best["runs"]], f"{cpu.cpu_name()} ({features})")


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
from minist.measure import peak_rss_mb
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
