"""The `virnucpro` command keeps compiled bytecode in its cache when the environment has
turned Python's own off (PYTHONDONTWRITEBYTECODE, as many container images set it): without
it every run recompiled torch's sources (import torch 4.5 s instead of 1.1 s on the device)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import sys
from virnucpro.engine.bytecode import keep_bytecode
from virnucpro.models.caches import virnucpro_home
kept = keep_bytecode(virnucpro_home() / "bytecode")
sys.path.insert(0, sys.argv[1])
import probe_module
print(kept)
"""


def run(tmp_path: Path, **env: str) -> tuple[str, list[Path]]:
    """The probe in a fresh interpreter; what keep_bytecode said, and the .pyc files of the
    imported module anywhere under tmp_path."""
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    (source / "probe_module.py").write_text("VALUE = 1\n")
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "VIRNUCPRO_KEEP_BYTECODE")}
    environment.update(VIRNUCPRO_HOME=str(tmp_path / "home"), **env)
    done = subprocess.run([sys.executable, "-c", PROBE, str(source)], env=environment,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip(), sorted(tmp_path.rglob("probe_module*.pyc"))


def test_bytecode_goes_to_the_cache_when_python_would_not_write_it(tmp_path):
    said, pyc = run(tmp_path, PYTHONDONTWRITEBYTECODE="1")
    folder = tmp_path / "home" / "bytecode"
    assert said == str(folder)
    assert len(pyc) == 1 and folder in pyc[0].parents  # in the cache, not beside the source
    assert not (tmp_path / "src" / "__pycache__").exists()


def test_nothing_changes_where_python_keeps_its_own_or_the_user_said_no(tmp_path):
    said, pyc = run(tmp_path)
    assert said == "None" and len(pyc) == 1 and pyc[0].parent == tmp_path / "src" / "__pycache__"
    for env in ({"VIRNUCPRO_KEEP_BYTECODE": "0"}, {"PYTHONPYCACHEPREFIX": str(tmp_path / "mine")}):
        for old in pyc:
            old.unlink(missing_ok=True)
        said, pyc = run(tmp_path, PYTHONDONTWRITEBYTECODE="1", **env)
        assert said == "None"
        assert not (tmp_path / "home" / "bytecode").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_a_home_that_cannot_be_written_only_costs_speed(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o500)
    try:
        said, pyc = run(tmp_path, PYTHONDONTWRITEBYTECODE="1")
    finally:
        home.chmod(0o700)
    assert said == "None" and pyc == []


def test_the_command_keeps_bytecode_and_its_workers_inherit_it(tmp_path, monkeypatch):
    """entry() calls it before main(); the environment it leaves is what spawned workers and
    Inductor's compile workers start with."""
    import virnucpro.cli as cli

    seen = {}
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    monkeypatch.setenv("VIRNUCPRO_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    monkeypatch.setattr(cli, "main", lambda: seen.update(os.environ) or 0)
    monkeypatch.setattr(os, "_exit", lambda code: seen.setdefault("exit", code))
    cli.entry()
    assert seen["PYTHONPYCACHEPREFIX"] == str(tmp_path / "bytecode") and "PYTHONDONTWRITEBYTECODE" not in seen
    assert seen["exit"] == 0
