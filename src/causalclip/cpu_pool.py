"""Data-parallel extraction on CPU: several processes, each with its own copy of the backbone and its share of the
cores, pull batches from one queue, decode them and compute their features.

Why not one process with all the threads: on the 2-core development VM the two cores do not run at the same
speed (single-thread bf16 matmuls measured ~300 GFLOP/s on one core and ~850 on the other, changing from
second to second), and every operator of a multi-threaded forward pass splits its work evenly and waits for the
slower thread. Independent processes that take the next batch when they are free use each core at its own
speed, and have no per-operator synchronisation at all. Measured on that VM in alternating time slots
(benchmarks/cpu_processes_ab.py, docs/benchmarks.md): ViT-L/14 bf16 + ``torch.compile`` 2.7-5.7 images/s with one
2-thread process, 4.2-6.2 with two 1-thread processes (median ratio 1.26).

The backbone is sent to each process once, pickled by value in this process (never a file a user handed us),
so nothing depends on the size of ``/dev/shm``; a compiled backbone is sent uncompiled and each process compiles
its own copy. Processes are started with ``spawn``: a script that calls ``extract(..., config.processes > 1)``
must guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import queue
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .backbones import Backbone, uncompiled

__all__ = ["PoolError", "cpu_pool_batches", "default_processes", "forward_fixed", "usable_cores"]

log = logging.getLogger("causalclip")

MAX_AUTO_PROCESSES = 4  # on many-core machines: a few processes of several threads each (memory: one model each)


class PoolError(RuntimeError):
    """A worker process failed or died; the batches it held were not computed."""


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_processes(device: torch.device | str) -> int:
    """``processes="auto"``: one per usable core up to 4 on CPU (threads = cores // processes); 1 on a GPU."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(usable_cores(), MAX_AUTO_PROCESSES))


def forward_fixed(backbone: Backbone, pixels: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """``backbone(pixels)``, zero-padded to ``batch_size`` rows when given: a compiled backbone then sees one shape
    only (a short last batch, or one with undecodable images, would otherwise trigger a recompilation)."""
    n = pixels.shape[0]
    if batch_size is None or n >= batch_size:
        return backbone(pixels)
    pad = pixels.new_zeros((batch_size - n, *pixels.shape[1:]))
    return backbone(torch.cat([pixels, pad]))[:n]


def _serve(
    index: int,
    payload: Any,
    compile_model: bool,
    threads: int,
    batch_size: int,
    decode: Callable[[int, str], Any],
    collate: Callable[[list[Any]], Any],
    storage: str,
    tasks: Any,
    results: Any,
) -> None:
    """One worker process: take (rows, paths) batches until the None sentinel; answer (rows, features, errors)."""
    parent = os.getppid()
    try:
        torch.set_num_threads(threads)
        backbone = pickle.loads(payload.recv_bytes())  # pickled by the parent process from its own backbone
        payload.close()
        fixed = None
        backbone.eval()
        with torch.inference_mode():
            if compile_model:  # compile now, on the batch shape every batch will have
                backbone.model = torch.compile(backbone.model)
                fixed = batch_size
                size = backbone.preprocessing.size
                backbone(torch.zeros(batch_size, 3, size, size))
            results.put(("ready", index))
            while True:
                if os.getppid() != parent:  # the main process was killed: nobody will read our results
                    results.cancel_join_thread()
                    return
                try:
                    task = tasks.get(timeout=1.0)
                except queue.Empty:
                    continue
                if task is None:
                    break
                rows, paths = task
                ok_rows, pixels, errors = collate([decode(r, p) for r, p in zip(rows, paths, strict=True)])
                feats = forward_fixed(backbone, pixels, fixed).numpy().astype(storage) if ok_rows else None
                results.put(("batch", ok_rows, feats, errors))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        results.put(("error", index, traceback.format_exc()))


def cpu_pool_batches(
    backbone: Backbone,
    tasks: Sequence[tuple[list[int], list[str]]],
    *,
    processes: int,
    decode: Callable[[int, str], Any],
    collate: Callable[[list[Any]], Any],
    storage: str,
    batch_size: int,
    threads: int | None = None,
    on_ready: Callable[[], None] | None = None,
) -> Iterator[tuple[list[int], np.ndarray | None, list[tuple[int, str]]]]:
    """Compute ``tasks`` (each a batch of plan rows with their paths) in ``processes`` worker processes; yields
    ``(rows that decoded, their features in the storage dtype, [(row, reason) for rows that did not])`` per batch,
    in completion order. ``decode(row, path)`` and ``collate`` are the extraction's own (picklable) functions.
    ``on_ready()`` is called once every process has loaded (and, if compiled, compiled) its backbone. Raises
    :class:`PoolError` when a worker fails or dies; the batches already yielded are complete."""
    if not tasks:
        return
    processes = max(1, min(processes, len(tasks)))
    threads = threads or max(1, usable_cores() // processes)
    plain, compiled = uncompiled(backbone)
    payload = pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)
    ctx = mp.get_context("spawn")
    task_q, result_q = ctx.Queue(), ctx.Queue()
    pipes = [ctx.Pipe(duplex=False) for _ in range(processes)]  # the backbone goes through these, not the args,
    procs = [  # so that this process does not keep a copy of it for as long as the workers live
        ctx.Process(
            target=_serve,
            args=(i, pipes[i][0], compiled, threads, batch_size, decode, collate, storage, task_q, result_q),
            name=f"causalclip-extract-{i}",
            daemon=True,
        )
        for i in range(processes)
    ]
    log.info("extracting in %d processes x %d thread(s)%s", processes, threads, " (compiling)" if compiled else "")
    remaining, waiting = len(tasks), processes
    try:
        for p, (receive, _) in zip(procs, pipes, strict=True):
            p.start()
            receive.close()  # only the worker holds the reading end: if it dies, sending fails instead of hanging
        for _, send in pipes:
            try:
                send.send_bytes(payload)
            except OSError:
                pass  # that worker died while starting: reported below from its exit code
            send.close()
        del payload
        for t in tasks:
            task_q.put(t)
        for _ in procs:
            task_q.put(None)
        while remaining:
            try:
                msg = result_q.get(timeout=1.0)
            except queue.Empty:
                dead = [(p.name, p.exitcode) for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    name, code = dead[0]
                    raise PoolError(
                        f"extraction process {name} died (exit code {code}) with {remaining} batch(es) unfinished"
                    ) from None
                continue
            if msg[0] == "error":
                raise PoolError(f"extraction process {msg[1]} failed:\n{msg[2].rstrip()}")
            if msg[0] == "ready":
                waiting -= 1
                if waiting == 0 and on_ready is not None:
                    on_ready()
                continue
            remaining -= 1
            yield msg[1], msg[2], msg[3]
    finally:
        for p in procs:
            if p.is_alive():
                p.join(timeout=0 if remaining else 30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        task_q.cancel_join_thread()
        task_q.close()
        result_q.close()
