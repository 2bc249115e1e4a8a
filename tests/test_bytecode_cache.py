"""The `virnucpro` command keeps compiled bytecode in its cache when the environment has
turned Python's own off (PYTHONDONTWRITEBYTECODE, as many container images set it) and the
installation ships none: without it every run recompiled torch's sources (import torch 4.5 s
instead of 1.1 s on the device). The probes below judge by a module of their own, which has
no bytecode yet, where the command judges by torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import sys
from virnucpro.engine.bytecode import keep_bytecode
from virnucpro.models.caches import virnucpro_home
sys.path.insert(0, sys.argv[1])
kept = keep_bytecode(virnucpro_home() / "bytecode", judged_by="probe_module")
import probe_module
print(kept)
if len(sys.argv) > 2:  # a spawned worker, as the engine starts them
    import multiprocessing
    import spawned
    worker = multiprocessing.get_context("spawn").Process(target=spawned.run)
    worker.start()
    worker.join()
"""
SPAWNED = """
def run():
    import virnucpro  # as a worker's target module does, before torch
    import probe_child
"""


def run(tmp_path: Path, *extra: str, **env: str) -> tuple[str, list[Path]]:
    """The probe in a fresh interpreter; what keep_bytecode said, and the .pyc files of the
    probe's modules anywhere under tmp_path."""
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    (source / "probe_module.py").write_text("VALUE = 1\n")
    (source / "probe_child.py").write_text("VALUE = 2\n")
    (source / "spawned.py").write_text(SPAWNED)
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "VIRNUCPRO_KEEP_BYTECODE")}
    environment.update(VIRNUCPRO_HOME=str(tmp_path / "home"), PYTHONPATH=str(source), **env)
    done = subprocess.run([sys.executable, "-c", PROBE, str(source), *extra], env=environment,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip(), sorted(tmp_path.rglob("probe_*.pyc"))


def test_bytecode_goes_to_the_cache_when_python_would_not_write_it(tmp_path):
    said, pyc = run(tmp_path, PYTHONDONTWRITEBYTECODE="1")
    folder = tmp_path / "home" / "bytecode"
    assert said == str(folder)
    assert [p.name.split(".")[0] for p in pyc] == ["probe_module"] and folder in pyc[0].parents
    assert not (tmp_path / "src" / "__pycache__").exists()  # nothing beside the sources


def test_spawned_workers_write_it_too(tmp_path):
    """multiprocessing starts children with the parent's -B: without resume_in_worker a
    worker would compile what only it imports (Dynamo, Inductor) again in every run."""
    said, pyc = run(tmp_path, "spawn", PYTHONDONTWRITEBYTECODE="1")
    folder = tmp_path / "home" / "bytecode"
    assert said == str(folder)
    assert sorted(p.name.split(".")[0] for p in pyc) == ["probe_child", "probe_module"]
    assert all(folder in p.parents for p in pyc)


def test_nothing_changes_where_python_keeps_its_own_or_the_user_said_no(tmp_path):
    said, pyc = run(tmp_path)
    assert said == "None" and len(pyc) == 1 and pyc[0].parent == tmp_path / "src" / "__pycache__"
    # Python keeps none now, but the installation shipped the judged module's bytecode:
    # a prefix would make Python ignore it, so nothing changes either.
    said, _ = run(tmp_path, PYTHONDONTWRITEBYTECODE="1")
    assert said == "None"
    for env in ({"VIRNUCPRO_KEEP_BYTECODE": "0"}, {"PYTHONPYCACHEPREFIX": str(tmp_path / "mine")}):
        for old in pyc:
            old.unlink(missing_ok=True)
        said, pyc = run(tmp_path, PYTHONDONTWRITEBYTECODE="1", **env)
        assert said == "None"
        assert not (tmp_path / "home" / "bytecode").exists()


def test_a_cache_that_cannot_be_made_only_costs_speed(tmp_path):
    (tmp_path / "home").write_text("a file where the cache folder would go")
    said, pyc = run(tmp_path, PYTHONDONTWRITEBYTECODE="1")
    assert said == "None" and pyc == []


def test_the_command_imports_no_torch_before_it_decides():
    done = subprocess.run([sys.executable, "-c", "import sys, virnucpro.cli; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_command_keeps_bytecode_and_its_workers_inherit_it(tmp_path, monkeypatch):
    """entry() calls it before main(); the environment it leaves is what spawned workers and
    Inductor's compile workers start with."""
    import logging

    import virnucpro.cli as cli
    from virnucpro.engine import bytecode

    seen = {}
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    for name in ("PYTHONPYCACHEPREFIX", "VIRNUCPRO_KEEP_BYTECODE", bytecode.KEPT_IN):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VIRNUCPRO_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    monkeypatch.setattr(bytecode, "_has_bytecode", lambda module: False)  # as on the GPU host
    monkeypatch.setattr(cli, "main", lambda: seen.update(os.environ) or 0)
    monkeypatch.setattr(logging, "shutdown", lambda: None)
    monkeypatch.setattr(os, "_exit", lambda code: seen.setdefault("exit", code))
    cli.entry()
    folder = str((tmp_path / "bytecode").resolve())
    assert seen["PYTHONPYCACHEPREFIX"] == folder and seen[bytecode.KEPT_IN] == folder
    assert "PYTHONDONTWRITEBYTECODE" not in seen and seen["exit"] == 0
