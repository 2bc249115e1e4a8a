"""One device's loop: build the task once (models loaded once), then run jobs on the device
while the NEXT job is received and prepared on a background thread, so host-side work
(tokenizing, batching, pinning) never leaves the device idle.

The engine knows no biology. A task is whatever `factory(device)` builds: it has `info`
(a picklable dict sent to the parent once loaded), `prepare(payload)` (host-only,
thread-safe) and `run(prepared)` (the device work). The same `serve` loop runs in a
spawned process (several devices) or in a thread of the parent (one device).

A worker process defers Python's full garbage collections while its first job runs (where
compilation allocates about a million objects), then freezes its heap, so later collections
never scan the loaded models (why: benchmarks/RESULTS.md, "Garbage collection in workers").
A worker thread in the caller's process leaves the collector alone: those settings are
process-wide, and the caller (a notebook, a test) would be left with a frozen heap. Freezing
there anyway (and unfreezing at the end) was tried for one-GPU runs: they ran 37 % slower,
with a second of idle GPU after every shard (benchmarks/RESULTS.md, "Idle tail").

Messages, worker -> parent: Ready, Started, Done, Failed (below). Parent -> worker:
(index, payload), or None to stop. Between the threads of one process a Courier carries the
payloads and results: the pipe then holds only a ticket (see Courier).
"""

from __future__ import annotations

import gc
import itertools
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

import torch

from virnucpro.engine.background import in_background


class Task(Protocol):
    info: Any  # picklable; sent to the parent once the task is built

    def prepare(self, payload: Any) -> Any: ...

    def run(self, prepared: Any) -> Any: ...


TaskFactory = Callable[[torch.device], Task]


@dataclass(frozen=True)
class Ready:
    info: Any  # the task's
    startup_s: dict[str, float] = field(default_factory=dict)  # the worker's own phases and total


@dataclass(frozen=True)
class Started:
    index: int


@dataclass(frozen=True)
class Done:
    index: int
    result: Any


@dataclass(frozen=True)
class Failed:
    error: BaseException
    traceback: str


Message = Ready | Started | Done | Failed


@dataclass(frozen=True)
class Ticket:
    number: int


class Courier:
    """Hands jobs' payloads and results between the threads of one process (the one-device
    run) without pickling them: the pipe carries a Ticket and the object waits here.

    Through the pipe, a shard's result with --save-embeddings (about 50 MB) was pickled by the
    worker thread, which then blocked in send() until the main thread had read all of it, and
    the device waited meanwhile. One courier per worker: what it still holds when the worker is
    dropped goes with it."""

    def __init__(self) -> None:
        self._held: dict[int, Any] = {}
        self._numbers = itertools.count()

    def wrap(self, message: Any) -> Any:
        if isinstance(message, Done):
            return Done(message.index, self._hold(message.result))
        if isinstance(message, tuple):  # a job: (index, payload)
            index, payload = message
            return index, self._hold(payload)
        return message

    def unwrap(self, message: Any) -> Any:
        if isinstance(message, Done) and isinstance(message.result, Ticket):
            return Done(message.index, self._held.pop(message.result.number))
        if isinstance(message, tuple) and isinstance(message[1], Ticket):
            return message[0], self._held.pop(message[1].number)
        return message

    def _hold(self, obj: Any) -> Ticket:
        number = next(self._numbers)  # atomic under the GIL, as are the dict's set and pop
        self._held[number] = obj
        return Ticket(number)


def serve(task: Task, receive: Callable[[], Any], send: Callable[[Message], None], *,
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
        send(Started(index))  # lets the parent blame the right job if this process dies
        if settle:
            with _FullCollectionsDeferred():
                result = task.run(prepared)  # compiles its kernels on the first call
            freeze_heap()
            settle = False
        else:
            result = task.run(prepared)
        send(Done(index, result))


class _FullCollectionsDeferred:
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


def _startup(entered: float, launched_at: float | None) -> dict[str, float]:
    """Seconds from the parent's launch to this process running our code (when it was a
    process), and to the task being ready ("total")."""
    phases = {"start process (spawn, imports)": round(entered - launched_at, 2)} if launched_at else {}
    phases["total"] = round(time.time() - (launched_at or entered), 2)
    return phases


def receive(conn: Connection, courier: Courier | None = None) -> Any:
    """The next object from the other end of a pipe (what its ticket stands for, through a
    courier); None once that end is gone."""
    try:
        message = conn.recv()
    except (EOFError, OSError):
        return None
    return courier.unwrap(message) if courier else message


class _ParentGone(Exception):
    """The pipe to the parent broke while sending: nobody is left to report to."""


def work(factory: Callable[[torch.device], Task], device: torch.device, conn: Connection,
         own_process: bool = False, launched_at: float | None = None,
         courier: Courier | None = None) -> None:
    """The worker body, shared by processes and the in-process thread. launched_at: the
    parent's time.time() when it started this process (reported as start-up time); courier:
    the in-process thread's, which its parent shares."""
    def send(message: Message) -> None:
        try:
            conn.send(courier.wrap(message) if courier else message)
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            raise _ParentGone from exc

    try:
        entered = time.time()
        task = factory(device)
        if own_process:
            freeze_heap()  # the loaded models: scanned once here instead of at every full collection
        send(Ready(task.info, _startup(entered, launched_at)))
        serve(task, lambda: receive(conn, courier), send, settle_heap=own_process)
    except _ParentGone:
        return  # the parent stopped listening; nothing left to report to
    except BaseException as exc:  # noqa: BLE001 - a task's own EOFError etc. is reported too
        text = traceback.format_exc()
        try:
            conn.send(Failed(exc, text))
        except Exception:  # noqa: BLE001 - the exception itself may not pickle
            try:
                conn.send(Failed(RuntimeError(repr(exc)), text))
            except Exception:  # noqa: BLE001
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
