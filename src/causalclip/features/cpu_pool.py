"""Data-parallel extraction on CPU: several processes, each with its own copy of the backbone and its share of the
cores, pull batches from one queue, decode them and compute their features.

Why not one process with all the threads: on the 2-core development VM the two cores do not run at the same
speed (single-thread bf16 matmuls measured ~300 GFLOP/s on one core and ~850 on the other, changing from
second to second), and every operator of a multi-threaded forward pass splits its work evenly and waits for the
slower thread. Independent processes that take the next batch when they are free use each core at its own
speed, and have no per-operator synchronisation at all. Measured on that VM in alternating time slots
(benchmarks/cpu_processes_ab.py, docs/reports/extraction-speed.md): ViT-L/14 bf16 + ``torch.compile`` 2.7-5.7 images/s with one
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
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import wait
from typing import Any

import numpy as np
import torch

from ..backbones.base import Backbone, uncompiled

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
    """One worker process: take (rows, paths) batches until the None sentinel; answer (rows, features, errors)
    on its own pipe ``results``, which only the main process reads."""
    parent = mp.parent_process()  # its sentinel ends when the main process does, even before this one started
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
            results.send(("ready", index))
            while True:
                if parent is not None and not parent.is_alive():  # main process killed: nobody reads our results
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
                results.send(("batch", ok_rows, feats, errors))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        try:
            results.send(("error", index, traceback.format_exc()))
        except OSError:  # the main process is gone
            pass


def _check_exit(proc: Any, remaining: int, starting: bool) -> None:
    """Raise :class:`PoolError` if ``proc`` (which has ended or is ending) did not exit normally."""
    proc.join(timeout=5)
    if proc.exitcode != 0:
        hint = (
            " while starting (its error is printed above; a script that extracts with processes > 1 must guard its "
            'entry point with `if __name__ == "__main__":`)'
            if starting
            else ""
        )
        raise PoolError(
            f"extraction process {proc.name} died (exit code {proc.exitcode}){hint} with {remaining} batch(es) "
            "unfinished"
        )


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
    compile: bool | None = None,
) -> Iterator[tuple[list[int], np.ndarray | None, list[tuple[int, str]]]]:
    """Compute ``tasks`` (each a batch of plan rows with their paths) in ``processes`` worker processes; yields
    ``(rows that decoded, their features in the storage dtype, [(row, reason) for rows that did not])`` per batch,
    in completion order. ``decode(row, path)`` and ``collate`` are the extraction's own (picklable) functions.
    ``on_ready()`` is called once every process has loaded (and, if compiled, compiled) its backbone. ``compile``:
    whether each worker compiles its copy (None: as ``backbone`` is, compiled or not). Raises
    :class:`PoolError` when a worker fails or dies; the batches already yielded are complete."""
    if not tasks:
        return
    processes = max(1, min(processes, len(tasks)))
    threads = threads or max(1, usable_cores() // processes)
    plain, compiled = uncompiled(backbone)
    compiled = compiled if compile is None else compile
    payload = pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)
    ctx = mp.get_context("spawn")
    task_q = ctx.Queue()
    pipes = [ctx.Pipe(duplex=False) for _ in range(processes)]  # the backbone goes through these, not the args,
    # so that this process does not keep a copy of it for as long as the workers live. Results come back on one
    # pipe per worker, not a shared queue: a worker that dies in the middle of sending one (OOM killer, segfault)
    # then ends its own pipe, which reads as an error here, instead of leaving a half message that blocks the
    # reader of a shared queue forever.
    answers = [ctx.Pipe(duplex=False) for _ in range(processes)]
    procs = [
        ctx.Process(
            target=_serve,
            args=(i, pipes[i][0], compiled, threads, batch_size, decode, collate, storage, task_q, answers[i][1]),
            name=f"causalclip-extract-{i}",
            daemon=True,
        )
        for i in range(processes)
    ]
    log.info("extracting in %d processes x %d thread(s)%s", processes, threads, " (compiling)" if compiled else "")
    remaining, started = len(tasks), set()
    try:
        for p, (receive, _), (_, answer) in zip(procs, pipes, answers, strict=True):
            p.start()
            receive.close()  # only the worker holds the reading end: if it dies, sending fails instead of hanging
            answer.close()  # ... and the writing end of its answers: if it dies, reading them ends
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
        live = {answers[i][0]: i for i in range(processes)}  # answers not ended yet
        watch = {p.sentinel: i for i, p in enumerate(procs)}  # processes not seen to exit yet
        while remaining:
            if not live:
                raise PoolError(f"every extraction process ended with {remaining} batch(es) unfinished")
            for ready in wait([*live, *watch]):
                if ready in watch:  # a process exited: an error unless it ended normally (its answers then end)
                    i = watch.pop(ready)
                    _check_exit(procs[i], remaining, i not in started)
                    continue
                i = live[ready]
                try:
                    msg = ready.recv()
                except (EOFError, OSError):  # the worker ended (its last answer may be cut short)
                    del live[ready]
                    _check_exit(procs[i], remaining, i not in started)
                    continue
                if msg[0] == "error":
                    raise PoolError(f"extraction process {msg[1]} failed:\n{msg[2].rstrip()}")
                if msg[0] == "ready":
                    started.add(i)
                    if len(started) == processes and on_ready is not None:
                        on_ready()
                    continue
                remaining -= 1
                yield msg[1], msg[2], msg[3]
    finally:
        # Every result is in (or the job failed): workers that took the end marker are exiting; one still starting
        # (or compiling) has nothing left to do, so it is not waited for.
        deadline = time.monotonic() + (2 if not remaining else 0)
        for p in procs:
            if p.is_alive():
                p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        task_q.cancel_join_thread()
        task_q.close()
        for conn, _ in answers:
            conn.close()
