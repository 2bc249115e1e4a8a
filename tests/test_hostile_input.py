"""Input that is not DNA, RNA, and an input that changes while a run reads it: a clear error
(exit 2) naming the file, the record and the first bad position, and no result files."""

from __future__ import annotations

from pathlib import Path

import pytest

from virnucpro import pipeline
from virnucpro.cli import main
from virnucpro.config import RunConfig
from virnucpro.errors import InputError
from virnucpro.monitoring.events import Monitor

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ecoli_reads150.fa"
DNA = "ATGGCTAGCAAGGAGCTGTTCACCGGCATCGTGCCCATCCTGGTCGAGCTGGACGGCGACGTAAACGGCCACAAGTTCAGCGTG"


def run_cli(path: Path, *extra: str) -> int:
    return main(["predict", str(path), "-m", "300", "--demo", "-q", "--devices", "cpu", *extra])


@pytest.mark.parametrize("text, record, position, line, hint", [
    (">p1 a protein\nMKVLAAGIVGLLLAEF\n", "p1", 4, 2, "protein"),  # M, K and V are IUPAC codes
    (f">d1\n{DNA}\n>d2\n{DNA[:20]}\n@read7\n{DNA[:10]}\n+\nIIIIIIIIII\n", "d2", 21, 5, "FASTQ"),
    (f">d1\n{DNA[:30]}\n{DNA[:12]}1{DNA[:5]}\n", "d1", 43, 3, "digits"),
    (f">d1\n{DNA[:30]}*\n", "d1", 31, 2, "protein"),
    (f">d1\n{DNA}\n >d2 indented\n{DNA}\n", "d1", len(DNA) + 1, 3, "indented"),
    (f">d1\n{DNA[:10]}--{DNA[:10]}\n", "d1", 11, 2, "gaps"),
    (f"@q1\n{DNA[:10]}E{DNA[:3]}\n+\n{'I' * 14}\n", "q1", 11, None, "protein"),
])
def test_what_is_not_dna_is_refused_naming_record_and_position(tmp_path, capsys, text, record, position,
                                                               line, hint):
    path = tmp_path / "in.fa"
    path.write_text(text)
    assert run_cli(path) == 2
    err = capsys.readouterr().err
    assert str(path) in err and f"record {record!r}" in err and f"at base {position} " in err
    assert hint in err
    if line is not None:
        assert f"line {line})" in err
    assert not (tmp_path / "in_merged").exists()


def test_lower_case_and_iupac_codes_are_dna(tmp_path):
    path = tmp_path / "in.fa"
    path.write_text(f">a\n{DNA.lower()}\n>b\n{DNA[:40]}RYSWKMBDHVN{DNA[40:]}\n")
    assert run_cli(path) == 0


def rna_input(tmp_path: Path, name: str, t_or_u: str) -> Path:
    lines = EXAMPLE.read_text().splitlines()[:40]
    for i in range(1, 40, 2):
        if i in (1, 5):  # two records read as RNA
            lines[i] = lines[i].replace("T", t_or_u)
    path = tmp_path / name / "reads.fa"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rna_is_read_as_the_original_reads_it_with_a_warning_naming_the_records(tmp_path, capsys):
    path = rna_input(tmp_path, "u", "U")
    assert main(["predict", str(path), "-m", "300", "--demo", "--devices", "cpu"]) == 0
    err = capsys.readouterr().err
    first, second = (EXAMPLE.read_text().splitlines()[i][1:].split()[0] for i in (0, 4))
    assert "2 record(s) hold U" in err and first in err and second in err and "--rna-as-dna" in err


def test_rna_as_dna_reads_u_as_t(tmp_path):
    as_t = rna_input(tmp_path, "t", "T")
    as_u = rna_input(tmp_path, "u", "U")
    assert run_cli(as_t) == 0 and run_cli(as_u, "--rna-as-dna") == 0
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv"):
        assert (as_u.parent / "reads_merged" / name).read_bytes() == (as_t.parent / "reads_merged" / name).read_bytes()


class GrowsWhenTheRunStarts(Monitor):
    """Appends a record to the input the moment the run begins reading it, as an upstream
    step still writing the file would: here one that repeats an id."""

    def __init__(self, path: Path, record: str) -> None:
        super().__init__()
        self.path, self.record = path, record

    def emit(self, kind, **data):
        if kind == "run_started":
            with open(self.path, "a") as handle:
                handle.write(self.record)
        super().emit(kind, **data)


def test_an_input_that_grows_during_the_run_is_an_error_leaving_no_results(tmp_path):
    path = tmp_path / "reads.fa"
    lines = EXAMPLE.read_text().splitlines()[:40]
    path.write_text("\n".join(lines) + "\n")
    first_id = lines[0][1:].split()[0]
    config = RunConfig(input=path, chunk_len=300, demo=True, devices="cpu", shard_tokens=600)
    with pytest.raises(InputError, match=r"changed while virnucpro was reading it \(20 records when the run "
                                         r"began, 21 read now\)"):
        pipeline.run(config, GrowsWhenTheRunStarts(path, f">{first_id}\n{DNA}\n"))
    left = list((tmp_path / "reads_merged").iterdir()) if (tmp_path / "reads_merged").exists() else []
    assert not [p for p in left if p.name.startswith("prediction_results")] and not any(
        p.name == ".virnucpro_store" for p in left)


def test_an_input_rewritten_in_place_during_the_run_is_an_error(tmp_path):
    path = tmp_path / "reads.fa"
    path.write_text("\n".join(EXAMPLE.read_text().splitlines()[:40]) + "\n")
    config = RunConfig(input=path, chunk_len=300, demo=True, devices="cpu", shard_tokens=600)

    class Touches(Monitor):
        def emit(self, kind, **data):
            if kind == "run_started":  # same records, but the file is not the one checked
                path.write_text(path.read_text())
            super().emit(kind, **data)

    with pytest.raises(InputError, match="changed while virnucpro was reading it"):
        pipeline.run(config, Touches())
