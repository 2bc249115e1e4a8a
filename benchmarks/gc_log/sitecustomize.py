"""Loaded by Python at start-up when this folder is on PYTHONPATH (check_idle_tail.py puts it
there): with VIRNUCPRO_BENCH_GC_LOG set, every garbage collection of the process is appended to
that file as a JSON line (generation, seconds, thread, objects frozen), to see whether full
collections stall the thread that feeds the GPU. Benchmark-only; virnucpro never imports it."""

import gc
import json
import os
import threading
import time

_path = os.environ.get("VIRNUCPRO_BENCH_GC_LOG")
if _path:
    _started: dict[int, float] = {}
    _log = open(_path, "a", buffering=1)  # noqa: SIM115 - open for the process's lifetime

    def _on_collect(phase: str, info: dict) -> None:
        if phase == "start":
            _started[threading.get_ident()] = time.perf_counter()
            return
        began = _started.pop(threading.get_ident(), None)
        if began is not None:
            _log.write(json.dumps({"t": time.time(), "generation": info["generation"],
                                   "seconds": round(time.perf_counter() - began, 5),
                                   "thread": threading.current_thread().name,
                                   "frozen": gc.get_freeze_count()}) + "\n")

    gc.callbacks.append(_on_collect)
