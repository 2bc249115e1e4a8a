"""The workers a run uses: one per device, each loading the models once, serving one run or
every sample of a sheet; and what they report, turned into the run's events and stored shards."""

from __future__ import annotations

import dataclasses
import functools

import torch

from virnucpro.config import RunConfig
from virnucpro.engine.devices import resolve_devices
from virnucpro.engine.scheduler import DeviceReady, Engine, EngineEvent, JobDone, JobStarted
from virnucpro.errors import CheckpointMismatch, WorkerFailed
from virnucpro.monitoring.events import Monitor
from virnucpro.pipeline.common import TaskFactory
from virnucpro.predict.precision import check_one_device_kind
from virnucpro.predict.task import DeviceInfo
from virnucpro.store import ShardStore


class Workers:
    """One worker per device, each loading the models once, serving one run or every sample
    of a sheet in turn. Launched by the first run that needs them, after that run's own checks
    (a refused run loads nothing)."""

    def __init__(self, task_factory: TaskFactory) -> None:
        self.task_factory = task_factory
        self.events = _EngineEvents()
        self.engine: Engine | None = None
        self.devices: list[torch.device] = []
        self._info: DeviceInfo | None = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.engine is not None:
            self.engine.__exit__(exc_type, exc, tb)

    def devices_for(self, config: RunConfig) -> list[torch.device]:
        """The devices, resolved once (the samples of a sheet share them), checked against
        this run's precision."""
        if not self.devices:
            self.devices = resolve_devices(config.devices)
        check_one_device_kind(self.devices, config.precision, config.reference)
        return self.devices

    def pinned(self, config: RunConfig, stored: dict | None) -> RunConfig:
        """`config` with, on a resume, the batch budget its stored shards were computed with
        (batch composition can move a score's last digit), whatever the devices would choose
        now. Workers already serving an earlier sample keep theirs: a sample stored with
        another budget is refused, to be resumed alone."""
        budget = stored.get("batch_tokens") if stored else None
        if config.batch_tokens is not None or not budget:
            return config
        if self.engine is not None and self.ready().batch_tokens != budget:
            raise CheckpointMismatch(
                f"{config.result_dir}: its stored shards were computed in batches of {budget} tokens, these "
                f"workers use {self.ready().batch_tokens}; run this sample alone to resume it, or with --restart")
        return dataclasses.replace(config, batch_tokens=budget)

    def launch(self, config: RunConfig, monitor: Monitor, cpu_threads: int) -> None:
        """Start loading the models on every device (the first run only); the workers' events
        now go to this run's monitor."""
        self.events.monitor = monitor
        if self.engine is None:
            self.engine = Engine(functools.partial(self.task_factory, config), self.devices, on_event=self.events,
                                 warn=lambda message: self.events.monitor.warn(message), cpu_threads=cpu_threads)
            self.engine.launch()

    def ready(self) -> DeviceInfo:
        """The first device's models, once loaded (waited for once)."""
        if self._info is None:
            self._info = self.engine.wait_ready()
        return self._info

    def settle(self) -> None:
        """After a run that failed midway: let the shards in flight finish, for the next run."""
        if self.engine is not None:
            self.engine.settle()


class _EngineEvents:
    """What the engine reports, turned into the run's events: each device's start-up (checked
    against the first device's models and precision), each shard started, and each result,
    saved to the store the moment it arrives, whatever its place in the output order."""

    def __init__(self) -> None:
        self.monitor: Monitor | None = None  # the current run's
        self.store: ShardStore | None = None  # open once the models are known
        self._first: DeviceInfo | None = None

    def __call__(self, event: EngineEvent) -> None:
        if isinstance(event, DeviceReady):
            self._ready(event)
        elif isinstance(event, JobStarted):
            self.monitor.emit("shard_started", index=event.job.payload.index, frames=event.job.size,
                              tokens=event.job.cost, device=event.device)
        elif isinstance(event, JobDone):
            self.store.save_later(event.result)
            self.monitor.emit("shard_done", index=event.result.index, frames=event.job.size,
                              tokens=event.job.cost, seconds=event.seconds, device=event.device,
                              resumed=False, batches_halved=event.result.batches_halved,
                              redone_in_fp32=event.result.redone_in_fp32)

    def _ready(self, event: DeviceReady) -> None:
        info: DeviceInfo = event.info
        if self._first is not None and info.agreed() != self._first.agreed():
            raise WorkerFailed(f"the worker for {event.device} loaded other models or another precision "
                               f"than the first device: {info.agreed()} against {self._first.agreed()}")
        self._first = self._first or info
        startup = {**event.startup_s, **info.startup_s}
        startup["total"] = startup.pop("total", 0.0)  # last, as the log line reads it
        self.monitor.emit("device_ready", device=event.device, startup_s=startup, restarts=event.restarts)
