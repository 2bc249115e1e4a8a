"""Progress over frames: done, rates, expected total and ETA, shown as a rich bar on a
terminal or as plain log lines in a batch job.

The pipeline streams frames, so their total is unknown until the input is read. Instead of a
pre-pass (the frame count depends on stop codons, so counting would cost as much as the CPU
stages themselves), the total is estimated from the input bytes consumed so far:
expected frames = frames read x file bytes / bytes read. It is exact once reading ends, and
for gzip the compressed bytes are used, which is what the reader actually consumes.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from virnucpro.monitoring.events import Event

log = logging.getLogger("virnucpro")


class ProgressState:
    """Counts from input_progress and shard_done events; rates and ETA from a clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._start: float | None = None
        self.frames_done = self.tokens_done = 0
        self.frames_computed = self.tokens_computed = 0  # not from a checkpoint: these set the rate
        self.frames_read = self.bytes_read = 0
        self.bytes_total: int | None = None

    def update(self, event: Event) -> None:
        d = event.data
        if event.kind == "run_started":
            self._start = self._clock()
        elif event.kind == "input_progress":
            self.frames_read, self.bytes_read, self.bytes_total = d["frames"], d["bytes_read"], d["bytes_total"]
        elif event.kind == "shard_done":
            self.frames_done += d["frames"]
            self.tokens_done += d["tokens"]
            if not d.get("resumed"):
                self.frames_computed += d["frames"]
                self.tokens_computed += d["tokens"]

    @property
    def elapsed(self) -> float:
        return 0.0 if self._start is None else max(self._clock() - self._start, 1e-9)

    def expected_frames(self) -> int | None:
        if not self.bytes_total or not self.bytes_read:
            return None
        if self.bytes_read >= self.bytes_total:
            return self.frames_read
        return max(round(self.frames_read * self.bytes_total / self.bytes_read), self.frames_read)

    def rates(self) -> tuple[float, float]:
        """(frames/s, tokens/s) of computed work since the run started."""
        return self.frames_computed / self.elapsed, self.tokens_computed / self.elapsed

    def eta_seconds(self) -> float | None:
        expected = self.expected_frames()
        frames_rate, _ = self.rates()
        if expected is None or frames_rate <= 0:
            return None
        return max(expected - self.frames_done, 0) / frames_rate


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(state: ProgressState) -> str:
    expected = state.expected_frames()
    frames_rate, tokens_rate = state.rates()
    of = f" / ~{expected:,}" if expected else ""
    share = f" ({100 * state.frames_done / expected:.1f}%)" if expected else ""
    return (f"progress: {state.frames_done:,}{of} frames{share}, {frames_rate:,.0f} frames/s, "
            f"{tokens_rate:,.0f} tokens/s, ETA {format_duration(state.eta_seconds())}")


class PlainProgress:
    """One log line every `interval` seconds (and one at the end): for logs of batch jobs,
    where a redrawn bar would be garbage."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.state = ProgressState(clock)
        self._interval = interval
        self._clock = clock
        self._last = clock()

    def __call__(self, event: Event) -> None:
        self.state.update(event)
        if event.kind == "run_started":
            self._last = self._clock()
        elif event.kind in ("shard_done", "tick") and self._clock() - self._last >= self._interval:
            self._last = self._clock()
            log.info(progress_line(self.state))


class RichProgress:
    """A live bar over frames with frames/s, tokens/s and ETA, on stderr (a terminal)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.state = ProgressState()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.fields[counts]}"), TextColumn("{task.fields[rates]}"),
            TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(),
            console=Console(file=sys.stderr), transient=True,
        )
        self._task = None

    def __call__(self, event: Event) -> None:
        self.state.update(event)
        if event.kind == "run_started":
            self._progress.start()
            self._task = self._progress.add_task("predicting", total=None, counts="", rates="", eta="?")
        elif event.kind in ("shard_done", "input_progress", "tick") and self._task is not None:
            self._refresh()
        elif event.kind == "run_finished" and self._task is not None:
            self.stop()

    def _refresh(self) -> None:
        s = self.state
        expected = s.expected_frames()
        frames_rate, tokens_rate = s.rates()
        self._progress.update(
            self._task, completed=s.frames_done, total=expected,
            counts=f"{s.frames_done:,}" + (f"/~{expected:,}" if expected else "") + " frames",
            rates=f"{frames_rate:,.0f} frames/s {tokens_rate:,.0f} tok/s",
            eta=format_duration(s.eta_seconds()),
        )

    def stop(self) -> None:
        """Also called when a run fails, so the terminal is left clean."""
        self._progress.stop()
        self._task = None
