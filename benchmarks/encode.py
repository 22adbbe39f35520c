"""Encode speed, memory and quality: minist beside sentence-transformers, same model, same corpora.

    .venv/bin/python benchmarks/encode.py [--repeats 3] [--batch-size 32]

Corpora: (a) "spread": 3,000 texts built from data/corpus.jsonl and STS-B sentences, seeded: 55% one
sentence, 30% two to six, 15% fifteen to thirty (past 256 tokens, so truncated); (b) "stsb": the 2,552
distinct sentences of the STS-B test split. Reads STS-B from data/stsb.

The header names the CPU and the instructions that decide the fast paths (AVX2, AVX-512, VNNI, BF16,
FP16, AMX), since the same ``quantize=`` is 2x faster than float32 on one CPU and 25x slower on another.
Paths: sentence-transformers and minist in float32 (the same numbers), minist on ONNX Runtime
(``backend="onnx"``, the same numbers too), and minist's faster, inexact ``quantize="int8"`` and
``"bf16"`` as a user gets them: each runs the kernel ``minist.cpu.choose_path`` picks for this CPU (the
table says which). Where that is not the kernel asked for, the one avoided (torch's int8 product, bf16
autocast) is also timed, forced, on the first 300 STS-B sentences beside float32, to show what the choice
saves. On a CUDA machine also both libraries in fp16 (``quantize="fp16"`` for minist, ``model.half()``
for sentence-transformers). The ONNX export is cached (``$MINIST_CACHE``); the first load of this run,
with the export if the cache was cold, is timed too.
- Speed: the paths run interleaved in this process (minist, sentence-transformers, int8, ..., minist, ...)
  and the medians are compared, since absolute times drift by 10-20% between runs on shared machines.
  minist forms batches by token budget (its default); sentence-transformers gets ``--batch-size``.
- Memory and load time: each path loads and encodes the first 1,000 texts of corpus (a) in a fresh
  process of its own, ``--repeats`` times; the medians of the load time and of the process's peak resident
  set size (VmHWM, Linux) are reported. Twice: with glibc's malloc as it comes, whose dynamic mmap
  threshold keeps freed blocks and so adds a varying few hundred MB, and with that threshold pinned at
  its starting value (MALLOC_MMAP_THRESHOLD_=131072), which shows the memory the program really holds.
- Quality: STS-B test Spearman of each path, and for the inexact paths the cosine of each STS-B
  sentence's embedding to minist's float32 one (mean and worst).
- The physical bound: the FLOPs of corpus (a) at its real token counts over this machine's measured fp32
  matrix-product rate, and the share of it that minist float32 reaches.
- Linearity: minist's time for 1,000 and 10,000 STS-B sentences.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from stsb import read_stsb

from minist.cpu import FEATURES, cpu_name, instruction_sets
from minist.quantization import quantize_linear_layers
from minist.similarity import pairwise_cos_sim

DATA = Path(__file__).resolve().parents[1] / "data"


def load(path: str, folder: str, device: str = "cpu"):
    """The model of ``path`` ("minist", "minist int8", ..., "sentence-transformers"), imported only when asked."""
    if path == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(folder, device=device)
    from minist import SentenceTransformer

    return SentenceTransformer(folder, device=device, **PATHS[path])


PATHS = {"minist": {}, "sentence-transformers": {}, "minist int8": {"quantize": "int8"},
         "minist bf16": {"quantize": "bf16"}, "minist onnx": {"backend": "onnx"},
         "minist onnx int8": {"backend": "onnx", "quantize": "int8"}}


def spread_corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """Texts from a few words to past 256 tokens, from our corpus and STS-B sentences."""
    rng = random.Random(seed)
    sentences = [json.loads(line)["text"] for line in (DATA / "corpus.jsonl").read_text().splitlines()]
    sentences += [s for a, b, _ in read_stsb("train") for s in (a, b)]
    sizes = rng.choices([(1, 1), (2, 6), (15, 30)], weights=[55, 30, 15], k=n)
    return [" ".join(rng.sample(sentences, rng.randint(*size))) for size in sizes]


def corpora() -> dict[str, list[str]]:
    stsb = list(dict.fromkeys(s for a, b, _ in read_stsb("test") for s in (a, b)))
    return {"(a) spread": spread_corpus(), "(b) stsb": stsb}


def child(path: str, folder: str, batch_size: int) -> None:
    """In a fresh process: load, encode the first 1,000 texts of corpus (a), print load time and peak memory."""
    start = time.perf_counter()
    model = load(path, folder)  # the import is part of loading, as in a fresh session
    seconds = time.perf_counter() - start
    model.encode(spread_corpus()[:1000], **batching(path, batch_size))
    print(json.dumps({"load_s": seconds, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program (VmHWM).

    minist.measure.peak_rss_mb, copied: importing minist would add to the sentence-transformers side's figure.

    Not ``getrusage``'s ru_maxrss: Linux carries that across fork and exec, so a child started by this big
    parent would report the parent's size.
    """
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def batching(path: str, batch_size: int) -> dict:
    """sentence-transformers batches by count; minist by its token budget (its default)."""
    return {"batch_size": batch_size} if path.startswith("sentence-transformers") else {}


def timed_encodes(models: dict, corpus: list[str], repeats: int, batch_size: int) -> tuple[dict, dict]:
    """Interleaved repeats -> (texts/s medians, last outputs) per path."""
    seconds, outputs = {name: [] for name in models}, {}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            outputs[name] = model.encode(corpus, convert_to_numpy=True, **batching(name, batch_size))
            seconds[name].append(time.perf_counter() - start)
    return {name: len(corpus) / statistics.median(s) for name, s in seconds.items()}, outputs


def matmul_gflops(repeats: int = 20) -> float:
    """PyTorch's fp32 matrix-product rate here at MiniLM's shapes (4,096 tokens x 384 -> 1,536), GFLOP/s."""
    a, b = torch.randn(4096, 384), torch.randn(384, 1536)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 4096 * 384 * 1536 / statistics.median(times) / 1e9


def corpus_gflop(model, texts: list[str]) -> float:
    """FLOPs of the transformer on ``texts`` at their real (truncated, unpadded) token counts."""
    config = model[0].auto_model.config
    h, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = np.array([len(ids) for ids in model[0].tokenize(texts, padding=False)["input_ids"]])
    linear = 2 * lengths * (4 * h * h + 2 * h * inner)  # Q, K, V, output projections and the feed-forward
    attention = 2 * 2 * lengths**2 * h  # scores (L x L x h) and weighted sum (L x L x h)
    return float(layers * (linear + attention).sum() / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from minist.hub import resolve_model_folder

    folder = str(resolve_model_folder(args.model))
    if args.child:
        return child(args.child, folder, args.batch_size)

    from scipy.stats import spearmanr

    models, first_load = {}, {}
    for path in PATHS:
        start = time.perf_counter()
        models[path] = load(path, folder)
        first_load[path] = time.perf_counter() - start
    present = [name for name, has in instruction_sets().items() if has]
    print(f"CPU: {cpu_name()}; has {', '.join(present) or 'none'}; lacks "
          f"{', '.join(name for name in FEATURES if name not in present) or 'none'}")
    print("first load in this run:", ", ".join(f"{path} {s:.1f} s" for path, s in first_load.items()))
    for path, model in models.items():
        if getattr(model, "path_note", ""):
            print(f"  {path} runs quantize={model.quantize!r}, backend={model.backend!r}: {model.path_note}")
    print(f"model {args.model}, sentence-transformers batch {args.batch_size}, minist batches of up to 2,048 "
          f"tokens, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    for name, model in models.items():  # warm-up
        model.encode(["warm up"] * 64, **batching(name, args.batch_size))
    rates, stsb_outputs = {}, None
    for corpus_name, corpus in corpora().items():
        rates[corpus_name], outputs = timed_encodes(models, corpus, args.repeats, args.batch_size)
        r, st = rates[corpus_name], rates[corpus_name]["sentence-transformers"]
        diff = max(np.abs(outputs[path] - outputs["sentence-transformers"]).max() for path in ("minist", "minist onnx"))
        print(f"{corpus_name}: {len(corpus)} texts, texts/s (median of {args.repeats}), ratio to "
              f"sentence-transformers; float32 paths' max abs diff to it {diff:.1e}")
        for name, rate in r.items():
            print(f"  {name:>22}: {rate:7.1f}/s  {rate / st:.2f}x")
        stsb_outputs = outputs

    forced_kernels(models, folder, corpora()["(b) stsb"][:300], args.repeats)

    first, second, scores = map(list, zip(*read_stsb("test"), strict=True))
    print("\nSTS-B test: Spearman x100; cosine of each of the 2,552 sentences to minist float32 (mean, worst)")
    for name, model in models.items():
        a, b = (model.encode(part, **batching(name, args.batch_size)) for part in (first, second))
        spearman = 100 * spearmanr(pairwise_cos_sim(a, b).numpy(), scores).statistic
        cosine = pairwise_cos_sim(stsb_outputs[name], stsb_outputs["minist"])
        print(f"  {name:>22}: {spearman:.2f}  cosine {cosine.mean():.4f}, {cosine.min():.4f}")

    print("\nfresh process each: load, encode 1,000 texts of (a); medians of", args.repeats)
    for allocator, env in (("malloc as it comes", {}), ("mmap threshold pinned", {"MALLOC_MMAP_THRESHOLD_": "131072"})):
        for path in PATHS:
            runs = [subprocess.run([sys.executable, __file__, "--child", path, "--model", args.model, "--batch-size",
                                    str(args.batch_size)], capture_output=True, text=True, check=True,
                                   env=os.environ | env) for _ in range(args.repeats)]
            results = [json.loads(run.stdout.strip().splitlines()[-1]) for run in runs]
            load_s, peak = (statistics.median(r[key] for r in results) for key in ("load_s", "peak_rss_mb"))
            print(f"  {path:>22}: load {load_s:.1f} s, peak RSS {peak:5.0f} MB ({allocator})")

    spread, gflops = corpora()["(a) spread"], matmul_gflops()
    gflop = corpus_gflop(models["minist"], spread)
    bound = len(spread) / (gflop / gflops)
    print(f"\nphysical bound on (a): {gflop:.0f} GFLOP at real token counts / {gflops:.0f} GFLOP/s measured "
          f"= {bound:.1f} texts/s; minist float32 reaches {rates['(a) spread']['minist'] / bound:.0%} of it "
          f"(on ONNX Runtime {rates['(a) spread']['minist onnx'] / bound:.0%}, sentence-transformers "
          f"{rates['(a) spread']['sentence-transformers'] / bound:.0%})")

    sentences = list(dict.fromkeys(s for split in ("train", "dev") for a, b, _ in read_stsb(split) for s in (a, b)))
    random.Random(0).shuffle(sentences)  # 1,000 and 10,000 drawn alike
    timings = {}
    for n in (1000, 10000):
        start = time.perf_counter()
        models["minist"].encode(sentences[:n])
        timings[n] = time.perf_counter() - start
    print(f"linearity: 1,000 sentences {timings[1000]:.1f} s, 10,000 {timings[10000]:.1f} s "
          f"(ratio {timings[10000] / timings[1000]:.1f}; linear is 10)")
    if torch.cuda.is_available():
        gpu(folder, args.repeats, args.batch_size)


def forced_kernels(models: dict, folder: str, texts: list[str], repeats: int) -> None:
    """The kernels ``choose_path`` turned down on this CPU, forced, timed beside float32 on ``texts``."""
    forced = {}
    if models["minist int8"].path_note:  # torch's int8 product, as SentenceTransformer builds it where VNNI is
        forced["torch int8, forced"] = load("minist", folder)
        quantize_linear_layers(forced["torch int8, forced"][0].auto_model)
    if models["minist bf16"].path_note:  # bf16 autocast, as on a CPU with bfloat16 units
        forced["bf16 autocast, forced"] = load("minist", folder)
        forced["bf16 autocast, forced"].quantize = "bf16"  # what encode reads to enter torch.autocast
    if not forced:
        return
    rates, outputs = timed_encodes({"minist": models["minist"], **forced}, texts, repeats, 0)
    print(f"\nkernels turned down on this CPU, forced, on the first {len(texts)} STS-B sentences (texts/s, ratio to "
          "minist float32, cosine to it: mean, worst):")
    for name, rate in rates.items():
        cosine = pairwise_cos_sim(outputs[name], outputs["minist"])
        print(f"  {name:>22}: {rate:7.1f}/s  {rate / rates['minist']:.2f}x  {cosine.mean():.4f}, {cosine.min():.4f}")


def gpu(folder: str, repeats: int, batch_size: int) -> None:
    """On a CUDA machine: both libraries in float32 and fp16 on corpus (a), and fp16's cosine to float32."""
    from sentence_transformers import SentenceTransformer

    from minist import SentenceTransformer as Minist

    models = {"minist": Minist(folder, device="cuda"), "minist fp16": Minist(folder, device="cuda", quantize="fp16"),
              "sentence-transformers": SentenceTransformer(folder, device="cuda"),
              "sentence-transformers fp16": SentenceTransformer(folder, device="cuda").half()}
    corpus = corpora()["(a) spread"]
    for name, model in models.items():  # warm-up
        model.encode(corpus[:256], **batching(name, batch_size))
    rates, outputs = timed_encodes(models, corpus, repeats, batch_size)
    print(f"\nGPU ({torch.cuda.get_device_name()}), corpus (a), texts/s, ratio to sentence-transformers float32, "
          "worst cosine to minist float32:")
    for name, rate in rates.items():
        cosine = pairwise_cos_sim(outputs[name].astype(np.float32), outputs["minist"])
        print(f"  {name:>26}: {rate:8.1f}/s  {rate / rates['sentence-transformers']:.2f}x  {cosine.min():.4f}")


if __name__ == "__main__":
    main()
