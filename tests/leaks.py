"""What a test left running: worker processes and new non-daemon threads.

conftest.py checks this after every test. A stopping engine may take a moment to join its
workers, so the check polls for a short grace period before it calls anything a leak.
"""

from __future__ import annotations

import multiprocessing
import threading
import time

GRACE_S = 2.0


def live_threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def left_running(threads_before: set[threading.Thread], grace_s: float = GRACE_S):
    """(worker processes, non-daemon threads not in threads_before) still alive once
    `grace_s` has passed, or as soon as there are none."""
    deadline = time.monotonic() + grace_s
    while True:
        processes = multiprocessing.active_children()  # also reaps the ones that ended
        threads = [t for t in threading.enumerate() if t not in threads_before and not t.daemon]
        if not (processes or threads) or time.monotonic() >= deadline:
            return processes, threads
        time.sleep(0.02)
