"""Per-sequence calls (prediction_summary.tsv, viral_sequences.fa) against the original's own
outputs on the golden inputs, and the call rule on hand-made scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from golden import CHUNK_LENGTHS, GOLDEN_SETS, golden_case, read_score_table

from virnucpro.stages.calls import CallRule, SequenceCalls
from virnucpro.stages.chunk import chunk_starts
from virnucpro.stages.read import read_records


def run_calls(tmp_path: Path, source: Path, chunk_len: int, ids, s1, s2, rule=CallRule()):
    """The calls of `source`'s records given these frame scores (in input order)."""
    with SequenceCalls(tmp_path, rule) as calls:
        for record in read_records(source):
            calls.index.add(record, len(chunk_starts(len(record.seq), chunk_len)))
        for start in range(0, len(ids), 7):  # in pieces, as shards arrive
            calls.add_scores(ids[start:start + 7], s1[start:start + 7], s2[start:start + 7])
        counts = calls.finish(tmp_path / "summary.tsv", tmp_path / "viral.fa")
    rows = [line.split("\t") for line in (tmp_path / "summary.tsv").read_text().splitlines()[1:]]
    assert not list(tmp_path.glob(".*.tmp"))  # the spools are gone
    return counts, rows


@pytest.mark.parametrize("name", GOLDEN_SETS)
@pytest.mark.parametrize("chunk_len", CHUNK_LENGTHS)
def test_summary_agrees_with_the_originals_files(tmp_path, name, chunk_len):
    case = golden_case(name, chunk_len)
    ids, s1, s2 = read_score_table(case / "frame_probs.tsv", 0, 1, 2)
    counts, rows = run_calls(tmp_path, case / "input.fa", chunk_len, ids, s1, s2)
    records = list(read_records(case / "input.fa"))
    assert [r[0] for r in rows] == [r.id for r in records]  # every record once, in input order
    # the chunks per record, as the original's chunk file has them
    chunked = [r.id.rpartition("_chunk_")[0] for r in read_records(case / "chunked.fa")]
    assert [int(r[2]) for r in rows] == [chunked.count(r.id) for r in records]
    # no_frames: exactly the records none of whose chunks kept a frame in the original
    kept = {line[1:].rpartition("_chunk_")[0] for line in (case / "identified_nucleotide.fa").read_text().split()
            if line.startswith(">")}
    assert {r[0] for r in rows if r[8] == "no_frames"} == {r.id for r in records if r.seq and r.id not in kept}
    assert {r[0] for r in rows if r[8] == "skipped"} == {r.id for r in records if not r.seq}
    # virus chunks: the original's Is_Virus per chunk, counted per record
    table = [line.split("\t") for line in (case / "prediction_results_highestscore.csv").read_text().splitlines()[1:]]
    for row in rows:
        chunk_calls = [is_virus == "True" for chunk, is_virus in table if chunk.rpartition("_chunk_")[0] == row[0]]
        assert int(row[3]) == len(chunk_calls) and int(row[4]) == sum(chunk_calls)
    assert counts.records == len(records) == counts.virus + counts.others + counts.no_frames + counts.skipped
    viral_fasta = [r.id for r in read_records(tmp_path / "viral.fa")]
    assert viral_fasta == [r[0] for r in rows if r[8] == "virus"]


def frames(record: str, chunk: int, *s2: float):
    return [f"{record}_chunk_{chunk}F{i + 1}" for i in range(len(s2))], [1 - v for v in s2], list(s2)


def scores(*parts):
    ids, s1, s2 = [], [], []
    for a, b, c in parts:
        ids += a
        s1 += b
        s2 += c
    return ids, np.asarray(s1, np.float32), np.asarray(s2, np.float32)


@pytest.fixture
def three_records(tmp_path) -> Path:
    path = tmp_path / "in.fa"
    path.write_text(">a first record\n" + "ACGT" * 200 + "\n>b\n" + "ACGT" * 50 + "\n>c\n\n>d\nNNNN\n")
    return path


def test_fractions_scores_and_calls(tmp_path, three_records):
    # a: 3 chunks (800 bp at 300), chunk 1 virus (0.9), chunk 2 not (0.2 and 0.4), chunk 3 virus (0.6)
    ids, s1, s2 = scores(frames("a", 1, 0.9), frames("a", 2, 0.2, 0.4), frames("a", 3, 0.6), frames("b", 1, 0.3))
    counts, rows = run_calls(tmp_path, three_records, 300, ids, s1, s2)
    a, b, c, d = rows
    assert a == ["a", "800", "3", "3", "2", "0.6667", str(np.float32(0.9)),
                 str(np.float32((np.float32(0.9) + np.float32(0.4) + np.float32(0.6)) / 3)), "virus"]
    assert b[3:] == ["1", "0", "0.0000", str(np.float32(0.3)), str(np.float32(0.3)), "others"]
    assert c == ["c", "0", "0", "0", "0", "NA", "NA", "NA", "skipped"]
    assert d == ["d", "4", "1", "0", "0", "NA", "NA", "NA", "no_frames"]
    assert counts.as_dict() == {"records": 4, "virus": 1, "others": 1, "no_frames": 1, "skipped": 1}
    assert (tmp_path / "viral.fa").read_text() == ">a first record\n" + "".join(
        ("ACGT" * 200)[i:i + 60] + "\n" for i in range(0, 800, 60))


def test_min_fraction_and_threshold_change_the_calls(tmp_path, three_records):
    ids, s1, s2 = scores(frames("a", 1, 0.9), frames("a", 2, 0.2, 0.4), frames("a", 3, 0.6), frames("b", 1, 0.3))
    _, rows = run_calls(tmp_path, three_records, 300, ids, s1, s2, CallRule(min_virus_fraction=0.7))
    assert rows[0][8] == "others"
    _, rows = run_calls(tmp_path, three_records, 300, ids, s1, s2, CallRule(threshold=0.25))
    assert rows[0][4] == "3" and rows[1][4:6] == ["1", "1.0000"] and rows[1][8] == "virus"
