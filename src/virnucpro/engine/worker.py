"""One device's loop: build the task once (models loaded once), then run jobs on the device
while the NEXT job is received and prepared on a background thread, so host-side work
(tokenizing, batching, pinning) never leaves the device idle.

The engine knows no biology. A task is whatever `factory(device)` builds: it has `info`
(a picklable dict sent to the parent once loaded), `prepare(payload)` (host-only,
thread-safe) and `run(prepared)` (the device work). The same `serve` loop runs in a
spawned process (several devices) or in a thread of the parent (one device).

Python's full (generation-2) garbage collections stop the thread that feeds the device, for
time proportional to every live object -- and loaded models plus torch.compile's graphs are
about a million of them, so a full collection can hold up the launches for hundreds of
milliseconds (PyTorch measured ~260 ms per full collection while compiling). A worker
process defers them while its first job runs (that is where compilation happens), then
freezes its heap: later collections only scan what each job allocates. A worker thread in
the caller's process leaves the collector alone: those settings are process-wide, and the
caller (a notebook, a test) would be left with a frozen heap.

Messages, worker -> parent: ("ready", info), ("started", index), ("done", index, result),
("error", exception, traceback text). Parent -> worker: (index, payload), or None to stop.
"""

from __future__ import annotations

import gc
import os
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

import torch

from virnucpro.background import in_background


class Task(Protocol):
    info: dict

    def prepare(self, payload: Any) -> Any: ...

    def run(self, prepared: Any) -> Any: ...


TaskFactory = Callable[[torch.device], Task]


def serve(task: Task, receive: Callable[[], Any], send: Callable[[tuple], None], *,
          settle_heap: bool = False) -> None:
    """Run jobs until receive() gives None; job n+1 is received and prepared during job n.
    settle_heap: defer full collections during the first job, then freeze the heap."""
    def fetch() -> tuple[int, Any] | None:
        job = receive()
        if job is None:
            return None
        index, payload = job
        return index, task.prepare(payload)

    pending = in_background(fetch, "prepare-next")
    settle = settle_heap  # on the first job only
    while (current := pending()) is not None:
        pending = in_background(fetch, "prepare-next")
        index, prepared = current
        send(("started", index))  # lets the parent blame the right job if this process dies
        if settle:
            with _full_collections_deferred():
                result = task.run(prepared)  # compiles its kernels on the first call
            freeze_heap()
            settle = False
        else:
            result = task.run(prepared)
        send(("done", index, result))


class _full_collections_deferred:
    """Raise the generation-2 threshold for a while (compilation allocates ~1M objects and
    would otherwise trigger repeated full scans of a growing heap); young generations still
    collect, and refcounting frees everything acyclic as usual."""

    def __enter__(self) -> None:
        self._thresholds = gc.get_threshold()
        gc.set_threshold(self._thresholds[0], self._thresholds[1], 1_000_000)

    def __exit__(self, *exc) -> None:
        gc.set_threshold(*self._thresholds)


def freeze_heap() -> None:
    """Collect once, then move every surviving object to the permanent generation, which
    automatic collections never scan (gc.freeze). Objects alive now are the models, the
    compiled code and the interpreter's own: not garbage, and never going to be."""
    gc.collect()
    gc.freeze()


def _with_startup(info: dict, entered: float, launched_at: float | None) -> dict:
    """info plus "startup_s": seconds per start-up phase (the task's own phases, if it
    reports them, after the process start) and "total"."""
    phases = {"start process (spawn, imports)": round(entered - launched_at, 2)} if launched_at else {}
    phases.update(info.get("startup_s", {}))
    phases["total"] = round(time.time() - (launched_at or entered), 2)
    return {**info, "startup_s": phases}


def _receive(conn: Connection) -> Any:
    try:
        return conn.recv()
    except (EOFError, OSError):  # the parent is gone: stop quietly
        return None


def work(factory: Callable[[torch.device], Task], device: torch.device, conn: Connection,
         own_process: bool = False, launched_at: float | None = None) -> None:
    """The worker body, shared by processes and the in-process thread. launched_at: the
    parent's time.time() when it started this process (reported as start-up time)."""
    try:
        entered = time.time()
        task = factory(device)
        if own_process:
            freeze_heap()  # the loaded models: scanned once here instead of at every full collection
        conn.send(("ready", _with_startup(task.info, entered, launched_at)))
        serve(task, lambda: _receive(conn), conn.send, settle_heap=own_process)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return  # the parent stopped listening; nothing left to report to
    except BaseException as exc:
        text = traceback.format_exc()
        try:
            conn.send(("error", exc, text))
        except Exception:  # the exception itself may not pickle
            try:
                conn.send(("error", RuntimeError(repr(exc)), text))
            except Exception:
                pass


def process_main(factory: Callable[[torch.device], Task], device: torch.device, conn: Connection,
                 cpu_threads: int, launched_at: float | None = None) -> None:
    """Entry point of a spawned worker process."""
    # Ctrl-C reaches the whole process group; the parent decides how to stop its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(cpu_threads)  # see Engine.__init__
    work(factory, device, conn, own_process=True, launched_at=launched_at)
    conn.close()
    os._exit(0)  # skip interpreter teardown: a prefetch thread may still block in recv
