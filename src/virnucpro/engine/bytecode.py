"""Keep the compiled bytecode of the Python modules a run imports, where the environment has
turned Python's own bytecode cache off.

Container images often set PYTHONDONTWRITEBYTECODE=1 and ship torch without its .pyc files.
Every process then compiles the source of everything it imports, torch and Inductor
included, before any work starts. Measured on an H200 host set up that way
(benchmarks/RESULTS.md, "Start-up: bytecode"): `import torch` took 4.5 s instead of 1.1 s,
and a one-GPU run's fixed cost was 14-19 s instead of 6-7 s with bytecode kept.

In that case the bytecode goes to a folder of virnucpro's cache (Python's pycache_prefix
mechanism), never beside the installed sources: the image stays as its builder left it.
Python checks each file against its source's timestamp, so an upgraded package is
recompiled, not served stale. VIRNUCPRO_KEEP_BYTECODE=0 turns this off.

It belongs to the engine because it is about starting processes: the command's own, its
spawned workers (which inherit the environment set here) and Inductor's compile workers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path


def keep_bytecode(folder: Path, environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Keep bytecode in `folder` if Python would keep none; returns the folder when it does,
    None when Python keeps its own, the user chose a place or said no, or `folder` cannot be
    written (the run is then only slower to start).

    Called by the `virnucpro` command before anything imports torch; the worker processes
    inherit it through `environ`."""
    if not sys.flags.dont_write_bytecode and not sys.dont_write_bytecode:
        return None  # Python writes __pycache__ itself
    if sys.pycache_prefix or environ.get("PYTHONPYCACHEPREFIX") or environ.get("VIRNUCPRO_KEEP_BYTECODE") == "0":
        return None  # the user has chosen a place, or said no
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
    return folder
