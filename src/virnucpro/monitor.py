"""Run events and the logging they end in.

The pipeline and engine only `emit` events; what the user sees is decided by subscribers
(here the log; progress, GPU sampling, stall detection and the run report live in
`virnucpro.monitoring`). This keeps prints out of the engine.

Events the pipeline emits: run_started, input_progress, shard_started, shard_done,
stage_done, info, warning, run_finished; monitoring adds tick and gpu_sample.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
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
            for subscriber in self._subscribers:
                subscriber(event)

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
    elif event.kind == "shard_done":
        d = event.data
        log.debug("shard %d: %d frames in %.2f s on %s%s", d["index"], d["frames"], d["seconds"],
                  d["device"], " (from checkpoint)" if d.get("resumed") else "")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time: while the rich progress bar is live it
    redirects sys.stderr, so log lines print above the bar instead of through it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(quiet: bool, verbose: bool = False, log_file: Path | None = None) -> None:
    """Console: warnings only when quiet. The --log-file gets everything from INFO (DEBUG
    with -v) with timestamps, whatever --quiet says: it is the record of a batch job."""
    console = _StderrHandler()
    console.setFormatter(logging.Formatter("virnucpro: %(message)s"))
    console.setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        to_file.setLevel(logging.DEBUG if verbose else logging.INFO)
        handlers.append(to_file)
    for old in log.handlers:
        old.close()
    log.handlers[:] = handlers
    log.setLevel(min(h.level for h in handlers))
    log.propagate = False
