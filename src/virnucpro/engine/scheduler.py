"""Hand jobs to one worker per device and give their results back in job order.

- Jobs are read lazily from the caller's stream, at most `window` at a time (counting those
  finished but not yet handed back), so memory stays flat on any input size.
- Within the window, the costliest unassigned job goes to whichever worker has room first
  (greedy longest-processing-time), so faster devices simply take more jobs -- except that
  the window's oldest job, which holds the window back until it is done, goes first.
- Each worker holds at most two jobs: one running, one being prepared beside it.
- Results are handed back strictly by job index, so the output is the same for any number
  of devices or any timing; `on_event` sees each one as soon as it arrives (to persist it),
  with when it started and how long it took, and each device as it becomes ready.
- A worker that dies has its jobs requeued and is restarted; the job it was running when it
  died gets a strike, and a job with two strikes fails the run with WorkerFailed naming it.
- Jobs start as soon as one worker has loaded; the others join when they have. One that dies
  or fails while loading is dropped with a warning while another device can go on (a
  configuration error, VirnucproError, stops the run: it would fail on every device).
- With one device the worker runs in a thread of this process (same code, no subprocess).
- One engine may serve several run() calls in turn (the models load once); after a run()
  whose caller failed midway, settle() lets the jobs in flight finish before the next.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from virnucpro.engine import worker
from virnucpro.engine.worker import Done, Failed, Message, Ready, Started
from virnucpro.errors import VirnucproError, WorkerFailed

JOBS_PER_WORKER = 2  # one running, one being prepared
STRIKES_TO_FAIL = 2
STOP_GRACE_S = 5.0

log = logging.getLogger("virnucpro")


@dataclass(frozen=True)
class Job:
    index: int  # consecutive from 0, in output order
    cost: int
    payload: Any
    label: str  # names the job in errors, e.g. "shard 7 (items a .. b)"
    size: int = 1  # items in the job, for throughput
    done: Any = None  # a result known already (from a checkpoint): handed back, not run


@dataclass(frozen=True)
class DeviceReady:
    device: str
    info: Any  # the task's, as its worker sent it
    startup_s: dict[str, float]  # the worker's start-up phases, the task's own in `info`
    restarts: int  # times this device's worker was replaced before


@dataclass(frozen=True)
class JobStarted:
    job: Job
    device: str


@dataclass(frozen=True)
class JobDone:
    job: Job
    device: str
    result: Any
    seconds: float  # from the worker starting it to its result arriving


EngineEvent = DeviceReady | JobStarted | JobDone


@dataclass
class _Worker:
    device: torch.device
    conn: Connection
    process: Any  # multiprocessing Process, or a Thread in-process
    ready: bool = False
    info: Any = None
    jobs: list[int] = field(default_factory=list)  # assigned, not finished
    running: int | None = None
    running_since: float = 0.0
    restarts: int = 0  # times this device's worker was replaced after dying
    courier: worker.Courier | None = None  # an in-process worker's: objects pass by ticket

    def send(self, message: Any) -> None:
        self.conn.send(self.courier.wrap(message) if self.courier else message)

    def receive(self) -> Any:
        return worker.receive(self.conn, self.courier)


class Engine:
    """Use as a context manager: launch() starts loading the task on every device,
    wait_ready() returns once one is ready, run() streams jobs to every ready device.
    on_event(event) hears of each device ready, job started and job done (DeviceReady,
    JobStarted, JobDone), on the caller's thread; an exception it raises stops the run."""

    def __init__(self, factory: worker.TaskFactory, devices: list[torch.device], *,
                 window: int | None = None,
                 on_event: Callable[[EngineEvent], None] | None = None,
                 warn: Callable[[str], None] | None = None,
                 cpu_threads: int | None = None) -> None:
        """cpu_threads: what the host may use (None: torch's current setting)."""
        self.factory = factory
        self.devices = devices
        self.window = window or 4 * len(devices) + 2
        self.in_process = len(devices) == 1
        self._context = multiprocessing.get_context("spawn")
        # Every CPU worker computes with the thread count a one-device run would use: CPU
        # kernels' reductions depend on it, and outputs must not depend on the device count
        # (several CPU workers then oversubscribe the cores; `cpu,cpu` is for testing).
        self._cpu_threads = cpu_threads or torch.get_num_threads()
        # A GPU worker's host work (copying weights in at start, tokenizing) gets its share
        # of the cores: N workers each spinning up every core's thread oversubscribe them.
        self._gpu_worker_threads = max(1, self._cpu_threads // len(devices))
        self._threads_before: int | None = None
        self._workers: list[_Worker] = []
        self._on_event = on_event or (lambda event: None)
        self._warn = warn or log.warning
        self._state: JobWindow | None = None  # the jobs, while run() goes on

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop_all(graceful=exc_type is None)
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)

    def launch(self) -> None:
        """Start a worker per device; they load their models while the caller goes on."""
        if self.in_process:
            # the one worker is a thread of this process: the process's setting is its own,
            # given back when the run ends
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(self._cpu_threads)
        self._workers = [self._spawn(device) for device in self.devices]

    def wait_ready(self) -> Any:
        """Wait until the first launched worker has loaded; returns its task's info. The
        others join the run as they finish loading (each announced as a DeviceReady event):
        a device that loads a few seconds later no longer holds back the ones that are ready."""
        while not any(w.ready for w in self._workers):
            # Ready first: a device that fails beside one that is ready does not stop the run
            self._handle_all(self._next_messages(), first=Ready)
        return next(w.info for w in self._workers if w.ready)

    def _spawn(self, device: torch.device) -> _Worker:
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        courier = worker.Courier() if self.in_process else None
        if self.in_process:
            runner = threading.Thread(target=worker.work, args=(self.factory, device, child_end),
                                      kwargs={"courier": courier}, daemon=True, name=f"worker-{device}")
        else:
            runner = self._context.Process(
                target=worker.process_main, name=f"virnucpro-worker-{device}", daemon=True,
                args=(self.factory, device, child_end,
                      self._cpu_threads if device.type == "cpu" else self._gpu_worker_threads,
                      time.time()),
            )
        runner.start()
        if not self.in_process:
            child_end.close()  # so the parent sees EOF when the child dies
        return _Worker(device, parent_end, runner, courier=courier)

    def _stop_all(self, graceful: bool) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in self._workers:
            if isinstance(w.process, threading.Thread):
                # A thread cannot be killed: let it finish its batch (it stops at the next job),
                # since interpreter shutdown under a running CUDA/CPU kernel can abort the process.
                # One still loading its models (the run failed early, e.g. on the input's ids)
                # reads the stop once loaded; waiting for it would only delay the error.
                if w.ready:
                    w.process.join(STOP_GRACE_S)
                continue
            if not graceful or not w.ready:  # one still loading has nothing to finish
                w.process.terminate()
            w.process.join(STOP_GRACE_S)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
        self._workers = []

    # ------------------------------------------------------------------ the run

    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[int, Any]]:
        """Yield (index, result) in index order; a JobDone event as each result arrives."""
        self._state = state = JobWindow(iter(jobs), self.window)
        while True:
            # Stored results drain at once and free room in the window: refill and drain until
            # nothing more drains, else a window of only stored jobs would wait on idle workers.
            progressed = True
            while progressed:
                state.fill()
                progressed = False
                for item in state.drain():
                    progressed = True
                    yield item
            if state.finished():
                return
            for w in self._workers:
                while w.ready and len(w.jobs) < JOBS_PER_WORKER and (job := state.take()) is not None:
                    w.jobs.append(job.index)
                    w.send((job.index, job.payload))
            # Results first: an error raised while handling another message must not lose a
            # result that already arrived (it would be recomputed on resume).
            self._handle_all(self._next_messages(), first=Done)

    def settle(self) -> None:
        """After a run() its caller gave up on (its job stream failed): wait for the jobs
        still in flight and drop their results, so the workers are idle and a next run()
        on the same engine starts clean (the models stay loaded). Devices still loading
        keep loading; their readiness is still reported."""
        if self._state is None:
            return
        report = self._on_event
        self._on_event = lambda event: report(event) if isinstance(event, DeviceReady) else None
        try:
            while busy := [w for w in self._workers if w.jobs]:
                if any(not w.process.is_alive() for w in busy if isinstance(w.process, threading.Thread)):
                    # an in-process worker whose thread ended cannot be waited for
                    raise WorkerFailed("a worker stopped while the run was being wound down")
                self._handle_all(self._next_messages(), first=Done)
        finally:
            self._on_event = report

    def _handle_all(self, batch: list[tuple[_Worker, Message | None]], first: type) -> None:
        """Handle messages of `first`'s kind, then the rest; None stands for a death."""
        for w, message in sorted(batch, key=lambda item: not isinstance(item[1], first)):
            if w not in self._workers:
                continue  # dropped earlier in this batch
            if message is None:
                self._on_death(w)
            else:
                self._handle(w, message)

    def _next_messages(self) -> list[tuple[_Worker, Message | None]]:
        """Block until some worker speaks or dies; None stands for a death."""
        waitables: dict[Any, _Worker] = {w.conn: w for w in self._workers}
        if not self.in_process:
            waitables.update({w.process.sentinel: w for w in self._workers})
        out = []
        for ready in wait(list(waitables)):
            w = waitables[ready]
            if ready is w.conn:
                out.append((w, w.receive()))
            elif w.process.exitcode is not None or not w.process.is_alive():
                # The pipe may still hold messages sent just before the death.
                while w.conn.poll() and (message := w.receive()) is not None:
                    out.append((w, message))
                out.append((w, None))
        # A death may be reported twice (pipe EOF and sentinel): keep the first.
        seen: set[int] = set()
        unique = []
        for w, message in out:
            if message is None:
                if id(w) in seen:
                    continue
                seen.add(id(w))
            unique.append((w, message))
        return unique

    @staticmethod
    def _died_loading(w: _Worker) -> None:
        w.process.join(STOP_GRACE_S)
        raise WorkerFailed(
            f"the worker for {w.device} died while loading the models (exit code "
            f"{getattr(w.process, 'exitcode', None)}); check its memory (a GPU needs room for "
            "the models) or run with fewer --devices"
        )

    def _handle(self, w: _Worker, message: Message) -> None:
        if isinstance(message, Ready):
            w.ready, w.info = True, message.info
            self._on_event(DeviceReady(str(w.device), message.info, message.startup_s, w.restarts))
        elif isinstance(message, Started):
            w.running, w.running_since = message.index, time.perf_counter()
            self._on_event(JobStarted(self._state.job(message.index), str(w.device)))
        elif isinstance(message, Done):
            w.jobs.remove(message.index)
            seconds = time.perf_counter() - w.running_since
            w.running = None
            job = self._state.job(message.index)
            if self._state.complete(message.index, message.result):
                self._on_event(JobDone(job, str(w.device), message.result, seconds))
        elif isinstance(message, Failed):
            exc, text = message.error, message.traceback
            if isinstance(exc, VirnucproError):
                raise exc  # the input or the models: the same on every device
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            if not w.ready and self._others(w):
                self._drop(w, f"failed while loading the models ({type(exc).__name__}: {first_line})")
                return
            log.debug("worker %s traceback:\n%s", w.device, text)
            where = f" on shard {w.running}" if w.running is not None else ""
            raise WorkerFailed(f"the worker for {w.device} failed{where}: {type(exc).__name__}: "
                               f"{first_line} (run with -v for the traceback)")
        else:
            raise AssertionError(f"unexpected worker message {message!r}")

    def _on_death(self, w: _Worker) -> None:
        if not w.ready or self._state is None:
            self._lost_while_loading(w)  # restarting would only die again
            return
        state = self._state
        w.process.join(STOP_GRACE_S)
        code = getattr(w.process, "exitcode", None)  # None for an in-process thread
        # The job it was running; before its first "started", the one it was preparing (else a
        # shard that kills its worker while being prepared would restart it forever).
        suspect = w.running if w.running in w.jobs else (w.jobs[0] if w.jobs else None)
        if suspect is not None:
            label = state.strike(suspect)
            if label is not None:
                raise WorkerFailed(
                    f"{label} killed its worker twice (last on {w.device}, exit code {code}); "
                    "the run stops: check memory limits for this input, or remove what it holds"
                )
        state.requeue(w.jobs)
        w.conn.close()
        replacement = self._spawn(w.device)
        replacement.restarts = w.restarts + 1
        self._workers[self._workers.index(w)] = replacement

    def _lost_while_loading(self, w: _Worker) -> None:
        """A worker died before it was ready: the run goes on without it while another device
        is working or loading, else it stops here."""
        if not self._others(w):
            self._died_loading(w)
        w.process.join(STOP_GRACE_S)
        self._drop(w, f"died while loading the models (exit code {getattr(w.process, 'exitcode', None)})")

    def _others(self, w: _Worker) -> bool:
        return any(other is not w for other in self._workers)

    def _drop(self, w: _Worker, what: str) -> None:
        """Go on without a device that could not load while others can: a retry would load
        the same models the same way, and it holds no jobs (only ready workers get them)."""
        self._warn(f"the worker for {w.device} {what}; the run goes on without it")
        if not isinstance(w.process, threading.Thread) and w.process.is_alive():
            w.process.terminate()
            w.process.join(STOP_GRACE_S)
        w.conn.close()
        self._workers.remove(w)

    def loading(self) -> list[str]:
        """Devices whose worker has not finished loading (e.g. when a small run ends first)."""
        return [str(w.device) for w in self._workers if not w.ready]


class JobWindow:
    """The window of jobs: unassigned, in flight, finished-but-not-yet-handed-back."""

    def __init__(self, jobs: Iterator[Job], window: int) -> None:
        self._jobs = jobs
        self._window = window
        self._exhausted = False
        self._open: dict[int, Job] = {}  # every job in the window, by index
        self._unassigned: set[int] = set()
        self._results: dict[int, Any] = {}
        self._next_out = 0
        self._strikes: dict[int, int] = {}

    def job(self, index: int) -> Job:
        return self._open[index]

    def fill(self) -> None:
        while not self._exhausted and len(self._open) < self._window:
            job = next(self._jobs, None)
            if job is None:
                self._exhausted = True
                break
            self._open[job.index] = job
            if job.done is not None:
                self._results[job.index] = job.done
            else:
                self._unassigned.add(job.index)

    def drain(self) -> Iterator[tuple[int, Any]]:
        while self._next_out in self._results:
            index = self._next_out
            result = self._results.pop(index)
            del self._open[index]
            self._next_out += 1
            yield index, result

    def finished(self) -> bool:
        return self._exhausted and not self._open

    def take(self) -> Job | None:
        """The next job to hand out, or None: the window's oldest job if it is still
        unassigned, else the costliest unassigned one (ties: the earliest).

        The oldest job goes first because the window only moves on once it is handed back:
        picked purely by cost, a slightly cheaper oldest job kept being passed over while
        the window filled with finished jobs behind it, until a device had nothing to do
        (two workers with equal 50 ms jobs: 0.96 of the ideal rate before, 0.98 after)."""
        if not self._unassigned:
            return None
        if self._next_out in self._unassigned:
            index = self._next_out
        else:
            index = max(self._unassigned, key=lambda i: (self._open[i].cost, -i))
        self._unassigned.remove(index)
        return self._open[index]

    def complete(self, index: int, result: Any) -> bool:
        """Record a result; False when it is a duplicate (a requeued job finished twice)."""
        if index < self._next_out or index in self._results:
            return False
        self._results[index] = result
        self._unassigned.discard(index)
        return True

    def requeue(self, indices: list[int]) -> None:
        for index in indices:
            if index >= self._next_out and index not in self._results:
                self._unassigned.add(index)

    def strike(self, index: int) -> str | None:
        """Count a worker death against a job; its label once it reaches the limit."""
        self._strikes[index] = self._strikes.get(index, 0) + 1
        return self._open[index].label if self._strikes[index] >= STRIKES_TO_FAIL else None
