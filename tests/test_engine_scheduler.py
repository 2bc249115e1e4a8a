"""The engine on its own, with toy tasks: order, longest-first hand-out, worker deaths."""

from __future__ import annotations

import functools
import threading

import fault_tasks
import pytest
import torch

from virnucpro.engine.scheduler import DeviceReady, Engine, Job, JobDone, JobWindow
from virnucpro.engine.worker import Done, Ready, Started
from virnucpro.errors import WorkerFailed

CPU = torch.device("cpu")


def jobs(n: int, done: dict[int, int] | None = None):
    done = done or {}
    # costs vary so longest-first hands jobs out of index order
    return (Job(i, 100 - (i * 37) % 11, i, f"job {i}", done=done.get(i)) for i in range(n))


def run_all(factory, devices, n=40, window=None, done=None):
    arrived = []

    def on_event(event):
        if isinstance(event, JobDone):
            arrived.append(event.job.index)

    with Engine(factory, devices, window=window, on_event=on_event) as engine:
        engine.launch()
        engine.wait_ready()
        out = list(engine.run(jobs(n, done)))
    return out, arrived


@pytest.mark.parametrize("window", [1, 3, None])
def test_results_come_back_in_index_order_in_process(window):
    out, arrived = run_all(fault_tasks.times_ten, [CPU], window=window)
    assert out == [(i, i * 10) for i in range(40)]
    assert sorted(arrived) == list(range(40))


def test_known_results_are_handed_back_not_run():
    out, arrived = run_all(fault_tasks.times_ten, [CPU], n=10, done={0: -1, 4: -4, 9: -9})
    assert [r for _, r in out] == [-1, 10, 20, 30, -4, 50, 60, 70, 80, -9]
    assert sorted(arrived) == [1, 2, 3, 5, 6, 7, 8]


def test_oldest_first_then_longest_first_within_the_window():
    costs = [5, 9, 7, 9, 9]
    state = JobWindow(iter([Job(i, c, i, f"job {i}") for i, c in enumerate(costs)]), 4)
    state.fill()
    # job 0 holds the window: it goes first though it is the cheapest; then by cost, ties
    # by index; job 4 is beyond the window
    assert [state.take().index for _ in range(4)] == [0, 1, 3, 2]
    assert state.take() is None


def test_two_equal_workers_are_never_starved_by_the_window():
    """Discrete-time model of the engine's hand-out: two workers, each holding one running
    and one queued job, every job one tick long, costs varying by a few percent (as shards'
    do). Handing out purely by cost passed the cheaper oldest job over until the window was
    full of finished jobs and a worker sat idle."""
    n, window = 400, 10
    costs = [200_000 + (i * 7919) % 97 for i in range(n)]
    state = JobWindow(iter([Job(i, c, i, f"job {i}") for i, c in enumerate(costs)]), window)
    queues: list[list[int]] = [[], []]
    idle = handed_back = 0
    while handed_back < n:
        state.fill()
        for q in queues:
            while len(q) < 2 and (job := state.take()) is not None:
                q.append(job.index)
        for q in queues:
            if q:
                index = q.pop(0)
                state.complete(index, index)
            else:
                idle += 1
        handed_back += len(list(state.drain()))
    assert idle <= 2  # only the final tick may find nothing left to do


def test_two_worker_processes_give_the_same_order():
    out, _ = run_all(fault_tasks.times_ten, [CPU, CPU])
    assert out == [(i, i * 10) for i in range(40)]


def run_with_one_slow_loader(tmp_path, load_seconds, job_seconds, n):
    """Two worker processes, one loading `load_seconds` longer; returns the results, the
    infos of the workers that became ready, and (time of the first result, times of ready)."""
    import time

    factory = functools.partial(fault_tasks.times_ten_one_loads_slowly, tmp_path / "first",
                                load_seconds, job_seconds)
    ready: list[DeviceReady] = []
    ready_at: list[float] = []
    results_at: list[float] = []

    def on_event(event):
        if isinstance(event, DeviceReady):
            ready.append(event)
            ready_at.append(time.monotonic())
        elif isinstance(event, JobDone):
            results_at.append(time.monotonic())

    with Engine(factory, [CPU, CPU], on_event=on_event) as engine:
        engine.launch()
        engine.wait_ready()
        out = list(engine.run(jobs(n)))
    return out, ready, results_at[0], ready_at


def test_jobs_start_on_the_first_ready_worker_and_the_other_joins(tmp_path):
    out, ready, first_result, ready_at = run_with_one_slow_loader(tmp_path, 1.0, 0.05, n=200)
    assert out == [(i, i * 10) for i in range(200)]
    assert len(ready) == 2  # the slow one joined the run (and was announced) once loaded
    assert first_result < ready_at[1]  # work began before the second device was ready
    assert all(event.startup_s["total"] > 0 for event in ready)


def test_a_worker_still_loading_when_the_run_ends_is_not_waited_for(tmp_path, monkeypatch):
    """A tiny input can be done before every device has loaded: the run ends then, and the
    worker still loading is stopped at once, not given the grace time a working one gets."""
    import time

    from virnucpro.engine import scheduler

    monkeypatch.setattr(scheduler, "STOP_GRACE_S", 120.0)
    t0 = time.monotonic()
    out, ready, _, _ = run_with_one_slow_loader(tmp_path, 60.0, 0.002, n=10)
    assert out == [(i, i * 10) for i in range(10)]
    assert len(ready) == 1
    assert time.monotonic() - t0 < 50  # neither its 60 s load nor the 120 s grace


@pytest.mark.parametrize("how", ["dies", "raises"])
def test_a_device_that_fails_to_load_while_another_works_is_dropped(tmp_path, how):
    """One broken device must not sink a run the others can do: it is dropped with a
    warning, whether it fails before or after the first device is ready."""
    warnings: list[str] = []
    factory = functools.partial(fault_tasks.times_ten_one_fails_loading, tmp_path / "first", how)
    with Engine(factory, [CPU, CPU], warn=warnings.append) as engine:
        engine.launch()
        engine.wait_ready()
        out = list(engine.run(jobs(150)))
    assert out == [(i, i * 10) for i in range(150)]
    assert len(warnings) == 1 and "the run goes on without it" in warnings[0]
    assert ("died while loading" if how == "dies" else "driver is broken (simulated)") in warnings[0]


def test_a_device_that_fails_to_load_alone_stops_the_run():
    with pytest.raises(WorkerFailed, match="died while loading the models"):
        run_all(fault_tasks.always_dies_loading, [CPU, CPU], n=4)


def test_killed_worker_has_its_job_requeued(tmp_path):
    factory = functools.partial(fault_tasks.times_ten_dies_once_at_3, tmp_path / "died")
    out, _ = run_all(factory, [CPU, CPU], n=12)
    assert (tmp_path / "died").exists()  # a worker really was killed
    assert out == [(i, i * 10) for i in range(12)]


def test_a_job_that_kills_workers_twice_fails_the_run_naming_it():
    with pytest.raises(WorkerFailed, match=r"^job 3 killed its worker twice"):
        run_all(fault_tasks.times_ten_always_dies_at_3, [CPU, CPU], n=12)


@pytest.mark.parametrize("devices", [[CPU], [CPU, CPU]])
def test_resume_with_more_stored_results_than_the_window(devices):
    """A resumed run whose stored shards outnumber the window: the stored ones drain at
    once and the rest must still be handed out (this hung: nothing was in flight to wait on)."""
    done = {i: -i for i in range(30)}
    out, arrived = run_all(fault_tasks.times_ten, devices, n=40, window=4, done=done)
    assert out == [(i, -i) for i in range(30)] + [(i, i * 10) for i in range(30, 40)]
    assert sorted(arrived) == list(range(30, 40))


def test_all_results_stored():
    out, arrived = run_all(fault_tasks.times_ten, [CPU], n=25, window=3, done={i: i for i in range(25)})
    assert out == [(i, i) for i in range(25)] and arrived == []


def test_a_job_that_kills_its_worker_while_being_prepared_fails_the_run():
    """Before its first "started" message, a worker's death is blamed on the job it was
    preparing; without that, the worker was restarted forever."""
    with pytest.raises(WorkerFailed, match=r"^job 0 killed its worker twice"):
        run_all(fault_tasks.times_ten_always_dies_preparing_0, [CPU, CPU], n=6)


def test_a_worker_process_freezes_its_heap_a_worker_thread_does_not():
    """Full garbage collections must not rescan the models and compiled code at every job:
    a worker process moves them to the permanent generation (gc.freeze) and restores the
    collector's thresholds after deferring full collections during its first job. A worker
    thread leaves the caller's process-wide collector alone."""
    import gc
    import multiprocessing
    import threading

    from virnucpro.engine import worker

    gc.unfreeze()
    thresholds = gc.get_threshold()
    try:
        out = list(run_all(fault_tasks.times_ten, [CPU], n=3)[0])  # in-process: a thread
        assert out == [(i, i * 10) for i in range(3)]
        assert gc.get_freeze_count() == 0

        # The process body, run here on a thread so this process's collector can be inspected.
        parent, child = multiprocessing.Pipe()
        body = threading.Thread(target=worker.work, args=(fault_tasks.times_ten, CPU, child),
                                kwargs={"own_process": True})
        body.start()
        assert isinstance(parent.recv(), Ready)
        assert gc.get_freeze_count() > 0
        parent.send((0, 4))
        assert parent.recv() == Started(0) and parent.recv() == Done(0, 40)
        parent.send(None)
        body.join(10)
        assert not body.is_alive()
        assert gc.get_threshold() == thresholds
    finally:
        gc.unfreeze()

@pytest.mark.parametrize("devices", [[CPU], [CPU, CPU]], ids=["in-process", "two-processes"])
def test_after_a_run_given_up_midway_settle_lets_the_engine_serve_the_next(devices):
    """One engine, several runs (a sample sheet's samples): a run whose job stream fails
    leaves jobs in flight; settle() waits them out, so their late results cannot pass for
    the next run's jobs of the same index."""
    def breaks_after(n):
        yield from (Job(i, 1, i, f"job {i}") for i in range(n))
        raise ValueError("the job stream broke")  # when job 0's result frees room in the window

    started = []
    with Engine(functools.partial(fault_tasks.times_ten_slow_after_first, 0.3), devices, window=4,
                on_event=lambda e: started.append(e) if isinstance(e, JobDone) else None) as engine:
        engine.launch()
        engine.wait_ready()
        with pytest.raises(ValueError):
            list(engine.run(breaks_after(4)))
        assert any(w.jobs for w in engine._workers), "the test needs jobs in flight when the stream breaks"
        engine.settle()
        assert not any(w.jobs for w in engine._workers)
        reported = len(started)
        out = list(engine.run(Job(i, 1, 100 + i, f"job {i}") for i in range(12)))
    assert out == [(i, (100 + i) * 10) for i in range(12)]
    assert len(started) - reported == 12  # settle's own results were not reported as the next run's


class _Unpicklable:
    """A payload and result no pipe could carry (a lock does not pickle)."""

    def __init__(self, value: int) -> None:
        self.value, self.lock = value, threading.Lock()


class _Echo:
    info = {"name": "echo"}

    def prepare(self, payload):
        return payload

    def run(self, payload):
        return _Unpicklable(payload.value * 10)


def _echo(device):
    return _Echo()


def test_an_in_process_worker_hands_payloads_and_results_over_without_pickling():
    """One device: the worker is a thread, and its shards' results (50 MB with embeddings)
    pass to the main thread by reference, with only a ticket in the pipe; a result that could
    not be pickled arrives all the same, and nothing is left held once the run is over."""
    payloads = [_Unpicklable(i) for i in range(5)]
    with Engine(_echo, [CPU]) as engine:
        engine.launch()
        engine.wait_ready()
        out = list(engine.run(Job(i, 1, p, f"job {i}") for i, p in enumerate(payloads)))
        assert [(i, r.value) for i, r in out] == [(i, i * 10) for i in range(5)]
        assert engine._workers[0].courier._held == {}


class _RaisesEof:
    info = {"name": "raises-eof"}

    def prepare(self, payload):
        return payload

    def run(self, payload):
        if payload == 2:
            raise EOFError("a truncated file, read inside the task")
        return payload * 10


def _raises_eof(device):
    return _RaisesEof()


def test_a_task_raising_eof_error_is_reported_as_its_failure():
    """EOFError (or a broken pipe) raised by the task itself is the task's failure, named in
    the error; only a pipe to the parent that broke means "nobody left to report to"."""
    failure = pytest.raises(WorkerFailed, match=r"failed on shard 2: EOFError: a truncated file")
    with failure, Engine(_raises_eof, [CPU]) as engine:
        engine.launch()
        engine.wait_ready()
        list(engine.run(Job(i, 1, i, f"job {i}") for i in range(5)))
