"""GPU samples through NVML (nvidia-ml-py, imported as `pynvml`): utilisation, memory, power.

NVML reads the driver's counters; it does not create a CUDA context, so sampling in the
parent process is safe before workers start. Without the library, a driver or GPUs, sampling
is simply off: no samples, no file, no warning (a CPU run is not a problem to report).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from virnucpro.errors import OutputError
from virnucpro.layout import METRICS_NAME, open_new, remove_quietly, write_text_atomic
from virnucpro.monitoring.events import Event, Monitor

log = logging.getLogger("virnucpro")
_MIB = 1 << 20


@dataclass(frozen=True)
class GpuSample:
    device: str  # the run's name for it, e.g. "cuda:0"
    nvml_index: int
    name: str
    utilization: float  # % of the last sample period with a kernel running
    memory_used_mib: float
    memory_total_mib: float
    power_w: float | None  # None where the board does not report it


def nvml_indices(devices: list[str], visible: str | None) -> dict[str, int]:
    """Map the run's CUDA devices to NVML indices. CUDA numbers the GPUs it can see;
    NVML numbers all of them, so cuda:k is the k-th entry of CUDA_VISIBLE_DEVICES when that
    lists plain indices. (UUID lists are not resolved: those GPUs are left unsampled.)"""
    cuda = [d for d in devices if d.startswith("cuda")]
    order: list[int] | None = None
    if visible is not None:
        try:
            order = [int(part) for part in visible.split(",") if part.strip()]
        except ValueError:
            return {}
    mapping = {}
    for device in cuda:
        k = int(device.partition(":")[2] or 0)
        if order is None:
            mapping[device] = k
        elif k < len(order):
            mapping[device] = order[k]
    return mapping


class NvmlSampler:
    """Open NVML for some GPUs; `sample()` reads them all. `open` returns None when NVML
    or the GPUs are not there."""

    def __init__(self, nvml: Any, handles: dict[str, tuple[int, Any, str]]):
        self._nvml = nvml
        self._handles = handles  # device -> (nvml index, handle, product name)

    @classmethod
    def open(cls, devices: dict[str, int], nvml: Any = None) -> NvmlSampler | None:
        if not devices:
            return None
        try:
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.debug("no GPU metrics: NVML unavailable (%s)", exc)
            return None
        handles = {}
        try:
            for device, index in devices.items():
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                handles[device] = (index, handle, name.decode() if isinstance(name, bytes) else str(name))
        except Exception as exc:  # noqa: BLE001
            log.debug("no GPU metrics: %s", exc)
            nvml.nvmlShutdown()
            return None
        return cls(nvml, handles)

    def sample(self) -> list[GpuSample]:
        samples = []
        for device, (index, handle, name) in self._handles.items():
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # noqa: BLE001 - a GPU fallen off the bus must not stop the run
                log.debug("GPU %s not sampled: %s", device, exc)
                continue
            try:
                power = self._nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # milliwatts
            except Exception:  # noqa: BLE001
                power = None
            samples.append(GpuSample(device, index, name, float(util.gpu), mem.used / _MIB,
                                     mem.total / _MIB, power))
        return samples

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


class GpuMonitor:
    """Subscriber: on each tick, sample the run's GPUs and emit gpu_sample{samples, elapsed}."""

    def __init__(self, monitor: Monitor, nvml: Any = None, visible: str | None = None):
        self._monitor = monitor
        self._nvml = nvml
        # Read at construction, at the edge of the program, not deep inside a run.
        self._visible = visible if visible is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
        self._sampler: NvmlSampler | None = None
        self._start = 0.0

    def __call__(self, event: Event) -> None:
        if event.kind == "run_started":
            self._start = event.time
            # the first sample waits for the first tick: emitted from inside run_started, it
            # would reach subscribers that have not seen run_started yet
            self._sampler = NvmlSampler.open(nvml_indices(event.data.get("devices", []), self._visible),
                                             self._nvml)
        elif event.kind == "tick":
            self._emit(event.time)
        elif event.kind == "run_finished":
            self._emit(event.time)
            self.close()

    def _emit(self, now: float) -> None:
        if self._sampler is not None:
            samples = self._sampler.sample()
            if samples:
                self._monitor.emit("gpu_sample", samples=samples, elapsed=now - self._start)

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None


class GpuMetricsFile:
    """Subscriber: append each GPU sample as one JSON line to gpu_metrics.jsonl in the
    result folder (created at the first sample, so CPU runs leave no empty file)."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._handle = None
        self._closed = False
        self.failure: str | None = None

    def __call__(self, event: Event) -> None:
        if event.kind == "run_started":
            self._path = Path(event.data["result_dir"]) / METRICS_NAME
            remove_quietly(self._path)  # an earlier run's; this run's samples replace it, if any
        elif event.kind == "gpu_sample" and self._path is not None and not self._closed:
            try:
                self._write(event)
            except OSError as exc:  # on the sampling thread: reported when the run ends
                self.failure = self.failure or f"cannot write {self._path}: {exc.strerror or exc}"
                self.close()
        elif event.kind == "run_finished":
            self.close()
            if self.failure:
                raise OutputError(self.failure)

    def _write(self, event: Event) -> None:
        if self._handle is None:
            self._handle = open_new(self._path)
        for s in event.data["samples"]:
            row = {"time": round(event.time, 3), "elapsed": round(event.data["elapsed"], 3), **asdict(s)}
            self._handle.write(json.dumps(row) + "\n")
        self._handle.flush()  # a crashed run keeps what it had sampled

    def close(self) -> None:
        self._closed = True  # a sample arriving after the end must not reopen (and truncate) it
        if self._handle is not None:
            with suppress(OSError):
                self._handle.close()
            self._handle = None


def gpu_log_line(event: Event) -> list[str]:
    lines = []
    for s in event.data["samples"]:
        power = f", {s.power_w:.0f} W" if s.power_w is not None else ""
        lines.append(f"gpu {s.device}: {s.utilization:.0f}% busy, memory "
                     f"{s.memory_used_mib / 1024:.1f}/{s.memory_total_mib / 1024:.1f} GiB{power}")
    return lines


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def merge_metrics(sources: list[tuple[str, Path]], out: Path) -> None:
    """Several runs' gpu_metrics.jsonl (the parts of a merge, each named by `label`) as one
    file, each device renamed "LABEL: DEVICE": two parts may each have had a cuda:0. Each
    part's timeline keeps its own start (`elapsed`). No samples at all: no file."""
    rows = [json.dumps({**row, "device": f"{label}: {row['device']}"})
            for label, path in sources for row in read_metrics(path)]
    if rows:
        write_text_atomic(out, "\n".join(rows) + "\n", fsync=False)
