"""Where minist's float32 encode spends its time, and why it stops short of the matrix-product bound.

    .venv/bin/python benchmarks/encode_profile.py [--texts 600]

encode.py's "physical bound" divides a corpus's FLOPs by PyTorch's standalone fp32 matrix-product rate.
This script splits the gap to that bound for the first ``--texts`` texts of encode.py's corpus (a):
torch.profiler's self CPU time per operator, grouped (matrix products, attention, GELU, layer norm, the
rest of the model, and what encode does outside the model: tokenizing, padding, pooling), and the rate
the linear layers reach inside encode against the standalone rate. Reads STS-B from data/stsb.
"""

from __future__ import annotations

import argparse
import time

import torch
from encode import corpus_gflop, matmul_gflops, spread_corpus

from minist import SentenceTransformer

GROUPS = {  # operator name fragment -> group; the first match wins
    "addmm": "matrix products", "aten::mm": "matrix products", "aten::bmm": "matrix products",
    "aten::linear": "matrix products", "attention": "attention", "softmax": "attention",
    "aten::gelu": "GELU", "layer_norm": "layer norm",
}


def group_of(name: str) -> str:
    return next((group for fragment, group in GROUPS.items() if fragment in name), "rest of the model")


def linear_gflop(model, texts: list[str]) -> float:
    """The FLOPs of the linear layers alone (corpus_gflop less attention's two products)."""
    config = model[0].auto_model.config
    lengths = torch.tensor([len(ids) for ids in model[0].tokenize(texts, padding=False)["input_ids"]])
    attention = 2 * 2 * lengths.double() ** 2 * config.hidden_size * config.num_hidden_layers
    return corpus_gflop(model, texts) - float(attention.sum() / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=600)
    args = parser.parse_args()
    texts = spread_corpus()[: args.texts]
    model = SentenceTransformer("all-MiniLM-L6-v2", device="cpu")
    model.encode(texts[:64])  # warm-up
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        model.encode(texts)
        runs.append(time.perf_counter() - start)
    wall = sorted(runs)[1]
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        model.encode(texts)
    profiled = time.perf_counter() - start
    self_times: dict[str, float] = {}
    for event in profile.key_averages():
        group = group_of(event.key)
        self_times[group] = self_times.get(group, 0.0) + event.self_cpu_time_total / 1e6  # s, on the calling thread
    self_times["outside torch operators"] = profiled - sum(self_times.values())  # tokenizing, Python
    standalone, gflop, linear = matmul_gflops(), corpus_gflop(model, texts), linear_gflop(model, texts)
    print(f"{len(texts)} texts of corpus (a), {torch.get_num_threads()} threads, torch {torch.__version__}: "
          f"encode {wall:.2f} s (median of 3), {len(texts) / wall:.1f} texts/s")
    print(f"bound: {gflop:.0f} GFLOP / {standalone:.0f} GFLOP/s standalone = {gflop / standalone:.2f} s; "
          f"encode reaches {gflop / standalone / wall:.0%} of it")
    print(f"profiled time by group (shares of the profiled run, {profiled:.2f} s with the profiler's overhead):")
    for group, seconds in sorted(self_times.items(), key=lambda item: -item[1]):
        print(f"  {group:>24}: {seconds / profiled:6.1%}")
    products = self_times.get("matrix products", 0.0) / profiled * wall  # scaled to the unprofiled run
    print(f"linear layers: {linear:.0f} GFLOP in about {products:.2f} s = {linear / products:.0f} GFLOP/s inside "
          f"encode, against {standalone:.0f} standalone")


if __name__ == "__main__":
    main()
