"""Bad input through the CLI: one clear line naming the file and the problem, a non-zero
exit, and no partial output left behind (SPEC section 6 and the project's standards)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from virnucpro.cli import main

GOOD = "ATGGCTAAAGCTGGTCTGAAACGTATCGCTGAAGAACTGCGTGGTAAA" * 4


def run(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def demo_args(path: Path, *extra: str) -> list[str]:
    return ["predict", str(path), "-m", "300", "--demo", "--keep-intermediate", *extra]


def left_behind(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("virnucpro: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_empty_record_is_skipped_with_a_warning(tmp_path, capsys):
    sample = tmp_path / "s.fa"
    sample.write_text(f">first\n{GOOD}\n>hollow some description\n>last\n{GOOD}\n")
    code, err = run(demo_args(sample), capsys)
    assert code == 0
    assert "'hollow'" in err and "empty" in err
    rows = (tmp_path / "s_merged" / "prediction_results.txt").read_text().splitlines()[1:]
    assert {r.split("_chunk_")[0] for r in rows} == {"first", "last"}


def test_duplicate_ids_refused_before_any_work(tmp_path, capsys):
    sample = tmp_path / "dups.fa"
    sample.write_text(f">a\n{GOOD}\n>b x\n{GOOD}\n>a other\n{GOOD}\n>b\n{GOOD}\n>c\n{GOOD}\n")
    code, err = run(demo_args(sample), capsys)
    assert code == 2
    line = error_line(err)
    assert str(sample) in line and "(a, b)" in line
    assert left_behind(tmp_path, {"dups.fa"}) == []


def test_no_kept_frame_gives_header_only_results(tmp_path, capsys):
    sample = tmp_path / "n.fa"
    sample.write_text(">allN\n" + "N" * 400 + "\n>tiny\nAC\n")
    code, err = run(demo_args(sample), capsys)
    assert code == 0
    assert "no chunk has a stop-free reading frame" in err
    out = tmp_path / "n_merged"
    assert (out / "prediction_results.txt").read_text() == "Sequence_ID\tPrediction\tscore1\tscore2\n"
    assert (out / "prediction_results_highestscore.csv").read_text() == "Modified_ID\tIs_Virus\n"


@pytest.mark.parametrize("content,problem", [
    (b"hello, this is a text file\nnot a sequence file\n", "FASTA"),
    (bytes(range(256)) * 4, ""),
    (gzip.compress(b"@r1\nACGT\n+\nII\n"), ""),  # FASTQ quality shorter than the sequence
])
def test_unreadable_inputs(tmp_path, capsys, content, problem):
    sample = tmp_path / "bad.fa"
    sample.write_bytes(content)
    code, err = run(demo_args(sample), capsys)
    assert code == 2
    line = error_line(err)
    assert str(sample) in line and problem in line
    assert left_behind(tmp_path, {"bad.fa"}) == []


def test_input_broken_late_leaves_no_partial_output(tmp_path, capsys):
    """A malformed record after many good ones: the run has started, yet nothing remains.
    (After the first 1,000 records, which are read before the run starts.)"""
    sample = tmp_path / "late.fq"
    good = "".join(f"@r{i}\n{GOOD}\n+\n{'I' * len(GOOD)}\n" for i in range(1100))
    sample.write_text(good + "@broken\nACGT\n+\nII\n")
    code, err = run(["predict", str(sample), "-m", "300", "--demo", "--keep-intermediate"], capsys)
    assert code == 2 and str(sample) in error_line(err)
    assert left_behind(tmp_path, {"late.fq"}) == []


def test_missing_input(tmp_path, capsys):
    code, err = run(demo_args(tmp_path / "nope.fa"), capsys)
    assert code == 2 and "nope.fa" in error_line(err)
    assert left_behind(tmp_path, set()) == []


def test_directory_as_input(tmp_path, capsys):
    (tmp_path / "d.fa").mkdir()
    code, err = run(demo_args(tmp_path / "d.fa"), capsys)
    assert code == 2 and "d.fa" in error_line(err)


def test_unwritable_output_folder(tmp_path, capsys):
    sample = tmp_path / "s.fa"
    sample.write_text(f">a\n{GOOD}\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run(demo_args(sample, "-o", str(blocker / "out")), capsys)
    assert code == 3 and str(blocker / "out") in error_line(err)
    assert left_behind(tmp_path, {"s.fa", "file"}) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder(tmp_path, capsys):
    sample = tmp_path / "s.fa"
    sample.write_text(f">a\n{GOOD}\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, err = run(demo_args(sample, "-o", str(locked)), capsys)
    assert code == 3 and str(locked) in error_line(err)


def test_missing_models_say_where_and_how(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("VIRNUCPRO_HOME", str(tmp_path / "home"))
    sample = tmp_path / "s.fa"
    sample.write_text(f">a\n{GOOD}\n")
    code, err = run(["predict", str(sample)], capsys)
    assert code == 4
    line = error_line(err)
    for expected in ("ESM-2", str(tmp_path / "torch"), "DNABERT-S", "zhihan1996/DNABERT-S",
                     "classifier", str(tmp_path / "home" / "500_model.pth"), "models download", "--demo"):
        assert expected in line
    assert left_behind(tmp_path, {"s.fa"}) == []


def test_corrupt_and_wrong_model_files(tmp_path, capsys, tiny_models):
    sample = tmp_path / "s.fa"
    sample.write_text(f">a\n{GOOD}\n")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    wrong = tiny_models.dnabert / "pytorch_model.bin"  # a DNABERT-S state dict, not ESM-2
    for bad in (garbage, wrong):
        code, err = run(["predict", str(sample), "-m", "300", "--demo", "--esm-model", str(bad)], capsys)
        assert code == 4 and str(bad) in error_line(err)
    code, err = run(["predict", str(sample), "-m", "300", "--demo", "--classifier", str(garbage)], capsys)
    assert code == 4 and str(garbage) in error_line(err)
    assert left_behind(tmp_path, {"s.fa", "garbage.pt"}) == []


def test_incompatible_classifier(tmp_path, capsys, tiny_models):
    """The real-size classifier expects 3328 features; tiny encoders give 128."""
    from virnucpro.models.formats import save_released_classifier

    big, _ = save_released_classifier(tmp_path / "clf", input_dim=3328, hidden_dim=8)
    sample = tmp_path / "s.fa"
    sample.write_text(f">a\n{GOOD}\n")
    code, err = run(["predict", str(sample), "-m", "300", "--demo", "--classifier", str(big)], capsys)
    assert code == 4 and "3328" in error_line(err)


def test_conflicting_chunk_lengths(tmp_path, capsys):
    sample = tmp_path / "s.fa"
    sample.write_text(f">a\n{GOOD}\n")
    code, err = run(["predict", str(sample), "300", "-m", "500", "--demo"], capsys)
    assert code == 2 and "chunk length" in error_line(err)


def test_empty_file_is_an_error(tmp_path, capsys):
    sample = tmp_path / "empty.fa"
    sample.write_bytes(b"")
    code, err = run(demo_args(sample), capsys)
    assert code == 2 and "empty.fa" in error_line(err) and "no sequences" in error_line(err)
    assert left_behind(tmp_path, {"empty.fa"}) == []


def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path, capsys):
    from virnucpro.layout import LOCK_NAME
    from virnucpro.store import RunLock

    sample = tmp_path / "s.fa"
    sample.write_text(f">a\n{GOOD}\n")
    out = tmp_path / "out"
    out.mkdir()
    with RunLock(out / LOCK_NAME):  # as a run in progress holds it
        code, err = run(demo_args(sample, "-o", str(out)), capsys)
    assert code == 3 and "another virnucpro run" in error_line(err)
    assert run(demo_args(sample, "-o", str(out)), capsys)[0] == 0  # free again afterwards
    assert not (out / LOCK_NAME).exists()


def test_duplicate_ids_stop_worker_processes_and_leave_nothing(tmp_path, capsys):
    """The id check runs while worker processes load: a duplicate still exits 2 with no
    output, and the workers are stopped (the run returns, nothing is left running)."""
    import multiprocessing

    sample = tmp_path / "dups.fa"
    sample.write_text(f">a\n{GOOD}\n>a\n{GOOD}\n")
    code, err = run(demo_args(sample) + ["--devices", "cpu,cpu"], capsys)
    assert code == 2 and "(a)" in error_line(err)
    assert left_behind(tmp_path, {"dups.fa"}) == []
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("virnucpro-worker")]


def test_id_check_runs_while_the_models_load(tmp_path, monkeypatch):
    """The duplicate-id pass reads the whole input; the workers must be loading meanwhile.
    Here a worker's model loading cannot finish until the id check has begun: in the old
    order (models first, then the check) the worker gives up waiting and the run fails."""
    import threading

    from virnucpro import pipeline
    from virnucpro.config import RunConfig
    from virnucpro.monitoring.events import Monitor
    from virnucpro.predict import task as frame_task

    checking = threading.Event()
    real_factory, real_check = frame_task.make_frame_task, pipeline.check_unique_ids

    def factory(config, device):
        assert checking.wait(10), "models loaded before the id check began"
        return real_factory(config, device)

    def check(path):
        checking.set()
        return real_check(path)

    monkeypatch.setattr(pipeline, "check_unique_ids", check)
    sample = tmp_path / "s.fa"
    sample.write_text(f">a\n{GOOD}\n>b\n{GOOD}\n")
    config = RunConfig(input=sample, chunk_len=300, out_dir=tmp_path / "out", devices="cpu", demo=True)
    outcome = pipeline.run(config, Monitor(), task_factory=factory)
    assert outcome.frames > 0
