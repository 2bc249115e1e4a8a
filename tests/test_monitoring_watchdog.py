"""Stall and imbalance warnings, from deliberately slowed fake workers on threads (as events
from several worker processes arrive), with thresholds shrunk so the tests take a second."""

from __future__ import annotations

import threading
import time

from virnucpro.monitoring.events import Monitor
from virnucpro.monitoring.heartbeat import Heartbeat
from virnucpro.monitoring.workers import Thresholds, WorkerWatch

FAST = Thresholds(stall_min_seconds=0.3, stall_factor=5.0, slow_fraction=0.7, busy_gap_points=15, min_shards=3)


def watched(thresholds=FAST, interval=0.02):
    monitor = Monitor()
    watch = WorkerWatch(monitor, thresholds)
    heartbeat = Heartbeat(monitor, interval)
    monitor.subscribe(watch)
    monitor.subscribe(heartbeat)
    return monitor, watch, heartbeat


def fake_worker(monitor, device, shard_seconds, indices, tokens=1000):
    """Emit shard_started / shard_done like a worker whose shards take `shard_seconds`."""
    for index in indices:
        monitor.emit("shard_started", index=index, frames=10, tokens=tokens, device=device)
        t0 = time.perf_counter()
        time.sleep(shard_seconds(index))
        monitor.emit("shard_done", index=index, frames=10, tokens=tokens, seconds=time.perf_counter() - t0,
                     device=device, resumed=False)


def run_workers(monitor, heartbeat, specs):
    monitor.emit("run_started", devices=[d for d, _, _ in specs])
    threads = [threading.Thread(target=fake_worker, args=(monitor, *spec)) for spec in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monitor.emit("run_finished", frames=0, seconds=0.0)
    heartbeat.stop()


def test_a_stuck_worker_is_named_with_its_shard():
    monitor, _, heartbeat = watched()
    # cuda:1 finishes three 10 ms shards, then hangs 0.6 s in shard 13 (limit: max(0.3, 5 x 10 ms))
    hang = lambda i: 0.6 if i == 13 else 0.01
    run_workers(monitor, heartbeat, [("cuda:0", lambda i: 0.01, range(0, 40)),
                                     ("cuda:1", hang, range(10, 14))])
    stalls = [w for w in monitor.warnings if "stalled" in w]
    assert len(stalls) == 1, monitor.warnings  # warned once, not at every tick
    assert "cuda:1" in stalls[0] and "shard 13" in stalls[0]


def test_a_long_shard_within_five_medians_is_not_a_stall():
    monitor, _, heartbeat = watched()
    # shards of 0.12 s: limit max(0.3, 5 x 0.12 = 0.6); a 0.45 s shard is slow but not stuck
    run_workers(monitor, heartbeat, [("cuda:0", lambda i: 0.45 if i == 3 else 0.12, range(4))])
    assert not [w for w in monitor.warnings if "stalled" in w], monitor.warnings


def test_a_slow_device_gets_an_imbalance_warning():
    monitor, _, heartbeat = watched()
    # same work per shard; cuda:2 takes 3x as long: ~33% of the median's tokens/s
    run_workers(monitor, heartbeat, [("cuda:0", lambda i: 0.02, range(30)),
                                     ("cuda:1", lambda i: 0.02, range(100, 130)),
                                     ("cuda:2", lambda i: 0.06, range(200, 210))])
    slow = [w for w in monitor.warnings if w.startswith("imbalance")]
    assert slow and all("cuda:2" in w for w in slow), monitor.warnings


def test_balanced_devices_get_no_warning():
    monitor, _, heartbeat = watched()
    run_workers(monitor, heartbeat, [("cuda:0", lambda i: 0.02, range(20)),
                                     ("cuda:1", lambda i: 0.022, range(100, 120))])
    assert monitor.warnings == []


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_a_device_busy_15_points_under_the_others_is_reported():
    clock = Clock()
    monitor = Monitor()
    watch = WorkerWatch(monitor, FAST, clock=clock)
    monitor.subscribe(watch)
    from virnucpro.monitoring.gpu import GpuSample

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
    clock = Clock()
    monitor = Monitor()
    watch = WorkerWatch(monitor, FAST, clock=clock)
    monitor.subscribe(watch)
    from virnucpro.monitoring.gpu import GpuSample

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
    clock = Clock()
    monitor = Monitor()
    monitor.subscribe(WorkerWatch(monitor, FAST, clock=clock, log_every=10.0))
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
