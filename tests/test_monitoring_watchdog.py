"""Stall and imbalance warnings of the watchdog.

The watchdog reads time only from its clock, so the scenarios replay the events of fake
workers on a fake clock (shards back to back, heartbeat ticks in between, in time order):
deterministic, and instant however long the simulated shards. One smoke test keeps real
threads and a real heartbeat, to show the stall is noticed while the worker hangs.
"""

from __future__ import annotations

import threading
import time

import pytest

from virnucpro.monitoring.events import Monitor
from virnucpro.monitoring.gpu import GpuSample
from virnucpro.monitoring.heartbeat import Heartbeat
from virnucpro.monitoring.workers import Thresholds, WorkerWatch

FAST = Thresholds(stall_min_seconds=0.3, stall_factor=5.0, slow_fraction=0.7, busy_gap_points=15, min_shards=3)
TICK = 0.02  # heartbeat interval of the replays, in fake seconds


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def watched(thresholds=FAST, log_every: float = 60.0):
    """A monitor with a watchdog on a fake clock, and the (time, message) of each warning."""
    clock = Clock()
    monitor = Monitor()
    watch = WorkerWatch(monitor, thresholds, clock=clock, log_every=log_every)
    monitor.subscribe(watch)
    warned: list[tuple[float, str]] = []
    monitor.subscribe(lambda event: event.kind == "warning" and warned.append((clock.now, event.data["message"])))
    return monitor, watch, clock, warned


def run_workers(monitor, clock, specs, tokens=1000):
    """Replay workers (device, seconds of shard i, shard indices) that run their shards back
    to back from time 0, with a tick every TICK seconds until the last shard is done.
    At equal times a shard ends before the next starts, and ticks come last."""
    timeline = []
    for device, seconds, indices in specs:
        t = 0.0
        for index in indices:
            shard = dict(index=index, frames=10, tokens=tokens, device=device)
            timeline.append((t, 1, "shard_started", shard))
            t += seconds(index)
            timeline.append((t, 0, "shard_done", dict(shard, seconds=seconds(index), resumed=False)))
    end = max(t for t, *_ in timeline)
    timeline += [(n * TICK, 2, "tick", {}) for n in range(1, int(end / TICK) + 2)]
    monitor.emit("run_started", devices=[device for device, _, _ in specs])
    for t, _, kind, data in sorted(timeline, key=lambda item: item[:2]):
        clock.now = t
        monitor.emit(kind, **data)
    monitor.emit("run_finished", frames=0, seconds=0.0)


def test_a_stuck_worker_is_named_with_its_shard():
    monitor, _, clock, warned = watched()
    # cuda:1 finishes three 10 ms shards, then hangs 0.6 s in shard 13 (limit: max(0.3, 5 x 10 ms))
    def hang(i):
        return 0.6 if i == 13 else 0.01

    run_workers(monitor, clock, [("cuda:0", lambda i: 0.01, range(0, 40)),
                                 ("cuda:1", hang, range(10, 14))])
    stalls = [(t, w) for t, w in warned if "stalled" in w]
    assert len(stalls) == 1, warned  # warned once, not at every one of the ticks that followed
    when, stall = stalls[0]
    assert "cuda:1" in stall and "shard 13" in stall
    # shard 13 started at 0.03 s: the first tick past 0.03 + 0.3 s notices it
    assert 0.33 < when <= 0.33 + TICK + 1e-9, when


@pytest.mark.parametrize("long_shard, stalled", [(0.45, False), (0.65, True)])
def test_a_long_shard_is_a_stall_only_past_five_medians(long_shard, stalled):
    monitor, _, clock, warned = watched()
    # shards of 0.12 s: limit max(0.3, 5 x 0.12 = 0.6); a 0.45 s shard is slow but not stuck
    run_workers(monitor, clock, [("cuda:0", lambda i: long_shard if i == 3 else 0.12, range(4))])
    stalls = [(t, w) for t, w in warned if "stalled" in w]
    assert len(stalls) == stalled, warned
    if stalled:  # shard 3 started at 0.36 s: noticed at the first tick past 0.36 + 0.6 s
        when, stall = stalls[0]
        assert "shard 3" in stall and 0.96 < when <= 0.96 + TICK + 1e-9, (when, stall)


def test_a_slow_device_gets_an_imbalance_warning():
    monitor, _, clock, warned = watched()
    # same work per shard; cuda:2 takes 3x as long: ~33% of the median's tokens/s
    run_workers(monitor, clock, [("cuda:0", lambda i: 0.02, range(30)),
                                 ("cuda:1", lambda i: 0.02, range(100, 130)),
                                 ("cuda:2", lambda i: 0.06, range(200, 210))])
    slow = [w for _, w in warned if w.startswith("imbalance")]
    assert slow and all("cuda:2" in w for w in slow), warned
    assert "33% of the median device" in slow[0]


def test_balanced_devices_get_no_warning():
    monitor, _, clock, warned = watched()
    run_workers(monitor, clock, [("cuda:0", lambda i: 0.02, range(20)),
                                 ("cuda:1", lambda i: 0.022, range(100, 120))])
    assert warned == [] and monitor.warnings == []


def test_a_device_busy_15_points_under_the_others_is_reported():
    monitor, watch, clock, _ = watched()
    for device, util in (("cuda:0", 97.0), ("cuda:1", 96.0), ("cuda:2", 75.0)):
        for i in range(3):
            monitor.emit("shard_started", index=i, frames=1, tokens=100, device=device)
            clock.now += 1.0
            monitor.emit("shard_done", index=i, frames=1, tokens=100, seconds=1.0, device=device)
            monitor.emit("gpu_sample", elapsed=clock.now, samples=[
                GpuSample(device, 0, "H200", util, 1.0, 2.0, None)])
    clock.now += 0.5
    watch.check(clock.now)
    busy = [w for w in monitor.warnings if "busy" in w]
    assert len(busy) == 1 and "cuda:2" in busy[0] and "75%" in busy[0], monitor.warnings


def test_a_device_that_started_late_is_not_called_idle():
    """Model loading and the first (compiling) shard are not idleness: on two H200s the
    second worker started its first shard ~4 s after the first, and counting its samples
    from the run's start reported it 'busy 57%, the other devices 85%'."""
    monitor, watch, clock, _ = watched()

    def sample(utils: dict[str, float]) -> None:
        monitor.emit("gpu_sample", elapsed=clock.now, samples=[
            GpuSample(device, 0, "H200", util, 1.0, 2.0, None) for device, util in utils.items()])

    def shard(device: str, index: int) -> None:
        monitor.emit("shard_started", index=index, frames=1, tokens=100, device=device)
        clock.now += 1.0
        monitor.emit("shard_done", index=index, frames=1, tokens=100, seconds=1.0, device=device)

    sample({"cuda:0": 0.0, "cuda:1": 0.0})  # both loading models
    shard("cuda:0", 0)
    sample({"cuda:0": 40.0, "cuda:1": 0.0})  # cuda:0 compiled; cuda:1 still loading
    sample({"cuda:0": 98.0, "cuda:1": 0.0})
    shard("cuda:1", 100)
    sample({"cuda:0": 98.0, "cuda:1": 45.0})  # cuda:1 compiling its first shard
    for i in range(1, 5):
        shard("cuda:0", i)
        shard("cuda:1", 100 + i)
        sample({"cuda:0": 98.0, "cuda:1": 97.0})
        watch.check(clock.now)
    assert monitor.warnings == []
    # and one that really idles later is still caught
    for i in range(5, 9):
        shard("cuda:0", i)
        sample({"cuda:0": 98.0, "cuda:1": 60.0})
        watch.check(clock.now)
    busy = [w for w in monitor.warnings if "busy" in w]
    assert len(busy) == 1 and "cuda:1" in busy[0], monitor.warnings


def test_throughput_lines_per_device_at_each_tick(virnucpro_log):
    # -v: a line at every interval (log_every = the interval)
    monitor, _, clock, _ = watched(log_every=10.0)
    monitor.emit("run_started", devices=["cuda:0", "cuda:1"])
    for device, tokens in (("cuda:0", 5000), ("cuda:1", 2000)):
        monitor.emit("shard_started", index=0, frames=50, tokens=tokens, device=device)
        monitor.emit("shard_done", index=0, frames=50, tokens=tokens, seconds=9.0, device=device)
    clock.now += 10.0
    monitor.emit("tick")
    lines = sorted(r.getMessage() for r in virnucpro_log.records)
    assert lines[0].startswith("device cuda:0: 5 frames/s, 500 tokens/s (last 10 s)")
    assert lines[1].startswith("device cuda:1: 5 frames/s, 200 tokens/s (last 10 s)")


def test_throughput_lines_come_once_a_minute_by_default(virnucpro_log):
    """A batch log of a long run: ticks every 10 s, a line per device every 60 s, covering it."""
    clock = Clock()
    monitor = Monitor()
    monitor.subscribe(WorkerWatch(monitor, FAST, clock=clock))
    monitor.emit("run_started", devices=["cuda:0"])
    for index in range(12):
        monitor.emit("shard_started", index=index, frames=60, tokens=6000, device="cuda:0")
        clock.now += 10.0
        monitor.emit("shard_done", index=index, frames=60, tokens=6000, seconds=10.0, device="cuda:0")
        monitor.emit("tick")
    lines = [r.getMessage() for r in virnucpro_log.records]
    assert len(lines) == 2, lines  # at 60 s and 120 s, not at each of the 12 ticks
    assert all(line.startswith("device cuda:0: 6 frames/s, 600 tokens/s (last 60 s)") for line in lines)


def test_smoke_the_heartbeat_thread_notices_a_worker_hanging_on_its_own_thread():
    """Real threads and time: worker threads emit concurrently, one hangs inside shard 3
    until the heartbeat's thread has warned, then lets five more ticks pass."""
    monitor = Monitor()
    monitor.subscribe(WorkerWatch(monitor, Thresholds(stall_min_seconds=0.05)))
    heartbeat = Heartbeat(monitor, 0.01)
    monitor.subscribe(heartbeat)
    stalled, five_more_ticks = threading.Event(), threading.Event()
    ticks_since_stall = []

    def on_event(event):
        if event.kind == "warning" and "stalled" in event.data["message"]:
            stalled.set()
        elif event.kind == "tick" and stalled.is_set():
            ticks_since_stall.append(event)
            if len(ticks_since_stall) >= 5:
                five_more_ticks.set()

    monitor.subscribe(on_event)

    def shard(device, index, hang=None):
        monitor.emit("shard_started", index=index, frames=10, tokens=1000, device=device)
        t0 = time.perf_counter()
        if hang is not None:
            hang()
        monitor.emit("shard_done", index=index, frames=10, tokens=1000, seconds=time.perf_counter() - t0,
                     device=device, resumed=False)

    def stuck_worker():
        for index in range(3):
            shard("cuda:1", index)
        shard("cuda:1", 3, hang=lambda: stalled.wait(30) and five_more_ticks.wait(30))

    def busy_worker():
        index = 100
        while not five_more_ticks.is_set() and index < 30_000:
            shard("cuda:0", index, hang=lambda: time.sleep(0.001))
            index += 1

    monitor.emit("run_started", devices=["cuda:0", "cuda:1"])
    threads = [threading.Thread(target=worker) for worker in (stuck_worker, busy_worker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monitor.emit("run_finished", frames=0, seconds=0.0)
    heartbeat.stop()
    assert stalled.is_set() and five_more_ticks.is_set(), monitor.warnings
    stalls = [w for w in monitor.warnings if "stalled" in w]
    assert len(stalls) == 1, monitor.warnings
    assert "cuda:1" in stalls[0] and "shard 3" in stalls[0]
