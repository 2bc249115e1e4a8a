"""report.html opens with the results (issue 13.4): the calls counted, the score distribution
with the threshold marked, the top-scoring sequences of the whole input, and their chunks
drawn along their real bases; built here from result folders written by the stages' own
writers, so the expected values are computed independently of the report."""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from virnucpro.layout import chunk_spans
from virnucpro.monitoring import svg
from virnucpro.monitoring.report import SequenceScores, render_report, scan_summary
from virnucpro.stages.calls import CallRule, SequenceCalls
from virnucpro.stages.chunk import chunk_starts
from virnucpro.stages.read import read_records
from virnucpro.stages.write import ResultWriter

CHUNK = 500


def result_folder(folder: Path, lengths: list[int], *, seed: int = 0, threshold: float | None = None) -> Path:
    """A finished run's files for records r0.. of these lengths: one frame per chunk with random
    scores, except records whose index is a multiple of 7 (no kept frame)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    source = folder / "input.fa"
    source.write_text("".join(f">r{i} record {i}\n{'ACGT' * (n // 4) + 'A' * (n % 4)}\n" for i, n in enumerate(lengths)))
    ids = [f"r{i}_chunk_{c}F1" for i, n in enumerate(lengths) if i % 7
           for c in range(1, len(chunk_starts(n, CHUNK)) + 1)]
    s2 = rng.random(len(ids), dtype=np.float32)
    s1 = (1 - s2).astype(np.float32)
    with ResultWriter(folder) as writer, SequenceCalls(folder, CallRule(threshold=threshold)) as calls:
        for record in read_records(source):
            calls.index.add(record, len(chunk_starts(len(record.seq), CHUNK)))
        writer.add(ids, s1, s2)
        calls.add_scores(ids, s1, s2)
        writer.close()
        calls.finish(folder / "prediction_summary.tsv", folder / "viral_sequences.fa")
    summary = {"input": str(source), "parameters": {"chunk_len": CHUNK, "threshold": threshold,
                                                    "min_virus_fraction": 0.5},
               "versions": {"virnucpro": "x", "torch": "x", "python": "x"}, "devices": ["cpu"], "dtype": "float32",
               "frames": len(ids), "tokens": 0, "wall_seconds": 1.0, "stage_seconds": {}, "models": {},
               "warnings": []}
    (folder / "run_summary.json").write_text(json.dumps(summary))
    return folder


def rows(folder: Path) -> list[list[str]]:
    return [line.split("\t") for line in (folder / "prediction_summary.tsv").read_text().splitlines()[1:]]


def expected_top(folder: Path) -> list[str]:
    ranked = sorted(((float(r[6]), float(r[7]), int(r[1]), -i, r[0]) for i, r in enumerate(rows(folder))
                     if r[6] != "NA"), reverse=True)
    return [r[-1] for r in ranked]


def section(html: str, name: str) -> str:
    return re.search(rf"<section id='{name}'>(.*?)</section>", html, re.S).group(1)


def captions(html: str) -> list[str]:
    return re.findall(r"<figcaption>([^<]*)</figcaption>", html)


LENGTHS = [150 + (i * 977) % 6000 for i in range(300)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return result_folder(tmp_path_factory.mktemp("report") / "run", LENGTHS)


def test_the_page_opens_with_the_counts(folder):
    html = render_report(folder)
    assert html.index("<section id='results'>") < html.index("<section id='scores'>") < html.index(
        "<section id='top'>") < html.index("<section id='sequences'>") < html.index("<section id='run'>")
    calls = [r[8] for r in rows(folder)]
    results = section(html, "results")
    assert (f"{calls.count('virus'):,} of {len(LENGTHS):,} sequences called virus "
            f"({100 * calls.count('virus') / len(LENGTHS):.1f} %)") in results
    for call in ("virus", "others", "no_frames", "skipped"):
        assert f"<td>{call}</td><td class='n'>{calls.count(call):,}</td>" in results
    assert "best score2 is at least its best score1" in results and "at least 0.5 of its scored chunks" in results


def test_the_table_lists_the_top_scoring_sequences_of_the_whole_input(folder):
    html = render_report(folder)
    table = section(html, "top")
    listed = re.findall(r"<tr class='\w+'><td>([^<]*)</td>", table)
    assert listed == expected_top(folder)[:20]
    by_id = {r[0]: r for r in rows(folder)}
    first = by_id[listed[0]]
    assert (f"<td>{first[0]}</td><td class='n'>{int(first[1]):,}</td><td class='n'>{first[2]}</td>"
            f"<td class='n'>{first[3]}</td><td class='n'>{first[4]}</td><td class='n'>{first[5]}</td>"
            f"<td class='n'>{float(first[6]):.4f}</td>") in table
    assert captions(html) == listed[:5]  # the drawn sequences: the top ones, not the first five
    assert captions(render_report(folder, first_sequences=8)) == expected_top(folder)[:8]


def test_chunks_are_drawn_over_their_real_bases(folder):
    assert chunk_spans(700, 500) == [(0, 500), (349, 700)]  # SPEC 1's example
    seq = SequenceScores("x")
    seq.add(1, 0.2, 0.8)
    seq.add(2, 0.9, 0.1)
    assert seq.segments(500, 700) == [(0, 500, 0.8, svg.VIRUS), (349, 700, 0.9, svg.OTHER)]
    assert seq.segments(500) == [(0, 500, 0.8, svg.VIRUS), (500, 1000, 0.9, svg.OTHER)]  # length unknown
    # in the page: each drawn sequence's axis spans its length, its last chunk ends there
    html = render_report(folder)
    lengths = {r[0]: int(r[1]) for r in rows(folder)}
    for figure in re.findall(r"<figure class='sequence'>.*?</figure>", html, re.S):
        record = captions(figure)[0]
        x2 = [float(x) for x in re.findall(r'<line x1="[0-9.]+" x2="([0-9.]+)"[^>]*stroke-width="3"', figure)]
        assert max(x2) == 720 - svg.Plot.RIGHT, record  # px(length) on a 720-wide chart
        spans = chunk_spans(lengths[record], CHUNK)
        assert len(x2) <= len(spans)


def test_the_threshold_is_marked_and_colours_the_chunks(tmp_path):
    folder = result_folder(tmp_path / "run", LENGTHS[:60], threshold=0.7)
    html = render_report(folder)
    scores = section(html, "scores")
    assert scores.count('class="marker"') == 2 and ">threshold 0.7<" in scores and ">0.5: score2 = score1<" in scores
    assert "at least the threshold, 0.7 (--threshold)" in section(html, "results")
    best: dict[str, dict[int, list[float]]] = {}  # record -> chunk -> [max score1, max score2]
    for line in (folder / "prediction_results.txt").read_text().splitlines()[1:]:
        frame, _, s1, s2 = line.split("\t")
        record, _, chunk = frame[:-2].rpartition("_chunk_")
        pair = best.setdefault(record, {}).setdefault(int(chunk), [0.0, 0.0])
        pair[0], pair[1] = max(pair[0], float(np.float32(s1))), max(pair[1], float(np.float32(s2)))
    figures = re.findall(r"<figure class='sequence'>.*?</figure>", section(html, "sequences"), re.S)
    assert len(figures) == 5
    for figure in figures:
        record = captions(figure)[0]
        strokes = re.findall(r'stroke="(#[0-9a-f]+)" stroke-width="3"', figure)
        assert strokes == [svg.VIRUS if s2 >= 0.7 else svg.OTHER for _, (_, s2) in sorted(best[record].items())]


def test_a_folder_without_the_summary_table_still_reports(tmp_path):
    folder = result_folder(tmp_path / "run", LENGTHS[:40])
    (folder / "prediction_summary.tsv").unlink()
    html = render_report(folder)
    assert "<section id='top'>" not in html and "No prediction_summary.tsv in this folder" in html
    frames = [line.split("\t")[0] for line in (folder / "prediction_results.txt").read_text().splitlines()[1:]]
    assert captions(html) == list(dict.fromkeys(f.split("_chunk_")[0] for f in frames))[:5]
    assert "(lengths unknown)" in html


def test_scanning_the_summary_table_keeps_flat_memory(tmp_path):
    path = tmp_path / "summary.tsv"
    header = ("sequence_id\tlength\tchunks\tchunks_scored\tvirus_chunks\tvirus_fraction\tmax_virus_score\t"
              "mean_virus_score\tcall\n")

    def peak(n: int) -> int:
        rng = np.random.default_rng(n)
        path.write_text(header + "".join(f"s{i}\t{300 + i % 900}\t2\t2\t1\t0.5000\t{s:.6f}\t{s / 2:.6f}\tvirus\n"
                                         for i, s in enumerate(rng.random(n))))
        tracemalloc.start()
        scan = scan_summary(path, top=20)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(scan.top) == 20 and scan.records == n
        return top

    small, large = peak(5_000), peak(80_000)
    assert large < 2 * small  # 16x the rows, about the same memory
