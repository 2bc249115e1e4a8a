"""The leak check that conftest.py runs after every test finds what it must, and only that."""

from __future__ import annotations

import multiprocessing
import threading
import time

from leaks import left_running, live_threads


def test_a_worker_process_left_alive_is_reported_until_stopped():
    before = live_threads()
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,), daemon=True)
    process.start()
    try:
        assert left_running(before, grace_s=0.1) == ([process], [])
    finally:
        process.kill()
        process.join()
    assert left_running(before, grace_s=0.1) == ([], [])


def test_a_worker_process_ending_within_the_grace_period_is_no_leak():
    before = live_threads()
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0.2,), daemon=True)
    process.start()
    assert left_running(before, grace_s=30) == ([], [])
    assert process.exitcode == 0


def test_new_non_daemon_threads_are_reported_daemon_and_older_ones_not():
    stop = threading.Event()
    older = threading.Thread(target=stop.wait)
    older.start()
    before = live_threads()
    new = threading.Thread(target=stop.wait)
    daemon = threading.Thread(target=stop.wait, daemon=True)
    new.start()
    daemon.start()
    try:
        assert left_running(before, grace_s=0.1) == ([], [new])
    finally:
        stop.set()
        for thread in (older, new, daemon):
            thread.join()
    assert left_running(before, grace_s=0.1) == ([], [])
