"""Outputs under attack: full disks on every write path, links planted in the output folder,
files of an earlier run beside new results, and option values that make no sense."""

from __future__ import annotations

import builtins
import errno
import logging
import os
from pathlib import Path

import pytest
from example_reads import first_reads

from virnucpro.cli import main


def sample(folder: Path, records: int = 20) -> Path:
    return first_reads(folder, records)


def predict(path: Path, *extra: str) -> int:
    return main(["predict", str(path), "-m", "300", "--demo", "-q", "--devices", "cpu", *extra])


class _FullDisk:
    """A file whose every write fails as a full disk's does."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __iter__(self):
        return iter(self._handle)


@pytest.fixture
def full_disk_for(monkeypatch):
    """full_disk_for(name): from now on, files whose name holds `name` cannot be written."""
    def install(name: str) -> None:
        def wrapping(opener):
            def opened(file, *args, **kwargs):
                handle = opener(file, *args, **kwargs)
                target = getattr(handle, "name", file)
                if isinstance(target, int):  # os.fdopen: the file behind the descriptor (Linux)
                    target = os.readlink(f"/proc/self/fd/{target}")
                mode = args[0] if args else kwargs.get("mode", "r")
                writing = isinstance(target, (str, os.PathLike)) and any(m in str(mode) for m in "wax+")
                return _FullDisk(handle) if writing and name in Path(target).name else handle
            return opened

        monkeypatch.setattr(builtins, "open", wrapping(builtins.open))
        monkeypatch.setattr(os, "fdopen", wrapping(os.fdopen))
        if hasattr(logging.FileHandler, "_builtin_open"):  # Pythons that keep their own reference
            monkeypatch.setattr(logging.FileHandler, "_builtin_open", wrapping(logging.FileHandler._builtin_open))
    return install


def temporaries(*folders: Path) -> list[str]:
    return [p.name for folder in folders if folder.exists() for p in folder.rglob(".*.tmp")]


@pytest.mark.parametrize("name, extra", [
    ("prediction_results.txt", ()),
    ("prediction_results_highestscore.csv", ()),
    ("run_summary.json", ()),
    ("report.html", ()),
    ("_chunked300.fa", ("--keep-intermediate",)),
    ("_identified_protein.faa", ("--keep-intermediate",)),
    ("dnabert_s.npy", ("--save-embeddings",)),
    ("ids.txt", ("--save-embeddings",)),
    ("shard_", ()),
    ("run.log", ("--log-file", "LOG")),
])
def test_a_full_disk_ends_with_exit_3_a_message_and_no_temporaries(tmp_path, capsys, full_disk_for, name, extra):
    path = sample(tmp_path)
    extra = tuple(str(tmp_path / "run.log") if e == "LOG" else e for e in extra)
    full_disk_for(name)
    assert predict(path, *extra) == 3
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    named = {"shard_": "checkpoint", "dnabert_s.npy": "embeddings", "ids.txt": "embeddings"}.get(name, name.strip("_"))
    assert named in err
    assert temporaries(tmp_path) == []


def test_a_full_disk_for_the_plot_is_exit_3(tmp_path, capsys, full_disk_for):
    path = sample(tmp_path)
    assert predict(path) == 0
    first_row = (tmp_path / "reads_merged" / "prediction_results.txt").read_text().splitlines()[1]
    read_id = first_row.split("\t")[0].rsplit("_chunk_", 1)[0]
    full_disk_for("mine.html")
    code = main(["plot", str(tmp_path / "reads_merged"), "--ids", read_id, "-o", str(tmp_path / "mine.html")])
    err = capsys.readouterr().err
    assert code == 3 and "mine.html" in err and "No space left" in err and "Traceback" not in err
    assert not (tmp_path / "mine.html").exists() and temporaries(tmp_path) == []


@pytest.mark.parametrize("name", ["prediction_results.txt", "prediction_results_highestscore.csv",
                                  "run_summary.json", "report.html", "embeddings"])
def test_no_write_follows_a_link_planted_in_the_output_folder(tmp_path, name):
    path = sample(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir() if name == "embeddings" else victim.write_text("precious\n")
    out = tmp_path / "reads_merged"
    out.mkdir()
    (out / name).symlink_to(victim)
    assert predict(path, "--save-embeddings") == 0
    assert not (out / name).is_symlink()
    assert (list(victim.iterdir()) == [] if name == "embeddings" else victim.read_text() == "precious\n")


def test_a_link_planted_at_the_lock_is_refused_and_its_target_untouched(tmp_path, capsys):
    path = sample(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "reads_merged"
    out.mkdir()
    (out / ".virnucpro.lock").symlink_to(victim)
    assert predict(path) == 3
    assert "lock" in capsys.readouterr().err
    assert victim.read_text() == "precious\n"


def test_files_of_an_earlier_run_do_not_stay_beside_new_results(tmp_path):
    path = sample(tmp_path)
    out = tmp_path / "reads_merged"
    assert predict(path, "--save-embeddings") == 0
    assert (out / "embeddings").is_dir() and (out / "report.html").is_file()
    (out / "plot.html").write_text("a plot of the earlier results\n")
    assert predict(path, "--report-sequences", "0") == 0
    assert not (out / "embeddings").exists()
    assert not (out / "plot.html").exists() and not (out / "report.html").exists()


@pytest.mark.parametrize("option, value", [
    ("--monitor-interval", "nan"), ("--monitor-interval", "inf"), ("--monitor-interval", "0"),
    ("--monitor-interval", "-1"), ("--batch-tokens", "0"), ("--batch-tokens", "1.5"),
    ("--shard-tokens", "0"), ("--report-sequences", "-1"), ("--log-file", "FOLDER"),
    ("-o", "FILE"),
])
def test_option_values_are_checked_before_any_work(tmp_path, capsys, option, value):
    path = sample(tmp_path)
    value = {"FOLDER": str(tmp_path), "FILE": str(path)}.get(value, value)
    with pytest.raises(SystemExit) as stopped:
        predict(path, option, value)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.strip().splitlines()) == 1 and option.lstrip("-") in err
    assert not (tmp_path / "reads_merged").exists()


def test_plot_output_that_is_a_folder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["plot", str(tmp_path), "--ids", "x", "-o", str(tmp_path)])
    assert stopped.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_a_killed_runs_temporaries_are_cleaned_and_other_programs_files_kept(tmp_path):
    """Temporaries carry the writer's pid: those of a process that is gone are removed from the
    result folder and from the intermediates' folder (beside the input); a file that merely
    looks like a temporary of another program is left alone."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    path = sample(tmp_path)
    out = tmp_path / "reads_merged"
    out.mkdir()
    stale = [out / f".prediction_results.txt.{gone}.r0123456789ab.tmp",
             tmp_path / f".reads_chunked300.fa.{gone}.rba9876543210.tmp"]
    for file in stale:
        file.write_text("half\n")
    foreign = tmp_path / f".editor.{gone}.tmp"
    foreign.write_text("not ours\n")
    assert predict(path, "--keep-intermediate") == 0
    assert not any(file.exists() for file in stale) and foreign.exists()
