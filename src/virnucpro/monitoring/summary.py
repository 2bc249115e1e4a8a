"""The end-of-run account: `run_summary.json` in the result folder and a few lines on stderr
(report.html is drawn from it afterwards, by monitoring/report.py).

Built only from events, so it describes what the run did, whichever engine ran it.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from virnucpro import __version__
from virnucpro.config import identity_detail
from virnucpro.errors import CheckpointMismatch
from virnucpro.layout import STDIN_LABEL, SUMMARY_NAME, write_text_atomic
from virnucpro.monitoring.events import Event, Monitor
from virnucpro.monitoring.workers import WorkerWatch

log = logging.getLogger("virnucpro")
SUMMARY_FORMAT = 1


def model_entry(identity: str) -> dict:
    """'path|sha256:...' or 'path|size:..|mtime_ns:..' (config.file_identity), a bare
    folder hash, or 'demo' -> {identity, path, hash}."""
    path, _, rest = identity.partition("|")
    if not rest:
        return {"identity": identity, "path": None, "hash": None if identity == "demo" else identity}
    digest = rest.removeprefix("sha256:") if rest.startswith("sha256:") else None
    return {"identity": identity, "path": path, "hash": digest}


class GpuTotals:
    """Mean busy %, mean power and peak memory per device, from gpu_sample events."""

    def __init__(self) -> None:
        self.busy: dict[str, list[float]] = {}
        self.timed_busy: dict[str, list[tuple[float, float]]] = {}  # device -> (time, busy %)
        self.power: dict[str, list[float]] = {}
        self.peak_mib: dict[str, float] = {}
        self.total_mib: dict[str, float] = {}
        self.names: dict[str, str] = {}

    def add(self, event: Event) -> None:
        for s in event.data["samples"]:
            self.busy.setdefault(s.device, []).append(s.utilization)
            self.timed_busy.setdefault(s.device, []).append((event.time, s.utilization))
            if s.power_w is not None:
                self.power.setdefault(s.device, []).append(s.power_w)
            self.peak_mib[s.device] = max(self.peak_mib.get(s.device, 0.0), s.memory_used_mib)
            self.total_mib[s.device] = s.memory_total_mib
            self.names[s.device] = s.name

    def as_dict(self, embedding: tuple[float, float] | None = None,
                first_done: dict[str, float] | None = None) -> dict[str, dict]:
        """embedding: (first shard started, last shard done); model loading and the final
        writing then stay out of `mean_busy_percent_embedding`. first_done: when each device
        finished its first shard; from then on (`mean_busy_percent_after_first_shard`) its
        start-up -- loading, and compiling inside the first shard -- is out too."""
        first_done = first_done or {}
        return {
            device: {
                "name": self.names[device], "samples": len(busy),
                "mean_busy_percent": round(statistics.fmean(busy), 1),
                "mean_busy_percent_embedding": self._window_mean(device, embedding),
                "mean_busy_percent_after_first_shard": self._window_mean(
                    device, (first_done[device], embedding[1]) if device in first_done and embedding else None),
                "peak_memory_mib": round(self.peak_mib[device], 1),
                "memory_total_mib": round(self.total_mib[device], 1),
                "mean_power_w": round(statistics.fmean(self.power[device]), 1) if device in self.power else None,
            }
            for device, busy in sorted(self.busy.items())
        }

    def _window_mean(self, device: str, window: tuple[float, float] | None) -> float | None:
        if window is None:
            return None
        inside = [b for t, b in self.timed_busy.get(device, []) if window[0] <= t <= window[1]]
        return round(statistics.fmean(inside), 1) if inside else None


class RunRecorder:
    """Subscriber: collects the run's facts; at run_finished writes run_summary.json and logs
    a short human summary."""

    def __init__(self, monitor: Monitor, watch: WorkerWatch):
        self._monitor = monitor
        self._watch = watch
        self._started: dict = {}
        self._start_time = 0.0
        self.stages: dict[str, float] = {}
        self.frames = self.tokens = 0  # every shard of the result, resumed ones too
        self.resumed_frames = self.resumed_shards = 0  # from an earlier run's checkpoints
        self.sequences: dict[str, int] = {}  # per-sequence calls: records, virus, others, no_frames, skipped
        self.batches_halved = 0  # after running out of device memory
        self.shards_redone_in_fp32 = 0  # DNABERT-S overflowed fp16
        self.gpu = GpuTotals()
        self.summary: dict | None = None
        self._embedding_start = 0.0  # first shard started
        self._embedding_end = 0.0  # last shard done
        self._first_done: dict[str, float] = {}  # device -> its first computed shard done
        self.startup: dict[str, dict] = {}  # device -> seconds per start-up phase
        self.parts: list[dict] = []  # a merge's parts: {part, folder, summary (theirs, or None)}

    def __call__(self, event: Event) -> None:
        d = event.data
        if event.kind == "run_started":
            self._started, self._start_time = dict(d), event.time
        elif event.kind == "stage_done":
            self.stages[d["name"]] = self.stages.get(d["name"], 0.0) + d["seconds"]
        elif event.kind == "input_progress":
            # CPU time of reading, chunking and translating; it overlaps the predict stage
            self.stages["read, chunk, translate (within predict)"] = d["seconds"]
        elif event.kind == "shard_started":
            self._embedding_start = self._embedding_start or event.time
        elif event.kind == "shard_done":
            self.frames += d["frames"]
            self.tokens += d["tokens"]
            if d.get("resumed"):
                self.resumed_frames += d["frames"]
                self.resumed_shards += 1
            else:
                self._embedding_end = event.time
                self._first_done.setdefault(d["device"], event.time)
                self.batches_halved += d.get("batches_halved", 0)
                self.shards_redone_in_fp32 += bool(d.get("redone_in_fp32"))
        elif event.kind == "gpu_sample":
            self.gpu.add(event)
        elif event.kind == "sequences_called":
            self.sequences = dict(d)
        elif event.kind == "parts_merged":
            self.parts = list(d["parts"])
        elif event.kind == "device_ready":
            # a device's first start; a worker restarted after a crash starts again
            self.startup.setdefault(d["device"], dict(d["startup_s"]))
        elif event.kind == "run_finished":
            self.stages["predict and write"] = event.time - self._start_time
            self._finish(d)

    def _embedding_window(self) -> tuple[float, float] | None:
        if self._embedding_start and self._embedding_end > self._embedding_start:
            return self._embedding_start, self._embedding_end
        return None

    def build(self, finished: dict) -> dict:
        import torch

        s = self._started
        summary = {
            "format": SUMMARY_FORMAT,
            "versions": {"virnucpro": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "host": platform.node(),
            "command": sys.argv[1:],
            "input": s.get("input"),
            "input_source": s.get("input_source"),  # the input's resolved path; standard input: its content hash
            "result_dir": s.get("result_dir"),
            "parameters": s.get("parameters", {}),
            "devices": s.get("devices", []),
            "dtype": s.get("dtype"),
            "models": {name: model_entry(ident) for name, ident in s.get("models", {}).items()},
            "wall_seconds": round(finished.get("seconds", 0.0), 3),
            "stage_seconds": {name: round(v, 3) for name, v in self.stages.items()},
            "startup_seconds_per_device": self.startup,
            "sequences": self.sequences,
            "frames": self.frames,
            "tokens": self.tokens,
            "resumed_shards": self.resumed_shards,
            "resumed_frames": self.resumed_frames,
            "batches_halved_after_out_of_memory": self.batches_halved,
            "shards_redone_in_fp32": self.shards_redone_in_fp32,
            "throughput_per_device": self._watch.summary(),
            "gpu": self.gpu.as_dict(self._embedding_window(), self._first_done),
            "warnings": list(self._monitor.warnings),
        }
        return fold_parts(summary, self.parts) if self.parts else summary

    def _finish(self, finished: dict) -> None:
        self.summary = self.build(finished)
        write_text_atomic(Path(self.summary["result_dir"]) / SUMMARY_NAME,
                          json.dumps(self.summary, indent=2) + "\n", fsync=False)
        for line in human_summary(self.summary):
            log.info(line)


def refuse_another_input(result_dir: Path, source: str, *, force: bool, warn: Callable[[str], None]) -> None:
    """A run never silently replaces the results of another input: `result_dir`'s
    run_summary.json names the input they are of (its input_source: a resolved path, or
    standard input's content hash). Results without one (the original's, an older
    virnucpro's) cannot tell, and are replaced as before. force: replace them, with a warning."""
    earlier = recorded_input(result_dir)
    if earlier is None or earlier == source:
        return
    if not force:
        raise CheckpointMismatch(
            f"{result_dir} holds the results of another input, {_source_shown(earlier)}; this run's input is "
            f"{_source_shown(source)}. Give another output folder (-o DIR), or --force to replace them")
    warn(f"replacing the results of {_source_shown(earlier)} in {result_dir} (--force)")


def _source_shown(source: str) -> str:
    """A path as it is; standard input's 'standard input|sha256:...' as a person reads it."""
    return identity_detail(source) if source.startswith(f"{STDIN_LABEL}|") else source


def recorded_input(result_dir: Path) -> str | None:
    """The input the results in `result_dir` are of (run_summary.json's input_source); None
    when there is no summary or it does not say (the original's results, an older run's)."""
    try:
        summary = json.loads((Path(result_dir) / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    source = summary.get("input_source") if isinstance(summary, dict) else None
    return source if isinstance(source, str) else None


# What each part's account adds up to in a merge's.
_SUMMED = ("resumed_shards", "resumed_frames", "batches_halved_after_out_of_memory", "shards_redone_in_fp32")
_PER_DEVICE = ("throughput_per_device", "gpu", "startup_seconds_per_device")


def fold_parts(merged: dict, parts: list[dict]) -> dict:
    """A merge's account with its parts' folded in: each part's own account, in brief, under
    "parts"; each part's devices, named "part K/N: DEVICE" (two parts may each have had a
    cuda:0), in the per-device tables the report draws; each part's wall time as a stage;
    its warnings, named; and the counts that add up. A part without an account is listed
    as such."""
    merged = {**merged, "devices": [], "parts": [], "stage_seconds": dict(merged["stage_seconds"]),
              "warnings": list(merged["warnings"]), **{key: {} for key in _PER_DEVICE}, **dict.fromkeys(_SUMMED, 0)}
    for part in parts:
        label, theirs = f"part {part['part']}", part.get("summary")
        if theirs is None:
            merged["parts"].append({"part": part["part"], "folder": part["folder"], "summary": None})
            continue
        merged["parts"].append({"part": part["part"], "folder": part["folder"], "host": theirs.get("host"),
                                "devices": theirs.get("devices", []), "wall_seconds": theirs.get("wall_seconds"),
                                "frames": theirs.get("frames"), "tokens": theirs.get("tokens"),
                                "resumed_shards": theirs.get("resumed_shards", 0)})
        merged["devices"] += [f"{label}: {device}" for device in theirs.get("devices", [])]
        for key in _PER_DEVICE:
            merged[key].update({f"{label}: {device}": value for device, value in theirs.get(key, {}).items()})
        for key in _SUMMED:
            merged[key] += theirs.get(key, 0)
        merged["stage_seconds"][f"{label} on {theirs.get('host')} (its wall time)"] = theirs.get("wall_seconds", 0.0)
        merged["warnings"] += [f"{label}: {warning}" for warning in theirs.get("warnings", [])]
    return merged


def human_summary(summary: dict) -> list[str]:
    resumed = (f" ({summary['resumed_frames']:,} of them from {summary['resumed_shards']} checkpointed "
               "shard(s) of an earlier run)" if summary.get("resumed_shards") else "")
    lines = [f"summary: {summary['frames']:,} frames, {summary['tokens']:,} tokens in "
             f"{summary['wall_seconds']:.1f} s on {', '.join(summary['devices'])}{resumed}"]
    stages = ", ".join(f"{name} {sec:.1f} s" for name, sec in summary["stage_seconds"].items())
    lines.append(f"summary: stages: {stages}")
    for device, t in summary["throughput_per_device"].items():
        gpu = summary["gpu"].get(device)
        busy = ""
        if gpu:
            during, steady = gpu["mean_busy_percent_embedding"], gpu.get("mean_busy_percent_after_first_shard")
            after = f", {steady:.0f}% after its first shard" if steady is not None else ""
            busy = (f", GPU busy {during:.0f}% while embedding ({gpu['mean_busy_percent']:.0f}% overall{after})"
                    if during is not None else f", GPU busy {gpu['mean_busy_percent']:.0f}%")
        extra = f"{busy}, peak memory {gpu['peak_memory_mib'] / 1024:.1f} GiB" if gpu else ""
        lines.append(f"summary: {device}: {t['frames_per_s']:,.0f} frames/s, "
                     f"{t['tokens_per_s']:,.0f} tokens/s{extra}")
    if summary["warnings"]:
        lines.append(f"summary: {len(summary['warnings'])} warning(s), listed in run_summary.json")
    return lines
