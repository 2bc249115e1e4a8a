"""Run one function on a thread and collect its result later; and switch threads often while
two Python-heavy threads overlap."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# While a thread that is all Python (e.g. Dynamo tracing) runs, every other thread that
# briefly drops the interpreter lock (each torch call does) waits up to the switch interval,
# 5 ms by default, to get it back: the convoy effect. Reading the models beside a compiling
# thread took 8.8-13.0 s instead of 1.0-2.6 s alone that way; at 0.1 ms, 2.1-2.4 s
# (benchmarks/gil_convoy.py, full-size files, 2-core CPU; benchmarks/RESULTS.md).
QUICK_SWITCH_INTERVAL_S = 1e-4
_switching = threading.Lock()
_switching_users = 0
_switching_saved = 0.0


def in_background(fn: Callable[[], Any], name: str) -> Callable[[], Any]:
    """Start fn() on a daemon thread; return a function that waits for its result and
    re-raises whatever it raised. Daemon, because the thread may sit in a blocking call
    (a pipe's receive) when the caller is done."""
    box: queue.Queue = queue.Queue(maxsize=1)

    def target() -> None:
        try:
            box.put((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, re-raised there
            box.put((False, exc))

    threading.Thread(target=target, daemon=True, name=name).start()

    def result() -> Any:
        ok, value = box.get()
        if not ok:
            raise value
        return value

    return result


@contextmanager
def quick_thread_switching(interval: float = QUICK_SWITCH_INTERVAL_S) -> Iterator[None]:
    """Lower the interpreter's thread switch interval (process-wide) for the duration; the
    previous value comes back when the last overlapping user leaves."""
    global _switching_users, _switching_saved
    with _switching:
        if _switching_users == 0:
            _switching_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(interval, _switching_saved))
        _switching_users += 1
    try:
        yield
    finally:
        with _switching:
            _switching_users -= 1
            if _switching_users == 0:
                sys.setswitchinterval(_switching_saved)
