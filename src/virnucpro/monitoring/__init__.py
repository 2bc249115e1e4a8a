"""Subscribers that watch a run: progress, GPU sampling, per-device throughput, stall and
imbalance warnings, the run summary and report. `attach` wires them to a Monitor."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from virnucpro.monitoring.events import Event, Monitor
from virnucpro.monitoring.gpu import GpuMetricsFile, GpuMonitor, gpu_log_line
from virnucpro.monitoring.heartbeat import Heartbeat
from virnucpro.monitoring.progress import PlainProgress, RichProgress
from virnucpro.monitoring.report import ReportOnFinish
from virnucpro.monitoring.summary import RunRecorder
from virnucpro.monitoring.workers import Thresholds, WorkerWatch

log = logging.getLogger("virnucpro")
DEVICE_LOG_INTERVAL = 60.0  # seconds between per-device lines in the log, by default


@dataclass(frozen=True)
class MonitorOptions:
    interval: float = 10.0  # seconds between GPU samples, throughput lines and stall checks
    progress: str = "lines"  # "bar" (a terminal), "lines" (a batch job's log) or "off"
    progress_interval: float = 60.0  # seconds between plain progress lines
    # seconds between per-device lines (GPU use, throughput) in the log: a batch log of a
    # long run on 8 GPUs at every 10 s sample would be mostly these lines
    device_log_interval: float = DEVICE_LOG_INTERVAL
    report_sequences: int | None = 5  # sequences drawn in report.html; None: no report
    thresholds: Thresholds = field(default_factory=Thresholds)
    nvml: object = None  # an NVML module stand-in (tests); None: import pynvml


class Session:
    """The attached subscribers; `close()` stops the background thread and NVML even when
    the run failed before run_finished."""

    def __init__(self, heartbeat: Heartbeat, closers: list):
        self.heartbeat = heartbeat
        self._closers = closers

    def close(self) -> None:
        self.heartbeat.stop()
        for close in self._closers:
            close()


class GpuLogLines:
    """Subscriber: each GPU's use in the log, from the samples, at most every `every` s."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last: float | None = None

    def __call__(self, event: Event) -> None:
        if event.kind != "gpu_sample" or (self._last is not None and event.time - self._last < self.every):
            return
        self._last = event.time
        for line in gpu_log_line(event):
            log.info(line)


def attach(monitor: Monitor, options: MonitorOptions = MonitorOptions()) -> Session:
    heartbeat = Heartbeat(monitor, options.interval)
    gpu = GpuMonitor(monitor, nvml=options.nvml)
    metrics_file = GpuMetricsFile()
    watch = WorkerWatch(monitor, options.thresholds, log_every=options.device_log_interval)
    closers = [gpu.close, metrics_file.close]
    if options.progress == "bar":
        bar = RichProgress()
        monitor.subscribe(bar)
        closers.insert(0, bar.stop)
    elif options.progress == "lines":
        monitor.subscribe(PlainProgress(options.progress_interval))
    # The report after the recorder: it reads the run summary.
    subscribers = [gpu, metrics_file, GpuLogLines(options.device_log_interval), watch, RunRecorder(monitor, watch),
                   ReportOnFinish(options.report_sequences)]
    for subscriber in (*subscribers, heartbeat):
        monitor.subscribe(subscriber)
    return Session(heartbeat, closers)
