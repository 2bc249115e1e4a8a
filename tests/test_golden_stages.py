"""The CPU stages against files written by the ORIGINAL VirNucPro (byte for byte).

For each golden set and chunk length: input.fa -> chunks -> chunked.fa; chunks -> kept frames
-> identified_nucleotide.fa / identified_protein.faa; golden frame scores -> ResultWriter ->
prediction_results.txt / prediction_results_highestscore.csv. Plus the legacy run of the
original (real model scores) at L=500.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pytest
from golden import (
    CHUNK_LENGTHS,
    GOLDEN_SETS,
    SHARED_GOLDEN_DIR,
    VENDORED_GOLDEN_DIR,
    genome,
    golden_case,
    legacy_run,
    read_score_table,
    require,
)

from virnucpro.stages.chunk import iter_chunks
from virnucpro.stages.read import read_records
from virnucpro.stages.translate import select_frames
from virnucpro.stages.write import (
    HIGHEST_NAME,
    RESULTS_NAME,
    ResultWriter,
    write_chunks_fasta,
    write_frames_fasta,
)

CASES = [(name, length) for name in GOLDEN_SETS for length in CHUNK_LENGTHS]


def _chunks(fasta: Path, chunk_len: int):
    empty: list[str] = []
    chunks = list(iter_chunks(read_records(fasta), chunk_len, on_empty=empty.append))
    assert empty == []  # no golden input has an empty record (the original would crash)
    return chunks


def _chunk_fasta(chunks) -> bytes:
    out = io.StringIO()
    write_chunks_fasta(chunks, out)
    return out.getvalue().encode()


def _frame_fastas(frames) -> tuple[bytes, bytes]:
    nt, aa = io.StringIO(), io.StringIO()
    write_frames_fasta(frames, nt, aa)
    return nt.getvalue().encode(), aa.getvalue().encode()


def _write_results(out_dir: Path, ids, score1, score2, batch: int, spill_rows: int) -> None:
    with ResultWriter(out_dir, spill_rows=spill_rows) as writer:
        for i in range(0, len(ids), batch):
            writer.add(ids[i : i + batch], score1[i : i + batch], score2[i : i + batch])


@pytest.mark.parametrize("name, chunk_len", CASES)
def test_chunks_and_frames_match_original(name: str, chunk_len: int) -> None:
    folder = golden_case(name, chunk_len)
    chunks = _chunks(folder / "input.fa", chunk_len)
    assert _chunk_fasta(chunks) == (folder / "chunked.fa").read_bytes()
    nt, aa = _frame_fastas(select_frames(chunks))
    assert nt == (folder / "identified_nucleotide.fa").read_bytes()
    assert aa == (folder / "identified_protein.faa").read_bytes()


@pytest.mark.parametrize("name, chunk_len", CASES)
@pytest.mark.parametrize("spill_rows", [1_000_000, 37])  # in memory, and the external merge
def test_result_tables_match_original(name, chunk_len, spill_rows, tmp_path) -> None:
    folder = golden_case(name, chunk_len)
    ids, score1, score2 = read_score_table(folder / "frame_probs.tsv", 0, 1, 2)
    _write_results(tmp_path, ids, score1, score2, batch=257, spill_rows=spill_rows)
    for file_name in (RESULTS_NAME, HIGHEST_NAME):
        assert (tmp_path / file_name).read_bytes() == (folder / file_name).read_bytes(), file_name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([RESULTS_NAME, HIGHEST_NAME])


@pytest.mark.parametrize("name, chunk_len", CASES)
def test_frame_ids_match_scored_ids(name: str, chunk_len: int) -> None:
    """The golden scores are keyed by the frames the original kept: same ids, same order."""
    folder = golden_case(name, chunk_len)
    ids, _, _ = read_score_table(folder / "frame_probs.tsv", 0, 1, 2)
    frames = select_frames(_chunks(folder / "input.fa", chunk_len))
    assert [frame.id for frame in frames] == ids


LEGACY_INPUTS = ["test_fixed_500bp", "test_with_orfs"]


@pytest.mark.parametrize("prefix", LEGACY_INPUTS)
def test_legacy_run_intermediates(prefix: str) -> None:
    legacy = legacy_run()
    chunks = _chunks(legacy / f"{prefix}.fa", 500)
    assert _chunk_fasta(chunks) == (legacy / f"{prefix}_chunked500.fa").read_bytes()
    nt, aa = _frame_fastas(select_frames(chunks))
    assert nt == (legacy / f"{prefix}_identified_nucleotide.fa").read_bytes()
    assert aa == (legacy / f"{prefix}_identified_protein.faa").read_bytes()
    # Fewer than 10,000 frames: the original's per-split files hold the same records.
    assert nt == (legacy / f"{prefix}_nucleotide" / "output_1.fa").read_bytes()
    assert aa == (legacy / f"{prefix}_protein" / "output_1.fa").read_bytes()


@pytest.mark.parametrize("prefix", LEGACY_INPUTS)
def test_legacy_run_result_tables(prefix: str, tmp_path: Path) -> None:
    """Real 500_model.pth scores, as the original printed them, written back identically."""
    merged = legacy_run() / f"{prefix}_merged"
    ids, score1, score2 = read_score_table(merged / RESULTS_NAME, 0, 2, 3)
    _write_results(tmp_path, ids, score1, score2, batch=1, spill_rows=1_000_000)
    for file_name in (RESULTS_NAME, HIGHEST_NAME):
        assert (tmp_path / file_name).read_bytes() == (merged / file_name).read_bytes(), file_name


def test_example_reads_regenerate_identically() -> None:
    """examples/ecoli_reads150.fa is what examples/make_example_reads.py writes."""
    import importlib.util

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_example_reads", repo / "examples" / "make_example_reads.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    (record,) = read_records(genome(maker.GENOME.name))
    text = "".join(maker.example_reads(record.seq.upper(), record.id))
    assert text == (repo / "examples" / "ecoli_reads150.fa").read_text()


def _vendored_digests() -> dict[str, str]:
    """The `sha256  path` lines of the vendored subset's PROVENANCE.md."""
    text = (VENDORED_GOLDEN_DIR / "PROVENANCE.md").read_text()
    return {path: digest for digest, path in re.findall(r"^([0-9a-f]{64})  (\S+)$", text, re.M)}


def test_vendored_golden_files_are_the_ones_recorded() -> None:
    """What a clone without ../shared checks against: exactly the files PROVENANCE.md lists."""
    digests = _vendored_digests()
    files = sorted(str(p.relative_to(VENDORED_GOLDEN_DIR)) for p in VENDORED_GOLDEN_DIR.rglob("*")
                   if p.is_file() and p.name != "PROVENANCE.md")
    assert files == sorted(digests) and len(files) == 14
    for name, digest in digests.items():
        assert hashlib.sha256((VENDORED_GOLDEN_DIR / name).read_bytes()).hexdigest() == digest, name


def test_vendored_golden_files_are_unchanged_copies_of_the_shared_ones() -> None:
    require(SHARED_GOLDEN_DIR, "the shared golden folder")
    for name in _vendored_digests():
        assert (VENDORED_GOLDEN_DIR / name).read_bytes() == (SHARED_GOLDEN_DIR / name).read_bytes(), name
