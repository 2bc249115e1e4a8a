"""Run one function on a thread and collect its result later."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


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
