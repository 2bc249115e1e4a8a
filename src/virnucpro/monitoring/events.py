"""Run events: the bus every part of a run reports through.

The pipeline and engine only `emit` events; what the user sees is decided by subscribers
(here the log; progress, GPU sampling, stall detection and the run report live in
`virnucpro.monitoring`). This keeps prints out of the engine.

Events the pipeline emits: run_started, input_progress, shard_started, shard_done,
stage_done, info, warning, run_finished; monitoring adds tick and gpu_sample.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("virnucpro")


@dataclass(frozen=True)
class Event:
    kind: str  # "info", "warning", "shard_done", "run_finished", ...
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


Subscriber = Callable[[Event], None]


class Monitor:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.warnings: list[str] = []
        # Events also come from background threads (GPU sampling, the stall watchdog):
        # subscribers see them one at a time. Re-entrant, as a subscriber may emit in turn.
        self._lock = threading.RLock()

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def emit(self, kind: str, **data: Any) -> None:
        event = Event(kind, data)
        with self._lock:
            if kind == "warning":
                self.warnings.append(str(data.get("message")))
            failure: Exception | None = None
            for subscriber in self._subscribers:
                try:
                    subscriber(event)
                except Exception as exc:  # noqa: BLE001 - the others still see the event (e.g. the summary
                    failure = failure or exc  # is written when the metrics file failed)
            if failure is not None:
                raise failure

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage of the run; emits stage_done{name, seconds} when it ends normally."""
        t0 = time.perf_counter()
        yield
        self.emit("stage_done", name=name, seconds=time.perf_counter() - t0)

    def info(self, message: str) -> None:
        self.emit("info", message=message)

    def warn(self, message: str) -> None:
        self.emit("warning", message=message)


def log_subscriber(event: Event) -> None:
    """Messages and warnings to the 'virnucpro' logger (stderr and/or --log-file)."""
    if event.kind == "info":
        log.info(event.data["message"])
    elif event.kind == "warning":
        log.warning(event.data["message"])
    elif event.kind == "device_ready":
        d = event.data
        if d["startup_s"]:  # a detail: the summary's stage times say how long loading took
            log.debug(f"{d['device']}{' (restarted)' if d['restarts'] else ''} {describe_startup(d['startup_s'])}")
    elif event.kind == "shard_done":
        d = event.data
        if d.get("resumed"):
            log.debug("shard %d: %d frames from the checkpoint store", d["index"], d["frames"])
        else:
            log.debug("shard %d: %d frames in %.2f s on %s", d["index"], d["frames"], d["seconds"], d["device"])


def describe_startup(phases: dict) -> str:
    """A device's start-up phases (seconds, as workers report them) in one line."""
    parts = ", ".join(f"{name} {sec:.1f} s" for name, sec in phases.items() if name != "total")
    return f"ready after {phases.get('total', 0.0):.1f} s ({parts})"
