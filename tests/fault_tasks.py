"""Tasks that misbehave on purpose, importable by spawned worker processes (tests/ is on the
path they inherit). A task kills its own process with SIGKILL -- as the kernel's OOM killer
or a crashed driver would -- when it is about to run a chosen job."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from virnucpro.config import RunConfig
from virnucpro.predict.task import FrameTask, ShardWork, make_frame_task


def _die_once(marker: Path) -> None:
    """SIGKILL this process, unless `marker` says a process already died here."""
    try:
        marker.open("x").close()
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


class TimesTen:
    """Result = payload * 10; SIGKILL on job `kill_at` (once, or every time)."""

    info = {"name": "times-ten"}

    def __init__(self, kill_at: int | None, marker: Path | None, pause: float = 0.002) -> None:
        self.kill_at, self.marker, self.pause = kill_at, marker, pause

    def prepare(self, payload: int) -> int:
        return payload

    def run(self, payload: int) -> int:
        if payload == self.kill_at:
            if self.marker is None:
                os.kill(os.getpid(), signal.SIGKILL)
            _die_once(self.marker)
        time.sleep(self.pause)
        return payload * 10


class DiesPreparing(TimesTen):
    """SIGKILL while preparing job `kill_at` (before it ever starts running)."""

    def prepare(self, payload: int) -> int:
        if payload == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return payload


class SlowAfterFirst(TimesTen):
    """Payload 0 at once, payloads 1-99 `seconds` long each, larger ones at once: the results
    of the first jobs arrive one by one, so the parent has jobs in flight after the first."""

    def __init__(self, seconds: float) -> None:
        super().__init__(None, None)
        self.seconds = seconds

    def run(self, payload: int) -> int:
        self.pause = self.seconds if 0 < payload < 100 else 0.0
        return super().run(payload)


def times_ten_slow_after_first(seconds: float, device) -> TimesTen:
    return SlowAfterFirst(seconds)


def times_ten_always_dies_preparing_0(device) -> TimesTen:
    return DiesPreparing(0, None)


def times_ten(device) -> TimesTen:
    return TimesTen(None, None)


def times_ten_one_loads_slowly(marker: Path, load_seconds: float, job_seconds: float, device) -> TimesTen:
    """The first worker to start loads at once; any other takes `load_seconds`."""
    try:
        marker.open("x").close()
    except FileExistsError:
        time.sleep(load_seconds)
    return TimesTen(None, None, pause=job_seconds)


def times_ten_one_fails_loading(marker: Path, how: str, device) -> TimesTen:
    """The first worker to start loads at once; any other fails 0.5 s later, by SIGKILL
    (how="dies") or by raising (how="raises")."""
    try:
        marker.open("x").close()
    except FileExistsError:
        time.sleep(0.5)
        if how == "dies":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("this device's driver is broken (simulated)") from None
    return TimesTen(None, None, pause=0.02)


def times_ten_dies_once_at_3(marker: Path, device) -> TimesTen:
    return TimesTen(3, marker)


def times_ten_always_dies_at_3(device) -> TimesTen:
    return TimesTen(3, None)


class _DiesOnShard(FrameTask):
    def __init__(self, inner: FrameTask, shard: int, marker: Path) -> None:
        super().__init__(inner.predictor, inner.keep_embeddings, inner.info)
        self.shard, self.marker = shard, marker

    def run(self, prepared):
        work: ShardWork = prepared.work
        if work.index == self.shard:
            _die_once(self.marker)
        return super().run(prepared)


def frame_task_dies_once_on_shard_2(config: RunConfig, device) -> FrameTask:
    marker = config.input.parent / "worker_died_on_shard_2"
    return _DiesOnShard(make_frame_task(config, device), 2, marker)


def always_dies_loading(device) -> TimesTen:
    """Every worker SIGKILLs itself while loading: nothing can run."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


class ThreadCount(TimesTen):
    """Result = the torch CPU threads the worker computes with."""

    def run(self, payload: int) -> int:
        import torch

        return torch.get_num_threads()


def thread_count(device) -> ThreadCount:
    return ThreadCount(None, None)
