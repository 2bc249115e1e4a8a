"""Run events and their subscribers (log lines, progress bar).

The pipeline and engine only `emit` events; what the user sees is decided here. This keeps
prints out of the engine and lets later subscribers (GPU sampling, run reports) listen in.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
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

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def emit(self, kind: str, **data: Any) -> None:
        event = Event(kind, data)
        if kind == "warning":
            self.warnings.append(str(data.get("message")))
        for subscriber in self._subscribers:
            subscriber(event)

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
    elif event.kind == "shard_done":
        d = event.data
        log.debug("shard %d: %d frames in %.2f s on %s%s", d["index"], d["frames"], d["seconds"],
                  d["device"], " (from checkpoint)" if d.get("resumed") else "")


class ProgressSubscriber:
    """A rich progress bar over frames with their rate; only when stderr is a terminal."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.completed:,} frames"), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), transient=True,
        )
        self._task = None
        self._start = time.perf_counter()

    def __call__(self, event: Event) -> None:
        if event.kind == "run_started":
            self._progress.start()
            self._task = self._progress.add_task("predicting", total=None, rate="")
        elif event.kind == "shard_done" and self._task is not None:
            self._progress.advance(self._task, event.data["frames"])
            done = self._progress.tasks[0].completed
            rate = done / max(time.perf_counter() - self._start, 1e-9)
            self._progress.update(self._task, rate=f"{rate:,.0f} frames/s")
        elif event.kind == "run_finished":
            self._progress.stop()


def configure_logging(quiet: bool, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("virnucpro: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO))
    log.propagate = False
