"""Encode with several worker processes: sentence-transformers' multi-process pool, with its API.

``pool = model.start_multi_process_pool()`` starts one process per target device, each holding a copy of
the model; ``model.encode(texts, pool=pool)`` cuts the texts into chunks, queues them, and puts the results
back in input order; ``model.stop_multi_process_pool(pool)`` ends the workers. The pool is also a context
manager (``with model.start_multi_process_pool() as pool: ...``), and ``encode(texts, device=["cpu", "cpu"])``
starts a pool for that one call. The workers hold the model as it was when the pool started: after ``fit``,
start a new pool.

    >>> with model.start_multi_process_pool(["cpu", "cpu"]) as pool:  # doctest: +SKIP
    ...     model.encode(texts, pool=pool, chunk_size=256).shape
    (10000, 384)

Which devices, and how the cores are shared:

- On CUDA machines, one worker per GPU (``cuda:0``, ``cuda:1``, ...). A GPU is busy with one process.
- On a CPU, ``min(4, cores)`` workers (sentence-transformers starts 4 whatever the cores), and each worker
  gets its share of the cores through ``torch.set_num_threads(cores // workers)``: processes that each
  start one thread per core would fight over the cores and run slower than one process does.
  Several 1-thread processes can beat one many-thread process, since short texts make batches too small
  to keep many threads busy; ``benchmarks/parallel.py`` measures both on your machine.

How it stays safe:

- Workers are *spawned* (a fresh Python), not forked: a forked child inherits locks held by other threads
  of the parent (tqdm's shared lock, torch's thread pool) and can wait on them forever.
- Each worker sends its results through a pipe of its own, which the caller watches together with every
  worker's sentinel (``multiprocessing.connection.wait``), checking that each worker is alive on every
  loop: a worker that dies at any moment (killed, out of memory), mid-message included, raises
  ``WorkerDiedError`` naming it within a second, instead of a hang; so does a call to a pool with a dead
  worker. (A queue shared by all workers is left half-written by a worker killed while sending, and the
  caller's read of it never ends.)
- One call at a time: a second thread's call waits for the first to end (the chunks of two calls would
  share the queues). A pool serves only the model it was started from, unchanged: another model, or this
  one after ``fit``, ``to()`` or a new ``max_seq_length``, is refused by name (the workers would answer with
  the old weights).
- Workers watch their owner: killed (even by SIGKILL), it takes its workers with it.
- A dead worker, Ctrl-C (``KeyboardInterrupt``) or any error in the caller while chunks are queued stops the
  whole pool (terminate, then join: no zombies), since its queues would still hold that call's chunks.
  Workers ignore Ctrl-C themselves (it reaches the whole process group); the caller decides.
  A Python exception inside a worker (say, out of memory on a GPU) is sent back and raised in the caller
  after all chunks are back, so the pool stays usable.
- Chunk results travel as numpy arrays (pickled by value), not as torch tensors shared through file
  descriptors, so thousands of chunks cannot exhaust the open-file limit.

Left out: pools inside a daemonic process (Python forbids them children), models on ONNX Runtime (an
``InferenceSession`` cannot be sent to another process: load the model in each process instead, as
``minist.integrations.ray`` does), workers on other machines (see Ray), restarting a dead worker, and sorting
all texts by length before chunking (``encode`` sorts each chunk).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import traceback
import weakref
from multiprocessing.connection import wait

import numpy as np
import torch
import torch.multiprocessing as mp
from tqdm.auto import tqdm

from minist.cache import model_state
from minist.encoding import TRUNCATED

logger = logging.getLogger("minist")
POLL_SECONDS = 1.0  # how often a waiting caller checks that its workers are alive


class WorkerDiedError(RuntimeError):
    """A worker process ended without sending its results; the pool has been stopped."""


class Pool(dict):
    """What ``start_multi_process_pool`` returns: as in sentence-transformers, a dict with the ``"input"`` queue,
    the ``"output"`` (here one pipe per worker) and the worker ``"processes"``; here also a context manager that
    stops them on exit, with the lock that lets one call in at a time and the model it serves."""

    stopped = False

    def __init__(self, model, input_queue) -> None:
        super().__init__(input=input_queue, output=[], processes=[])
        self.lock = threading.RLock()  # reentrant: a failing call stops the pool while holding it
        self.model, self.model_state = weakref.ref(model), model_state(model)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc_info) -> None:
        stop_pool(self)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, e.g. under ``taskset`` or a container), else all."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def start_pool(model, target_devices: list[str] | None = None) -> Pool:
    """Start one worker process per device, each with a copy of ``model``; see the module docstring.

    As in sentence-transformers, the model is moved to the CPU (in place) and its weights put in shared
    memory, so the workers map them instead of receiving a copy each.
    """
    if multiprocessing.current_process().daemon:
        raise RuntimeError("daemonic processes are not allowed to have children, and a pool's workers are "
                           "children: encode without a pool here, or start this process with daemon=False.")
    if model.backend == "onnx":
        raise ValueError("This model runs on ONNX Runtime (backend='onnx', or quantize='int8' where this CPU runs "
                         "int8 there: see model.path_note), whose session cannot be sent to worker processes. Use "
                         "a float32 model in the pool, or minist.integrations.ray, which loads the model in each.")
    if target_devices is None:
        count = torch.cuda.device_count()
        target_devices = [f"cuda:{i}" for i in range(count)] if count else ["cpu"] * min(4, usable_cores())
    if isinstance(target_devices, str) or not target_devices:
        raise ValueError(f"target_devices must be a non-empty list of devices, not {target_devices!r}.")
    devices = [model._usable_device(device) for device in target_devices]  # each checked by name first
    cpus = sum(device.type == "cpu" for device in devices)
    threads = max(1, usable_cores() // cpus) if cpus else None  # the cores shared among the CPU workers
    logger.info("Starting %d worker processes on %s", len(devices), ", ".join(map(str, devices)))
    model.to("cpu")
    model.share_memory()
    context = mp.get_context("spawn")
    pool = Pool(model, context.Queue())
    try:
        for device in devices:
            reader, writer = context.Pipe(duplex=False)
            pool["output"].append(reader)
            process = context.Process(target=_work, daemon=True, args=(
                str(device), threads if device.type == "cpu" else None, model, pool["input"], writer))
            try:
                process.start()
            finally:
                writer.close()  # the worker holds the only write end: its death is an end of file here
            pool["processes"].append(process)
    except BaseException:
        stop_pool(pool)
        raise
    return pool


def stop_pool(pool: Pool) -> None:
    """Terminate the workers and wait for each (no zombies); stopping twice does nothing. A call in another
    thread is waited for."""
    with pool.lock:
        if not pool.stopped:
            pool.stopped = True
            _stop(pool)


def _stop(pool: Pool) -> None:
    for process in pool["processes"]:
        process.terminate()
    for process in pool["processes"]:
        process.join(timeout=5)
        if process.is_alive():  # terminate is SIGTERM, which a stuck worker may not act on
            process.kill()
            process.join()
        process.close()
    pool["input"].cancel_join_thread()  # chunks still queued are dropped, not flushed to a dead pipe at exit
    pool["input"].close()
    for reader in pool["output"]:
        reader.close()


def encode_in_pool(model, texts: list[str], pool: Pool | list[str], chunk_size: int | None,
                   show_progress_bar: bool, encode_kwargs: dict):
    """``texts`` encoded by the pool's workers, in input order: a float32 (len, dim) tensor on the CPU, or a
    list of (tokens, dim) tensors for ``output_value="token_embeddings"``. ``model.encode`` calls it, with
    ``pool`` a ``Pool`` or a list of devices (a pool for this call only) and the texts already checked.
    ``chunk_size`` (default as sentence-transformers: about ten chunks per worker, at most 5,000 texts)."""
    if isinstance(pool, dict) and not isinstance(pool, Pool):
        raise TypeError("pool must come from this library's model.start_multi_process_pool() (a sentence-transformers "
                        "pool runs sentence-transformers' workers).")
    if not isinstance(pool, Pool):  # a list of devices: a pool for this call only
        with start_pool(model, pool) as own:
            return encode_in_pool(model, texts, own, chunk_size, show_progress_bar, encode_kwargs)
    with pool.lock:  # one call at a time: every call numbers its chunks from 0, and reads the same pipes
        if pool.stopped:
            raise ValueError("This pool was stopped; start a new one with model.start_multi_process_pool().")
        if pool.model() is not model or model_state(model) != pool.model_state:
            raise ValueError("This pool was started from another model, or from this one before its weights or "
                             "settings changed (fit, to(), max_seq_length): its workers would answer with those. "
                             "Start a pool from this model as it is now: model.start_multi_process_pool().")
        chunk_size = chunk_size or max(1, min(-(-len(texts) // (10 * len(pool["processes"]))), 5000))
        starts = range(0, len(texts), chunk_size)
        outputs: list = [None] * len(starts)
        cut = 0  # texts the workers truncated: one warning for the call, as encode gives, not one per chunk
        try:
            _check_alive(pool)
            for chunk_id, start in enumerate(starts):
                pool["input"].put((chunk_id, texts[start:start + chunk_size], encode_kwargs))
            for _ in tqdm(starts, desc="Chunks", disable=not show_progress_bar):
                chunk_id, output, chunk_cut = _next_result(pool)
                outputs[chunk_id], cut = output, cut + chunk_cut
        except BaseException:
            stop_pool(pool)  # chunks of this call may still be queued: the pool cannot serve another call
            raise
    for chunk_id, output in enumerate(outputs):
        if isinstance(output, BaseException):
            output.add_note(f"(raised in a pool worker, on chunk {chunk_id}: texts {chunk_id * chunk_size} to "
                            f"{min(len(texts), (chunk_id + 1) * chunk_size) - 1})")
            raise output
    if cut:
        logger.warning(TRUNCATED, cut, len(texts), model.max_seq_length)
    if encode_kwargs.get("output_value") == "token_embeddings":
        return [torch.from_numpy(tokens) for chunk in outputs for tokens in chunk]
    return torch.from_numpy(np.concatenate(outputs))  # (len, dim), chunks in input order


def _next_result(pool: Pool) -> tuple[int, object, int]:
    """The next (chunk_id, output, texts truncated) from any worker; a worker found dead, even mid-send, raises."""
    readers = pool["output"]
    while True:
        _check_alive(pool)  # on every loop, not only when nothing comes: the other workers may keep sending
        for ready in wait(readers + [process.sentinel for process in pool["processes"]], timeout=POLL_SECONDS):
            if ready in readers:
                try:
                    return ready.recv()
                except (EOFError, OSError):  # its worker died, perhaps mid-message: the pipe is left as it is
                    pool["processes"][readers.index(ready)].join(POLL_SECONDS)  # for _check_alive to name it
                    break


def _check_alive(pool: Pool) -> None:
    dead = [process for process in pool["processes"] if not process.is_alive()]
    if dead:
        raise WorkerDiedError(f"{len(dead)} of {len(pool['processes'])} pool workers died: "
                              + ", ".join(f"pid {p.pid} ({_exit_reason(p.exitcode)})" for p in dead)
                              + ". The pool was stopped; start a new one to encode again.")


def _exit_reason(exitcode: int | None) -> str:
    """-9 -> "killed by SIGKILL"; 1 -> "exit code 1"."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return f"exit code {exitcode}"


def _work(device: str, threads: int | None, model, inbox, outbox) -> None:
    """A worker's loop: take a chunk, encode it, send back (chunk_id, numpy result or exception, texts
    truncated); forever, until the pool terminates it."""

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the whole process group: the caller decides
    signal.signal(signal.SIGTERM, _leave)
    threading.Thread(target=_leave_with, args=(multiprocessing.parent_process().sentinel,), daemon=True).start()
    if threads:
        torch.set_num_threads(threads)
    cut = []
    logger.addFilter(lambda record: record.msg != TRUNCATED or cut.append(record.args[0]))  # counted, not logged
    while True:
        chunk_id, texts, kwargs = inbox.get()
        cut.clear()
        try:
            output = model.encode(texts, device=device, show_progress_bar=False, convert_to_tensor=True, **kwargs)
            if kwargs.get("output_value") == "token_embeddings":
                output = [tokens.cpu().numpy() for tokens in output]
            else:
                output = output.cpu().numpy()
        except Exception as error:
            logger.exception("Worker on %s failed on chunk %d", device, chunk_id)
            output = error
            try:  # an error that does not survive pickling would fail the send, or the caller's receive
                pickle.loads(pickle.dumps(error))
            except Exception:
                output = RuntimeError("".join(traceback.format_exception(error)))
        outbox.send((chunk_id, output, sum(cut)))


def _leave_with(parent_sentinel: int) -> None:
    """Wait for the owner's end (even by SIGKILL, which runs none of its code), then leave as on stop_pool's
    SIGTERM: the worker would otherwise wait for chunks for ever, holding its copy of the model."""
    wait([parent_sentinel])
    _leave()


def _leave(*signal_args) -> None:
    """stop_pool's SIGTERM: run the exit handlers, so that multiprocessing releases what this process holds
    (tqdm's lock is a named semaphore; killed outright, the worker would leak it), then end without tearing
    down torch's modules one by one, which takes seconds on a busy machine and delays the caller's error."""
    atexit._run_exitfuncs()
    os._exit(0)
