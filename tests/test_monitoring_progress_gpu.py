"""Progress estimates, the reader's byte position, and GPU sampling through a fake NVML."""

from __future__ import annotations

import gzip
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from virnucpro.monitoring.events import Event, Monitor
from virnucpro.monitoring.gpu import METRICS_NAME, GpuMetricsFile, GpuMonitor, nvml_indices
from virnucpro.monitoring.progress import PlainProgress, ProgressState
from virnucpro.stages.read import ReadPosition, read_records


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def shard_done(frames, tokens, resumed=False, device="cpu", index=0, seconds=1.0):
    return Event("shard_done", dict(index=index, frames=frames, tokens=tokens, seconds=seconds,
                                    device=device, resumed=resumed))


def test_progress_total_from_bytes_rate_from_computed_frames_only():
    clock = FakeClock()
    state = ProgressState(clock)
    state.update(Event("run_started"))
    # a quarter of the file read has given 1,000 frames: ~4,000 expected in all
    state.update(Event("input_progress", dict(bytes_read=250, bytes_total=1000, frames=1000, seconds=0.1)))
    assert state.expected_frames() == 4000
    state.update(shard_done(500, 50_000, resumed=True))  # from a checkpoint: no rate
    clock.now += 10
    state.update(shard_done(500, 50_000))
    assert state.frames_done == 1000
    assert state.rates() == pytest.approx((50.0, 5000.0))
    assert state.eta_seconds() == pytest.approx(3000 / 50.0)
    # reading finished: the total is exact, not an extrapolation
    state.update(Event("input_progress", dict(bytes_read=1000, bytes_total=1000, frames=3100, seconds=0.3)))
    assert state.expected_frames() == 3100


def test_plain_progress_logs_at_its_interval(virnucpro_log):
    clock = FakeClock()
    plain = PlainProgress(interval=60, clock=clock)
    plain(Event("run_started"))
    plain(Event("input_progress", dict(bytes_read=50, bytes_total=100, frames=200, seconds=0.1)))
    clock.now += 30
    plain(shard_done(100, 1000))
    assert not virnucpro_log.records  # too early
    clock.now += 31
    plain(Event("tick"))
    lines = [r.getMessage() for r in virnucpro_log.records]
    assert len(lines) == 1 and "100 / ~400 frames (25.0%)" in lines[0] and "ETA" in lines[0]


@pytest.mark.parametrize("compress", [False, True])
def test_read_position_follows_the_file(tmp_path, compress):
    # random bases, so gzip cannot shrink the file below its read buffers
    bases = np.frombuffer(b"ACGT", np.uint8)[np.random.default_rng(0).integers(0, 4, (3000, 1200))]
    text = b"".join(b">r%d\n%s\n" % (i, row.tobytes()) for i, row in enumerate(bases))
    path = tmp_path / ("in.fa.gz" if compress else "in.fa")
    path.write_bytes(gzip.compress(text, compresslevel=1) if compress else text)
    position = ReadPosition(path)
    seen = []
    for i, _ in enumerate(read_records(path, position)):
        if i % 250 == 0:
            seen.append(position.bytes_read())
    assert seen == sorted(seen) and 0 < seen[1] < seen[-1] < position.total
    assert position.bytes_read() == position.total == path.stat().st_size


# --------------------------------------------------------------------------- NVML


def fake_nvml(gpus: list[dict], fail_init: bool = False):
    """A stand-in for the pynvml module: the calls GpuMonitor makes, over `gpus`."""
    class NotSupported(Exception):
        pass

    def init():
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def power(handle):
        if gpus[handle]["power_mw"] is None:
            raise NotSupported("power")
        return gpus[handle]["power_mw"]

    return SimpleNamespace(
        nvmlInit=init, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: gpus[h]["name"].encode(),
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=gpus[h]["util"], memory=0),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=gpus[h]["used"], total=80 << 30, free=0),
        nvmlDeviceGetPowerUsage=power,
    )


GPUS = [dict(name="H200", util=97, used=40 << 30, power_mw=650_000),
        dict(name="H200", util=55, used=20 << 30, power_mw=None),
        dict(name="H200", util=0, used=0, power_mw=None)]  # not used by the run


def run_sampling(tmp_path, nvml, devices=("cuda:0", "cuda:1"), ticks=2):
    monitor = Monitor()
    samples = []
    monitor.subscribe(GpuMonitor(monitor, nvml=nvml, visible=None))
    monitor.subscribe(GpuMetricsFile())
    monitor.subscribe(lambda e: samples.append(e) if e.kind == "gpu_sample" else None)
    monitor.emit("run_started", result_dir=str(tmp_path), devices=list(devices))
    for _ in range(ticks):
        monitor.emit("tick")
    monitor.emit("run_finished", frames=0, seconds=1.0)
    return monitor, samples


def test_fake_nvml_samples_the_run_gpus_to_jsonl(tmp_path):
    monitor, samples = run_sampling(tmp_path, fake_nvml(GPUS))
    assert len(samples) == 3  # 2 ticks, and at the end
    rows = [json.loads(line) for line in (tmp_path / METRICS_NAME).read_text().splitlines()]
    assert len(rows) == 6 and {r["device"] for r in rows} == {"cuda:0", "cuda:1"}
    first = {r["device"]: r for r in rows[:2]}
    assert first["cuda:0"]["utilization"] == 97 and first["cuda:0"]["power_w"] == 650.0
    assert first["cuda:0"]["memory_used_mib"] == 40 * 1024 and first["cuda:0"]["memory_total_mib"] == 80 * 1024
    assert first["cuda:1"]["power_w"] is None  # not reported by the board: no crash, no number
    assert monitor.warnings == []


@pytest.mark.parametrize("how", ["init fails", "no module"])
def test_without_nvml_there_are_quietly_no_metrics(tmp_path, monkeypatch, how):
    if how == "no module":
        monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
        nvml = None
    else:
        nvml = fake_nvml(GPUS, fail_init=True)
    monitor, samples = run_sampling(tmp_path, nvml)
    assert samples == [] and not (tmp_path / METRICS_NAME).exists() and monitor.warnings == []


def test_cpu_runs_open_no_gpu(tmp_path):
    _, samples = run_sampling(tmp_path, fake_nvml(GPUS), devices=("cpu",))
    assert samples == [] and not (tmp_path / METRICS_NAME).exists()


def test_cuda_visible_devices_maps_to_nvml_indices():
    assert nvml_indices(["cuda:0", "cuda:1"], None) == {"cuda:0": 0, "cuda:1": 1}
    assert nvml_indices(["cuda:0", "cuda:1"], "3,1") == {"cuda:0": 3, "cuda:1": 1}
    assert nvml_indices(["cuda:0"], "GPU-1234abcd") == {}  # UUIDs: not guessed
    assert nvml_indices(["cpu"], None) == {}


def test_busy_during_embedding_excludes_loading_and_writing():
    """Mean busy % over the whole run counts model loading and the final writing; the
    embedding figure averages only the samples between the first shard start and the last
    shard done."""
    from virnucpro.monitoring.events import Event
    from virnucpro.monitoring.gpu import GpuSample
    from virnucpro.monitoring.summary import GpuTotals

    totals = GpuTotals()
    for t, busy in [(0.0, 0.0), (1.0, 0.0), (2.0, 96.0), (3.0, 98.0), (4.0, 100.0), (5.0, 10.0)]:
        sample = GpuSample("cuda:0", 0, "H200", busy, 1000.0, 143771.0, None)
        totals.add(Event("gpu_sample", {"samples": [sample]}, time=t))
    got = totals.as_dict(embedding=(1.5, 4.5))["cuda:0"]
    assert got["mean_busy_percent"] == round((96 + 98 + 100 + 10) / 6, 1)
    assert got["mean_busy_percent_embedding"] == 98.0
    assert totals.as_dict()["cuda:0"]["mean_busy_percent_embedding"] is None


def test_busy_after_first_shard_excludes_each_devices_own_start_up():
    """Devices finish their first (compiling) shard at different times; each one's steady
    figure starts at its own first finished shard, recorded by the run recorder."""
    from virnucpro.monitoring.events import Monitor
    from virnucpro.monitoring.gpu import GpuSample
    from virnucpro.monitoring.summary import RunRecorder
    from virnucpro.monitoring.workers import WorkerWatch

    monitor = Monitor()
    recorder = RunRecorder(monitor, WorkerWatch(monitor))
    monitor.subscribe(recorder)
    events = []  # (time, kind, data)
    for device, first_done in (("cuda:0", 2.0), ("cuda:1", 4.0)):
        events.append((0.5, "shard_started", dict(index=0 if device == "cuda:0" else 1, frames=1, tokens=10,
                                                  device=device)))
        events.append((first_done, "shard_done", dict(index=0 if device == "cuda:0" else 1, frames=1,
                                                      tokens=10, seconds=1.0, device=device, resumed=False)))
    for t in range(1, 9):
        busy = {"cuda:0": 0.0 if t < 2 else 99.0, "cuda:1": 0.0 if t < 4 else 97.0}
        events.append((float(t), "gpu_sample", dict(samples=[
            GpuSample(d, 0, "H200", b, 1.0, 2.0, None) for d, b in busy.items()])))
    events.append((8.5, "shard_done", dict(index=2, frames=1, tokens=10, seconds=1.0, device="cuda:0",
                                           resumed=False)))
    from virnucpro.monitoring.events import Event

    for t, kind, data in sorted(events, key=lambda e: e[0]):
        recorder(Event(kind, data, time=t))
    gpu = recorder.build({"seconds": 9.0})["gpu"]
    assert gpu["cuda:0"]["mean_busy_percent_after_first_shard"] == 99.0
    assert gpu["cuda:1"]["mean_busy_percent_after_first_shard"] == 97.0
    assert gpu["cuda:1"]["mean_busy_percent_embedding"] < 80  # its start-up is in that one


def test_gpu_lines_in_the_log_once_a_minute(virnucpro_log):
    """Samples every 10 s go to gpu_metrics.jsonl; the log gets each GPU once a minute."""
    from virnucpro.monitoring import GpuLogLines
    from virnucpro.monitoring.events import Event
    from virnucpro.monitoring.gpu import GpuSample

    lines = GpuLogLines(every=60.0)
    for t in range(0, 130, 10):
        samples = [GpuSample(f"cuda:{i}", i, "H200", 90.0, 1024.0, 2048.0, None) for i in range(2)]
        lines(Event("gpu_sample", {"samples": samples}, time=1000.0 + t))
    logged = [r.getMessage() for r in virnucpro_log.records]
    assert logged == ["gpu cuda:0: 90% busy, memory 1.0/2.0 GiB", "gpu cuda:1: 90% busy, memory 1.0/2.0 GiB"] * 3
