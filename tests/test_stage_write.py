"""Writers: FASTA layouts, result tables (formatting, grouping, sorting), atomic completion."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from virnucpro.errors import OutputError
from virnucpro.layout import HIGHEST_NAME, RESULTS_NAME, open_temp
from virnucpro.stages.types import Chunk, Frame
from virnucpro.stages.write import ResultWriter, write_chunks_fasta, write_frames_fasta


def _chunk_text(chunks) -> str:
    out = io.StringIO()
    write_chunks_fasta(chunks, out)
    return out.getvalue()


def test_chunk_fasta_wraps_at_60_columns() -> None:
    chunks = [Chunk("a_chunk_1", "A" * 60), Chunk("b_chunk_1", "c" * 61), Chunk("d_chunk_2", "G")]
    assert _chunk_text(chunks) == (
        ">a_chunk_1\n" + "A" * 60 + "\n>b_chunk_1\n" + "c" * 60 + "\nc\n>d_chunk_2\nG\n"
    )


def test_chunk_fasta_matches_biopython_writer() -> None:
    SeqIO = pytest.importorskip("Bio.SeqIO")
    from Bio.Seq import Seq
    from Bio.SeqRecord import SeqRecord

    rng = random.Random(3)
    chunks = [
        Chunk(f"r{i}_chunk_{i % 4 + 1}", "".join(rng.choice("ACGTn") for _ in range(rng.randint(1, 500))))
        for i in range(5000)  # enough to cross the writer's internal block size
    ]
    expected = io.StringIO()
    SeqIO.write((SeqRecord(Seq(c.seq), id=c.id, description="") for c in chunks), expected, "fasta")
    assert _chunk_text(chunks) == expected.getvalue()


def test_frame_fastas_one_line_per_sequence() -> None:
    frames = [Frame("x_chunk_1F1", "ACGTA", "T"), Frame("x_chunk_1R3", "G" * 130, "G" * 43)]
    nt, aa = io.StringIO(), io.StringIO()
    write_frames_fasta(frames, nt, aa)
    assert nt.getvalue() == ">x_chunk_1F1\nACGTA\n>x_chunk_1R3\n" + "G" * 130 + "\n"
    assert aa.getvalue() == ">x_chunk_1F1\nT\n>x_chunk_1R3\n" + "G" * 43 + "\n"


# --------------------------------------------------------------------------- result tables


def _f32(*values) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def _tables(out_dir: Path) -> tuple[str, str]:
    return (out_dir / RESULTS_NAME).read_text(), (out_dir / HIGHEST_NAME).read_text()


def test_formatting_ties_and_string_sort(tmp_path: Path) -> None:
    ids = ["x_chunk_2F1", "x_chunk_10R2", "x_chunk_1F3", "x_chunk_1R1", "x_chunk_2R3"]
    score1 = _f32(0.9999, 0.5, 1.0, 0.25, 0.3)
    score2 = _f32(1e-4, 0.5, 0.0, 0.75, 0.7)
    with ResultWriter(tmp_path) as writer:
        writer.add(ids[:2], score1[:2], score2[:2])
        writer.add(ids[2:], score1[2:], score2[2:])
    results, highest = _tables(tmp_path)
    assert results == (
        "Sequence_ID\tPrediction\tscore1\tscore2\n"
        "x_chunk_2F1\tothers\t0.9999\t1e-04\n"
        "x_chunk_10R2\tothers\t0.5\t0.5\n"  # a tie is 'others' (argmax takes index 0)
        "x_chunk_1F3\tothers\t1.0\t0.0\n"
        "x_chunk_1R1\tvirus\t0.25\t0.75\n"
        "x_chunk_2R3\tvirus\t0.3\t0.7\n"
    )
    # Per chunk max(score2) >= max(score1); x_chunk_1: 0.75 < 1.0; x_chunk_10: tie -> True.
    assert highest == (
        "Modified_ID\tIs_Virus\n"
        "x_chunk_1\tFalse\n"
        "x_chunk_10\tTrue\n"
        "x_chunk_2\tFalse\n"
    )


def test_scores_are_written_as_float32_str(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    score2 = rng.random(500, dtype=np.float32) ** 8
    score1 = (1 - score2).astype(np.float32)
    ids = [f"r{i}_chunk_1F1" for i in range(500)]
    with ResultWriter(tmp_path) as writer:
        writer.add(ids, score1, score2.astype(np.float64))  # float64 in: written as float32
    rows = [line.split("\t") for line in _tables(tmp_path)[0].splitlines()[1:]]
    assert [row[2] for row in rows] == [str(np.float32(v)) for v in score1]
    assert [row[3] for row in rows] == [str(v) for v in score2]


def test_spilled_runs_merge_like_in_memory(tmp_path: Path) -> None:
    """Same chunk in several batches and spill runs: maxima still combine exactly."""
    rng = np.random.default_rng(1)
    chunk_ids = [f"c{i}_chunk_{j}" for i in range(40) for j in range(1, 4)]
    ids = [rng.choice(chunk_ids) + rng.choice(["F1", "R2", "F3"]) for _ in range(2000)]
    score1 = rng.random(2000, dtype=np.float32)
    score2 = (1 - score1).astype(np.float32)
    folders = []
    for spill_rows in (1_000_000, 5):
        folder = tmp_path / f"spill{spill_rows}"
        with ResultWriter(folder, spill_rows=spill_rows) as writer:
            for i in range(0, 2000, 97):
                writer.add(ids[i : i + 97], score1[i : i + 97], score2[i : i + 97])
        folders.append(folder)
        assert sorted(p.name for p in folder.iterdir()) == sorted([RESULTS_NAME, HIGHEST_NAME])
    assert _tables(folders[0]) == _tables(folders[1])
    best: dict[str, list[float]] = {}
    for fid, a, b in zip(ids, score1, score2):
        m = best.setdefault(fid[:-2], [-1.0, -1.0])
        m[0], m[1] = max(m[0], a), max(m[1], b)
    expected = "".join(f"{k}\t{m[1] >= m[0]}\n" for k, m in sorted(best.items()))
    assert _tables(folders[0])[1] == "Modified_ID\tIs_Virus\n" + expected


def test_zero_rows_gives_header_only_files(tmp_path: Path) -> None:
    with ResultWriter(tmp_path / "new" / "folder"):
        pass
    assert _tables(tmp_path / "new" / "folder") == (
        "Sequence_ID\tPrediction\tscore1\tscore2\n",
        "Modified_ID\tIs_Virus\n",
    )


def test_exception_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / RESULTS_NAME).write_text("earlier run\n")
    with pytest.raises(RuntimeError), ResultWriter(tmp_path, spill_rows=2) as writer:
        writer.add(["a_chunk_1F1", "b_chunk_1F1", "c_chunk_1F1"], _f32(1, 0, 1), _f32(0, 1, 0))
        raise RuntimeError("classifier failed")
    assert [p.name for p in tmp_path.iterdir()] == [RESULTS_NAME]  # no temporaries, no csv
    assert (tmp_path / RESULTS_NAME).read_text() == "earlier run\n"  # earlier file untouched


def test_final_files_get_normal_permissions(tmp_path: Path) -> None:
    with ResultWriter(tmp_path):
        pass
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / RESULTS_NAME).stat().st_mode & 0o777 == 0o666 & ~umask


def test_unwritable_folder_raises_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputError, match=str(blocker / "out")):
        ResultWriter(blocker / "out")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder_raises_output_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(OutputError, match=str(folder)):
        ResultWriter(folder)


def test_mismatched_score_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError), ResultWriter(tmp_path) as writer:
        writer.add(["a_chunk_1F1"], _f32(0.1, 0.2), _f32(0.9))
    assert list(tmp_path.iterdir()) == []


_KILLED_WRITER = """
import os, signal, sys
import numpy as np
from virnucpro.stages.write import ResultWriter
writer = ResultWriter(sys.argv[1], spill_rows=1)
writer.add(["a_chunk_1F1", "b_chunk_1F1", "c_chunk_1F1"], np.zeros(3, np.float32), np.ones(3, np.float32))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_runs_spill_files_are_removed_by_the_next_runs_cleanup(tmp_path: Path) -> None:
    """A run killed mid-way leaves its spill runs and result temporaries; they carry its pid,
    so the next run's clean-up removes them, and keeps those of a run still alive (this one)."""
    from virnucpro.layout import remove_stale_temporaries

    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], check=False)
    assert killed.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert any(name.startswith(".highestscore-run.") for name in left), left
    assert all(name.endswith(".tmp") for name in left), left
    with ResultWriter(tmp_path, spill_rows=1) as writer:
        writer.add(["d_chunk_1F1", "e_chunk_1F1"], _f32(1, 0), _f32(0, 1))
        ours = [p.name for p in tmp_path.iterdir()
                if p.name.startswith(".highestscore-run.") and p.name not in left]
        assert ours and all(f".{os.getpid()}." in name for name in ours)
        before = {p.name for p in tmp_path.iterdir()}
        remove_stale_temporaries(tmp_path)
        assert {p.name for p in tmp_path.iterdir()} == before - set(left)  # the killed run's only
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([RESULTS_NAME, HIGHEST_NAME])


def test_temporary_names_hold_the_pid_as_their_only_number(tmp_path: Path, monkeypatch) -> None:
    """A random part of all digits would read as a pid to the clean-up."""
    import secrets

    monkeypatch.setattr(secrets, "token_hex", lambda n: "1" * (2 * n))
    for name in ("highestscore-run", RESULTS_NAME):
        path, handle = open_temp(tmp_path, name)
        handle.close()
        assert [part for part in path.name.split(".") if part.isdigit()] == [str(os.getpid())]


def test_crash_between_the_two_renames_leaves_no_mismatched_pair(tmp_path: Path, monkeypatch) -> None:
    """An earlier run's pair; this run dies after its results are in place but before its
    table is: the folder must not hold new results beside the old table."""
    (tmp_path / RESULTS_NAME).write_text("earlier results\n")
    (tmp_path / HIGHEST_NAME).write_text("earlier table\n")
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == HIGHEST_NAME:
            raise OSError(5, "Input/output error")  # the crash, as far as the files can tell
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError), ResultWriter(tmp_path) as writer:
        writer.add(["a_chunk_1F1"], _f32(0.25), _f32(0.75))
    assert (tmp_path / RESULTS_NAME).read_text().startswith("Sequence_ID")
    assert not (tmp_path / HIGHEST_NAME).exists()
