"""A background thread that emits `tick` every `interval` seconds during a run.

Periodic work (GPU sampling, per-device throughput lines, stall checks) hangs off ticks, so
it happens even while the main thread is stuck inside a shard -- which is exactly when a
stall has to be noticed.
"""

from __future__ import annotations

import threading

from virnucpro.monitoring.events import Event, Monitor


class Heartbeat:
    """Subscriber: starts ticking at run_started, stops at run_finished (or `stop()`)."""

    def __init__(self, monitor: Monitor, interval: float):
        if interval <= 0:
            raise ValueError(f"monitor interval must be positive, got {interval}")
        self._monitor = monitor
        self._interval = interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, event: Event) -> None:
        if event.kind == "run_started" and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="virnucpro-heartbeat", daemon=True)
            self._thread.start()
        elif event.kind == "run_finished":
            self._stopped.set()  # not joined here: we may be inside a tick's emit on this thread

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            self._monitor.emit("tick")

    def stop(self) -> None:
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5 * self._interval + 1)
