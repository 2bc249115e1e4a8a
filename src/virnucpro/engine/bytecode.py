"""Keep the compiled bytecode of the Python modules a run imports, where the environment has
turned Python's own bytecode cache off.

Container images often set PYTHONDONTWRITEBYTECODE=1 and ship torch without its .pyc files.
Every process then compiles the source of everything it imports, torch and Inductor
included, before any work starts. Measured on an H200 host set up that way
(benchmarks/RESULTS.md, "Start-up: bytecode"): `import torch` took 4.5 s instead of 1.1 s,
and a one-GPU run's fixed cost was 14.6 s instead of 7.9 s with bytecode kept here.

In that case the bytecode goes to a folder of virnucpro's cache (Python's pycache_prefix
mechanism), never beside the installed sources: the image stays as its builder left it.
Python checks each file against its source's timestamp and size, so an upgraded package is
recompiled, not served stale. Where torch already has its bytecode beside its sources
nothing changes: with a prefix set Python would stop reading those files.
VIRNUCPRO_KEEP_BYTECODE=0 turns this off.

It belongs to the engine because it is about starting processes: the command's own, its
spawned workers and Inductor's compile workers.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

# Set for worker processes: the folder this run keeps bytecode in (see resume_in_worker).
KEPT_IN = "VIRNUCPRO_BYTECODE_KEPT_IN"


def keep_bytecode(folder: Path, environ: MutableMapping[str, str] = os.environ,
                  judged_by: str = "torch") -> Path | None:
    """Keep bytecode in `folder` if Python would keep none; returns the folder when it does,
    None when Python keeps its own, the installation ships its bytecode (judged by package
    `judged_by`'s), the user chose a place or said no, or `folder` cannot be written (the
    run is then only slower to start).

    Called by the `virnucpro` command before anything imports torch; worker processes
    inherit it through `environ` and resume_in_worker."""
    if not sys.flags.dont_write_bytecode and not sys.dont_write_bytecode:
        return None  # Python writes __pycache__ itself
    if sys.pycache_prefix or environ.get("PYTHONPYCACHEPREFIX") or environ.get("VIRNUCPRO_KEEP_BYTECODE") == "0":
        return None  # the user has chosen a place, or said no
    if _has_bytecode(judged_by):
        return None
    folder = folder.expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    sys.pycache_prefix = str(folder)
    sys.dont_write_bytecode = False
    environ["PYTHONPYCACHEPREFIX"] = str(folder)
    environ.pop("PYTHONDONTWRITEBYTECODE", None)
    environ[KEPT_IN] = str(folder)
    return folder


def resume_in_worker() -> None:
    """In a process spawned by a run that keeps bytecode: write it too. multiprocessing
    starts its children with the parent's interpreter flags, -B among them, so without this
    a worker would only read what the parent wrote and compile everything else (Dynamo,
    Inductor) again in every run. Called when the package is imported, before torch."""
    kept_in = os.environ.get(KEPT_IN)
    if kept_in and sys.pycache_prefix == kept_in:
        sys.dont_write_bytecode = False


def _has_bytecode(module: str) -> bool:
    """Whether a module's installed source comes with its bytecode (without importing it)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return False
    return os.path.exists(importlib.util.cache_from_source(spec.origin))
