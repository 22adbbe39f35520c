"""One process with all the cores against several processes with a share each: the pool and Ray Data.

    .venv/bin/python benchmarks/parallel.py [--n 1000] [--repeats 2]

The same texts for every path: the first ``--n`` of ``encode.py``'s spread corpus (55% one sentence, 30% two
to six, 15% past 256 tokens; STS-B from data/stsb), all-MiniLM-L6-v2 in float32 on the CPU.

- ``encode``: one process, torch's threads on all the cores (``model.encode``);
- ``pool``: one worker per core, one thread each (``start_multi_process_pool``); the workers' start (spawn,
  import, model) is timed apart, since a pool is started once and then serves many calls;
- ``Ray Data``: 1 actor with all the cores, then one actor per core, ``from_items -> map_batches(Embedder)
  -> take_all`` on a local cluster (its start not timed). Each run starts its actors and loads the model
  in each, as a batch job does; the time includes that.

Speed is the median of ``--repeats`` runs of each path, interleaved; each path's embeddings are checked
against ``encode``'s (max abs difference). Ratios are texts/s over ``encode``'s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from encode import spread_corpus

from minist import SentenceTransformer
from minist.cpu import cpu_name
from minist.parallel import usable_cores

MODEL = "all-MiniLM-L6-v2"


def ray_embed(ray, texts: list[str], actors: int, cores: int) -> tuple[np.ndarray, int]:
    """Embeddings in input order, and the torch threads each actor ran with."""
    from minist.integrations.ray import Embedder

    class ThreadsEmbedder(Embedder):  # says how many threads Ray gave torch in the actor
        def __call__(self, batch):
            return super().__call__(batch) | {"threads": np.full(len(batch["text"]), torch.get_num_threads())}

    rows = ray.data.from_items([{"i": i, "text": text} for i, text in enumerate(texts)]).map_batches(
        ThreadsEmbedder, fn_constructor_kwargs={"model": MODEL, "device": "cpu"},
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cores // actors, batch_size=64).take_all()
    rows.sort(key=lambda row: row["i"])
    return np.stack([row["embedding"] for row in rows]), int(rows[0]["threads"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    texts, cores = spread_corpus()[: args.n], usable_cores()
    model = SentenceTransformer(MODEL, device="cpu")
    print(f"CPU: {cpu_name()}, {cores} cores; {len(texts)} texts of the spread corpus; torch {torch.__version__}")

    start = time.perf_counter()
    pool = model.start_multi_process_pool(["cpu"] * cores)
    model.encode(texts[:cores], pool=pool)  # returns once every worker has started and loaded the model
    pool_start = time.perf_counter() - start

    import ray

    ray.init(num_cpus=cores, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    reference = model.encode(texts)
    paths = {
        f"encode: 1 process x {cores} threads": lambda: model.encode(texts),
        f"pool: {cores} processes x 1 thread": lambda: model.encode(texts, pool=pool),
        f"Ray Data: 1 actor x {cores} cores": lambda: ray_embed(ray, texts, 1, cores),
        f"Ray Data: {cores} actors x 1 core": lambda: ray_embed(ray, texts, cores, cores),
    }
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    notes: dict[str, str] = {}
    for _ in range(args.repeats):
        for name, run in paths.items():
            start = time.perf_counter()
            out = run()
            seconds[name].append(time.perf_counter() - start)
            embeddings, threads = out if isinstance(out, tuple) else (out, None)
            notes[name] = f"max |diff| {np.abs(embeddings - reference).max():.1e}" + (
                f", torch threads in an actor: {threads}" if threads else "")
    model.stop_multi_process_pool(pool)
    ray.shutdown()

    base = statistics.median(seconds[next(iter(paths))])
    print(f"{'path':<36} {'seconds':>8} {'texts/s':>8} {'ratio':>6}  check")
    for name in paths:
        median = statistics.median(seconds[name])
        print(f"{name:<36} {median:8.2f} {len(texts) / median:8.1f} {base / median:6.2f}  {notes[name]}")
    print(f"pool start ({cores} workers, spawned, model loaded): {pool_start:.1f} s, once per pool")


if __name__ == "__main__":
    main()
