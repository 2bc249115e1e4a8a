"""A CLI that fits habits (issue 13.6): grouped --help, -t/--threads, `-` for standard input,
the -m 300 hint, `models info`'s exit code is in test_models_cli.py, result folder names, and
a run that refuses to replace the results of another input."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import fault_tasks
import pytest
import torch

from virnucpro import pipeline
from virnucpro.cli import main
from virnucpro.config import RunConfig
from virnucpro.engine.scheduler import Engine, Job
from virnucpro.errors import EXIT_CODES, CheckpointMismatch
from virnucpro.layout import OUTPUT_FILES, output_prefix
from virnucpro.monitoring.events import Monitor
from virnucpro.stages.read import SAMPLE_BASES, SAMPLE_RECORDS, check_input_opens

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ecoli_reads150.fa"
CPU = torch.device("cpu")


def reads(records: int = 60) -> list[tuple[str, str]]:
    """(title, sequence) of the example's first reads (one-line FASTA)."""
    lines = EXAMPLE.read_text().splitlines()[: 2 * records]
    return [(lines[i][1:], lines[i + 1]) for i in range(0, len(lines), 2)]


def as_fasta(records) -> str:
    return "".join(f">{title}\n{seq}\n" for title, seq in records)


def as_fastq(records) -> str:
    return "".join(f"@{title}\n{seq}\n+\n{'I' * len(seq)}\n" for title, seq in records)


def predict(path, *extra: str) -> int:
    return main(["predict", str(path), "-m", "300", "--demo", "-q", *extra])


class FakeStdin:
    """sys.stdin as a pipe (or a terminal) holding `data`."""

    def __init__(self, data: bytes, terminal: bool = False) -> None:
        self.buffer = io.BytesIO(data)
        self._terminal = terminal

    def isatty(self) -> bool:
        return self._terminal


# --------------------------------------------------------------------------- result folder names


@pytest.mark.parametrize("name, prefix", [
    ("x.fa", "x"), ("x.fasta", "x"), ("d/x.fa.gz", "d/x"), ("x.fas", "x"),  # the original's rule
    ("/data/my.fa.d/x.fasta", "/data/my"),  # ... to the letter: the FIRST '.fa' of the path
    ("x.fastq", "x"), ("x.fq.gz", "x"), ("reads.R1.fastq.gz", "reads.R1"), ("X.FASTQ.GZ", "X"),
    ("x.FA", "x"), ("/data/my.fa.d/x.fq", "/data/my.fa.d/x"), ("sample", "sample"), ("x.gz", "x"),
    ("-", "stdin"),
])
def test_result_folder_prefix(name, prefix):
    assert output_prefix(Path(name)) == prefix


# --------------------------------------------------------------------------- FASTQ, gzip, stdin


def test_fastq_gzip_and_stdin_give_the_same_summary(tmp_path, monkeypatch):
    records = reads()
    runs = {"a/x.fa": as_fasta(records).encode(), "b/x.fastq": as_fastq(records).encode(),
            "c/x.fq.gz": gzip.compress(as_fastq(records).encode())}
    for name, data in runs.items():
        (tmp_path / name).parent.mkdir()
        (tmp_path / name).write_bytes(data)
        assert predict(tmp_path / name) == 0
    folders = [tmp_path / d / "x_merged" for d in "abc"]  # x.fastq and x.fq.gz: x_merged too
    # standard input through a real pipe, gzip told by its content; results in ./stdin_merged
    (tmp_path / "d").mkdir()
    piped = subprocess.run([sys.executable, "-m", "virnucpro", "predict", "-", "-m", "300", "--demo", "-q"],
                           input=runs["c/x.fq.gz"], cwd=tmp_path / "d", capture_output=True, timeout=300)
    assert piped.returncode == 0, piped.stderr.decode()
    folders.append(tmp_path / "d" / "stdin_merged")
    for name in ("prediction_summary.tsv", "viral_sequences.fa", "prediction_results.txt",
                 "prediction_results_highestscore.csv"):
        contents = {(folder / name).read_bytes() for folder in folders}
        assert len(contents) == 1, name
    summaries = [json.loads((folder / "run_summary.json").read_text()) for folder in folders]
    assert len({json.dumps(s["sequences"]) for s in summaries}) == 1
    assert summaries[0]["sequences"]["records"] == len(records)
    stdin_summary = summaries[-1]
    assert stdin_summary["input"] == "standard input" and stdin_summary["parameters"]["input"] == "standard input"
    assert stdin_summary["input_source"].startswith("standard input|sha256:")
    assert "Input standard input," in (folders[-1] / "report.html").read_text()
    assert not list(folders[-1].glob(".*"))  # the copy of standard input is gone


def test_stdin_in_process_with_an_output_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", FakeStdin(as_fasta(reads(20)).encode()))
    monkeypatch.chdir(tmp_path)
    assert predict("-", "-o", "out", "--keep-intermediate") == 0
    assert (tmp_path / "out" / "prediction_summary.tsv").is_file() and not (tmp_path / "stdin_merged").exists()
    # intermediates are named after standard input's prefix, not after the spool
    assert sorted(p.name for p in (tmp_path / "out").glob("stdin_*")) == [
        "stdin_chunked300.fa", "stdin_identified_nucleotide.fa", "stdin_identified_protein.faa"]
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_stdin_that_is_a_terminal_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", FakeStdin(b"", terminal=True))
    monkeypatch.chdir(tmp_path)
    assert predict("-") == 2
    assert "standard input is a terminal" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("data, problem", [
    (b">p1\nMKVLAAGIVGLLLAQPAMA\n", "protein letters"),
    (b"", "no sequences"),
    (gzip.compress(b">a\nACGT\n")[:-6], "gzip"),
])
def test_bad_stdin_is_named_as_standard_input(tmp_path, monkeypatch, capsys, data, problem):
    monkeypatch.setattr(sys, "stdin", FakeStdin(data))
    monkeypatch.chdir(tmp_path)
    assert predict("-") == 2
    error = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error) == 1 and error[0].startswith("virnucpro: error: standard input") and problem in error[0]
    assert ".tmp" not in error[0]
    assert list(tmp_path.iterdir()) == []  # neither the copy nor the folder is left


# --------------------------------------------------------------------------- results of another input


def never_loads(config, device):
    raise AssertionError("the models were loaded before the run was refused")


def test_results_of_another_input_are_refused_unless_forced(tmp_path, capsys):
    first, second = tmp_path / "a.fq", tmp_path / "b.fastq"
    first.write_text(as_fastq(reads(20)))
    second.write_text(as_fastq(reads(30)))
    out = tmp_path / "out"
    assert predict(first, "-o", str(out)) == 0
    before = (out / "prediction_summary.tsv").read_bytes()
    capsys.readouterr()
    assert predict(second, "-o", str(out)) == 5
    error = capsys.readouterr().err
    assert str(first.resolve()) in error and str(second.resolve()) in error and "--force" in error
    assert (out / "prediction_summary.tsv").read_bytes() == before  # untouched
    # decided before any model loads
    refused = RunConfig(input=second, chunk_len=300, out_dir=out, devices="cpu", demo=True)
    with pytest.raises(CheckpointMismatch):
        pipeline.run(refused, Monitor(), task_factory=never_loads)
    assert predict(first, "-o", str(out)) == 0  # the same input again: fine
    assert predict(second, "-o", str(out), "--force") == 0
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["input"] == str(second) and summary["sequences"]["records"] == 30
    assert any("replacing the results of" in w and str(first.resolve()) in w for w in summary["warnings"])


def test_results_of_other_standard_input_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", FakeStdin(as_fasta(reads(20)).encode()))
    assert predict("-") == 0
    monkeypatch.setattr(sys, "stdin", FakeStdin(as_fasta(reads(20)).encode()))
    assert predict("-") == 0  # the same data again
    monkeypatch.setattr(sys, "stdin", FakeStdin(as_fasta(reads(25)).encode()))
    assert predict("-") == 5
    assert "standard input, content" in capsys.readouterr().err
    assert not list((tmp_path / "stdin_merged").glob(".*.tmp"))


def test_results_without_a_summary_are_replaced_as_before(tmp_path):
    """The original's result folder (no run_summary.json) cannot tell its input: as before."""
    sample = tmp_path / "x.fa"
    sample.write_text(as_fasta(reads(10)))
    (tmp_path / "x_merged").mkdir()
    (tmp_path / "x_merged" / "prediction_results.txt").write_text("Sequence_ID\tPrediction\tscore1\tscore2\n")
    assert predict(sample) == 0


# --------------------------------------------------------------------------- -t/--threads


def test_threads_reach_every_cpu_worker_and_are_given_back():
    before = torch.get_num_threads()
    for devices in ([CPU], [CPU, CPU]):
        with Engine(fault_tasks.thread_count, devices, cpu_threads=1) as engine:
            engine.launch()
            engine.wait_ready()
            out = list(engine.run(Job(i, 1, i, f"job {i}") for i in range(6)))
        assert [threads for _, threads in out] == [1] * 6, devices
        assert torch.get_num_threads() == before


def test_threads_are_in_the_fingerprint_of_cpu_runs_only(tmp_path):
    from test_resume_truth import config as resume_config
    from test_resume_truth import interrupted, sample

    path = sample(tmp_path)
    interrupted(resume_config(path, threads=1))
    with pytest.raises(CheckpointMismatch, match=r"-t/--threads \(on the CPU\): 1 then, 2 now"):
        pipeline.run(resume_config(path, threads=2), Monitor(), task_factory=never_loads)
    on_gpu = RunConfig(input=path).fingerprint_parameters({}, "input", "bfloat16", None, cpu_threads=None)
    assert "cpu_threads" not in on_gpu


def test_threads_option_runs(tmp_path):
    sample = tmp_path / "x.fa"
    sample.write_text(as_fasta(reads(10)))
    assert predict(sample, "-t", "1") == 0
    assert json.loads((tmp_path / "x_merged" / "run_summary.json").read_text())["parameters"]["threads"] == 1


# --------------------------------------------------------------------------- the -m 300 hint


def test_m500_on_short_reads_hints_m300(tmp_path, capsys):
    sample = tmp_path / "x.fa"
    sample.write_text(as_fasta(reads(40)))
    assert main(["predict", str(sample), "--demo", "-o", str(tmp_path / "a")]) == 0
    hint = [line for line in capsys.readouterr().err.splitlines() if "-m 300" in line]
    assert len(hint) == 1 and "40 of the first 40 records" in hint[0] and "shorter than 300 bp" in hint[0]
    assert predict(sample, "-o", str(tmp_path / "b")) == 0  # -m 300: no hint
    assert "-m 300" not in capsys.readouterr().err


def test_the_hint_judges_the_first_records_only(tmp_path):
    many = tmp_path / "many.fa"
    many.write_text("".join(f">r{i}\nACGTACGTAC\n" for i in range(SAMPLE_RECORDS + 500)))
    assert len(check_input_opens(many)) == SAMPLE_RECORDS
    long = tmp_path / "long.fa"
    long.write_text("".join(f">c{i}\n{'ACGT' * (SAMPLE_BASES // 8)}\n" for i in range(5)))
    assert check_input_opens(long) == [SAMPLE_BASES // 2] * 2  # stops once SAMPLE_BASES are read


# --------------------------------------------------------------------------- calls options


def test_call_options_pass_through_and_leave_the_originals_files_alone(tmp_path):
    sample = tmp_path / "x.fa"
    sample.write_text(as_fasta(reads(60)))
    assert predict(sample, "-o", str(tmp_path / "plain")) == 0
    assert predict(sample, "-o", str(tmp_path / "low"), "--threshold", "0", "--min-virus-fraction", "1") == 0
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "low" / name).read_bytes()
    summary = json.loads((tmp_path / "low" / "run_summary.json").read_text())
    assert summary["parameters"]["threshold"] == 0.0 and summary["parameters"]["min_virus_fraction"] == 1.0
    counts = summary["sequences"]
    assert counts["virus"] == counts["records"] - counts["no_frames"] - counts["skipped"] > 0  # every chunk >= 0


@pytest.mark.parametrize("option, value", [
    ("--threshold", "1.5"), ("--threshold", "-0.1"), ("--threshold", "nan"), ("--min-virus-fraction", "0"),
    ("--min-virus-fraction", "1.01"), ("-t", "0"), ("--threads", "two"),
])
def test_bad_option_values_are_one_line_and_exit_2(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as stopped:
        predict(tmp_path / "x.fa", option, value)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.strip().splitlines()) == 1 and option.lstrip("-") in err


# --------------------------------------------------------------------------- --help


def test_help_is_grouped_with_examples_outputs_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["predict", "--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    titles = ["input and output:", "per-sequence calls", "models:", "devices and speed:", "resume:",
              "monitoring and logging:", "examples:", "output files", "exit codes:"]
    positions = [text.index(title) for title in titles]
    assert positions == sorted(positions)
    for name, _ in OUTPUT_FILES:
        assert name in text
    for code, meaning in EXIT_CODES:
        assert f"  {code:<4}{meaning}" in text
    for readable in ("-m 300|500", "--precision auto|fp32|bf16|fp16", "-t N, --threads N", "-o DIR",
                     "--classifier FILE", "--dnabert-model DIR", "predict - -m 300"):
        assert readable in text
    assert "{" not in text.split("examples:")[0].replace("{prefix}", "")  # no {300,500} choice lists


# --------------------------------------------------------------------------- the log


def test_start_up_details_and_device_lines_only_with_verbose(tmp_path):
    sample = tmp_path / "x.fa"
    sample.write_text(as_fasta(reads(10)))
    quiet_log, verbose_log = tmp_path / "default.log", tmp_path / "verbose.log"
    assert predict(sample, "-o", str(tmp_path / "a"), "--monitor-interval", "0.01", "--log-file", str(quiet_log)) == 0
    assert predict(sample, "-o", str(tmp_path / "b"), "--monitor-interval", "0.01", "-v",
                   "--log-file", str(verbose_log)) == 0
    default = quiet_log.read_text()
    assert "ready after" not in default and "device cpu:" not in default  # a run under a minute
    assert "sequences called viral" in default
    verbose = verbose_log.read_text()
    assert "DEBUG cpu ready after" in verbose and "INFO device cpu:" in verbose
