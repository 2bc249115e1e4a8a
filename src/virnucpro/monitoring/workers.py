"""Per-device throughput, and the watchdog for stalled and lagging workers.

Workers are known only by the `device` field of their shard_started / shard_done events, so
any number of devices (and events from several worker processes, relayed by the scheduler)
are handled alike. Checks run on ticks from the heartbeat thread, so a worker stuck inside a
shard is noticed even when the main thread is that worker.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from virnucpro.monitoring.events import Event, Monitor

log = logging.getLogger("virnucpro")


@dataclass(frozen=True)
class Thresholds:
    """When to warn. Defaults are the issue's; tests shrink them to run in seconds."""

    stall_min_seconds: float = 60.0  # a worker is stalled after max(this, factor x median shard)
    stall_factor: float = 5.0
    slow_fraction: float = 0.70  # throughput under this share of the median device
    busy_gap_points: float = 15.0  # busy % this far under the median of the other devices
    min_shards: int = 3  # computed shards per device before its throughput is judged
    busy_samples: int = 30  # the imbalance check judges the latest this many GPU samples
    min_busy_samples: int = 3  # ... and only devices with at least this many


@dataclass
class DeviceStats:
    device: str
    frames: int = 0
    tokens: int = 0
    shards: int = 0
    resumed_shards: int = 0
    busy_seconds: float = 0.0  # inside computed shards
    first_start: float | None = None
    last_done: float | None = None
    durations: list[float] = field(default_factory=list)
    running: dict[int, float] = field(default_factory=dict)  # shard index -> start time
    window: tuple[int, int] = (0, 0)  # (frames, tokens) at the last periodic line
    gpu_busy: list[float] = field(default_factory=list)  # NVML utilisation since the first shard started
    working_from: int | None = None  # index into gpu_busy of the first sample after the first shard finished

    def rates(self) -> tuple[float, float]:
        """(frames/s, tokens/s) over completed work: first shard start to last shard end.
        Ending at 'now' would charge a half-done shard as lost time and call a healthy
        device slow early on; a device that stops finishing shards is the stall check's job."""
        if self.first_start is None or self.last_done is None:
            return 0.0, 0.0
        span = max(self.last_done - self.first_start, 1e-9)
        return self.frames / span, self.tokens / span

    def busy_percent(self, now: float) -> float | None:
        """GPU busy from NVML when sampled; else the share of time the worker was in a shard
        (the shard running now counts as busy)."""
        if self.gpu_busy:
            return statistics.fmean(self.gpu_busy)
        if self.first_start is None:
            return None
        busy = self.busy_seconds + sum(now - start for start in self.running.values())
        return 100.0 * min(busy / max(now - self.first_start, 1e-9), 1.0)


class WorkerWatch:
    """Subscriber: tracks each device; on ticks logs throughput and warns about stalls and
    imbalance (each condition once per device and shard, not at every tick)."""

    def __init__(self, monitor: Monitor, thresholds: Thresholds = Thresholds(),
                 clock: Callable[[], float] = time.monotonic, log_every: float = 60.0):
        """log_every: seconds between throughput lines in the log (checks run at every tick)."""
        self._monitor = monitor
        self.thresholds = thresholds
        self._clock = clock
        self.log_every = log_every
        self.devices: dict[str, DeviceStats] = {}
        self._last_tick = clock()  # the last throughput line (or the run's start)
        self._warned: set[tuple[str, str, int]] = set()

    def stats(self, device: str) -> DeviceStats:
        if device not in self.devices:
            self.devices[device] = DeviceStats(device)
        return self.devices[device]

    def __call__(self, event: Event) -> None:
        now, d = self._clock(), event.data
        if event.kind == "run_started":
            self._last_tick = now
        elif event.kind == "shard_started":
            s = self.stats(d["device"])
            s.running[d["index"]] = now
            if s.first_start is None:
                s.first_start = now
        elif event.kind == "shard_done" and d.get("device") is not None:  # None: from the checkpoint
            self._shard_done(self.stats(d["device"]), d, now)
        elif event.kind == "gpu_sample":
            for sample in d["samples"]:
                s = self.stats(sample.device)
                # Before its first shard a device is loading models, not idling; during it,
                # compiling. Devices start at different moments, so counting those samples
                # called a device that started a few seconds late "idle" (seen on two H200s).
                if s.first_start is not None:
                    s.gpu_busy.append(sample.utilization)
        elif event.kind == "tick":
            if now - self._last_tick >= self.log_every:
                self._log_throughput(now)
            self.check(now)

    def _shard_done(self, s: DeviceStats, d: dict, now: float) -> None:
        s.running.pop(d["index"], None)
        if d.get("resumed"):  # from the checkpoint: no work was done, keep it out of rates
            s.resumed_shards += 1
            return
        if s.first_start is None:  # no shard_started seen (an engine that does not send it)
            s.first_start = now - d["seconds"]
        s.frames += d["frames"]
        s.tokens += d["tokens"]
        s.shards += 1
        s.busy_seconds += d["seconds"]
        s.durations.append(d["seconds"])
        if s.working_from is None:  # its first finished shard: start-up is over
            s.working_from = len(s.gpu_busy)
        s.last_done = now

    def _log_throughput(self, now: float) -> None:
        span = max(now - self._last_tick, 1e-9)
        self._last_tick = now
        for s in self.devices.values():
            frames, tokens = s.frames - s.window[0], s.tokens - s.window[1]
            s.window = (s.frames, s.tokens)
            busy = s.busy_percent(now)
            log.info(f"device {s.device}: {frames / span:,.0f} frames/s, {tokens / span:,.0f} tokens/s "
                     f"(last {span:.3g} s); {s.shards} shard(s) done"
                     + (f", busy {busy:.0f}%" if busy is not None else ""))

    def check(self, now: float) -> None:
        for s in self.devices.values():
            self._check_stall(s, now)
        self._check_imbalance(now)

    def _warn_once(self, key: tuple[str, str, int], message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._monitor.warn(message)

    def _check_stall(self, s: DeviceStats, now: float) -> None:
        if not s.running:
            return
        index, started = min(s.running.items(), key=lambda item: item[1])
        since = max(started, s.last_done or started)
        median = statistics.median(s.durations) if s.durations else 0.0
        limit = max(self.thresholds.stall_min_seconds, self.thresholds.stall_factor * median)
        if now - since > limit:
            self._warn_once((s.device, "stall", index),
                            f"worker on {s.device} looks stalled: shard {index} running for "
                            f"{now - started:.0f} s with no shard finished for {now - since:.0f} s "
                            f"(limit {limit:.0f} s)")

    def _check_imbalance(self, now: float) -> None:
        judged = [s for s in self.devices.values() if s.shards >= self.thresholds.min_shards]
        if len(judged) < 2:
            return
        tokens_rate = {s.device: s.rates()[1] for s in judged}
        median = statistics.median(tokens_rate.values())
        for s in judged:
            if tokens_rate[s.device] < self.thresholds.slow_fraction * median:
                self._warn_once((s.device, "slow", 0),
                                f"imbalance: {s.device} runs at {tokens_rate[s.device]:,.0f} tokens/s, "
                                f"{100 * tokens_rate[s.device] / median:.0f}% of the median device "
                                f"({median:,.0f} tokens/s)")
        busy = {s.device: self._recent_busy(s, now) for s in judged}
        for s in judged:
            others = [b for dev, b in busy.items() if dev != s.device and b is not None]
            mine = busy[s.device]
            if mine is not None and others and mine < statistics.median(others) - self.thresholds.busy_gap_points:
                self._warn_once((s.device, "idle", 0),
                                f"imbalance: {s.device} has been busy {mine:.0f}% of the time lately, "
                                f"the other devices {statistics.median(others):.0f}%")

    def _recent_busy(self, s: DeviceStats, now: float) -> float | None:
        """Busy % over the latest samples since the device's first finished shard (a long
        run's early hours must not hide a device that went idle later); without NVML, the
        share of time in shards."""
        if not s.gpu_busy:
            return s.busy_percent(now)
        working = s.gpu_busy[s.working_from:] if s.working_from is not None else []
        recent = working[-self.thresholds.busy_samples:]
        return statistics.fmean(recent) if len(recent) >= self.thresholds.min_busy_samples else None

    def summary(self, now: float | None = None) -> dict[str, dict]:
        now = self._clock() if now is None else now
        out = {}
        for device, s in sorted(self.devices.items()):
            frames_rate, tokens_rate = s.rates()
            busy = s.busy_percent(now)
            out[device] = {
                "frames": s.frames, "tokens": s.tokens, "shards": s.shards,
                "resumed_shards": s.resumed_shards, "busy_seconds": round(s.busy_seconds, 3),
                "frames_per_s": round(frames_rate, 2), "tokens_per_s": round(tokens_rate, 1),
                "busy_percent": None if busy is None else round(busy, 1),
                "median_shard_seconds": round(statistics.median(s.durations), 3) if s.durations else None,
            }
        return out
