"""report.html: one self-contained page about a finished run (inline SVG, inline CSS, no
scripts, nothing fetched), built from the files in the result folder, results first:
- what was found: the calls counted, the distribution of scores with the threshold marked,
  the top-scoring sequences of the whole input (prediction_summary.tsv), and the chunks of
  the best of them along their bases (prediction_results.txt);
- how the run went: parameters, start-up, GPU timelines and throughput (run_summary.json,
  gpu_metrics.jsonl).
Each file is streamed once with flat memory: counts, histograms, a bounded heap of the top
rows, and chunk scores only for the sequences drawn.

The per-sequence plot follows the original's drew_fig.py: along each sequence, one
horizontal segment per chunk at the chunk's best score, red for virus, dark blue for others;
but each chunk over the bases it really covers (chunks overlap, the last is often short),
where drew_fig.py put chunk i at (i-1)*L .. i*L. (Without prediction_summary.tsv, from an
older run, the lengths are unknown and drew_fig.py's positions are used.)
"""

from __future__ import annotations

import heapq
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from virnucpro.errors import InputError, OutputError
from virnucpro.layout import (
    METRICS_NAME,
    REPORT_NAME,
    RESULTS_NAME,
    SEQUENCES_NAME,
    SUMMARY_NAME,
    chunk_is_virus,
    chunk_spans,
    record_and_chunk,
    remove_quietly,
    write_text_atomic,
)
from virnucpro.monitoring import svg
from virnucpro.monitoring.events import Event, describe_startup
from virnucpro.monitoring.gpu import read_metrics

log = logging.getLogger("virnucpro")
SCORE_BINS = 40
TABLE_ROWS = 20  # top-scoring sequences listed
CALLS = ("virus", "others", "no_frames", "skipped")  # prediction_summary.tsv's call column
CALL_MEANINGS = {"virus": "called virus", "others": "called others (not virus)",
                 "no_frames": "not assessed: no chunk has a stop-free frame",
                 "skipped": "empty records, skipped"}


def _score_bin(score: float) -> int:
    return min(int(score * SCORE_BINS), SCORE_BINS - 1)


@dataclass
class SequenceScores:
    """Per chunk number: (max score1, max score2) over the chunk's frames."""

    id: str
    chunks: dict[int, list[float]] = field(default_factory=dict)

    def add(self, number: int, s1: float, s2: float) -> None:
        best = self.chunks.setdefault(number, [s1, s2])
        best[0], best[1] = max(best[0], s1), max(best[1], s2)

    def segments(self, chunk_len: int, length: int | None = None,
                 threshold: float | None = None) -> list[tuple[float, float, float, str]]:
        """(start, end, best score, colour) per chunk; start..end in bases when the
        sequence's length is known, else drew_fig.py's (i-1)*L .. i*L."""
        spans = chunk_spans(length, chunk_len) if length else []
        return [(*(spans[n - 1] if n <= len(spans) else ((n - 1) * chunk_len, n * chunk_len)), max(s1, s2),
                 svg.VIRUS if chunk_is_virus(s1, s2, threshold) else svg.OTHER)
                for n, (s1, s2) in sorted(self.chunks.items())]


@dataclass
class ResultScan:
    edges: list[float]
    counts: list[int]  # frames per score2 bin
    frames: int
    sequences: list[SequenceScores]
    missing: list[str]  # asked-for ids with no frame in the results


def scan_results(path: Path, *, first: int = 5, ids: Iterable[str] | None = None) -> ResultScan:
    """One streaming pass over prediction_results.txt: the score2 histogram over all frames,
    and chunk scores of the first `first` sequences, or of the sequences named in `ids`."""
    wanted = list(dict.fromkeys(ids)) if ids is not None else None
    wanted_set = set(wanted or ())
    counts = [0] * SCORE_BINS
    sequences: dict[str, SequenceScores] = {}
    frames = 0
    with open(path, encoding="utf-8") as handle:
        next(handle, None)  # header
        for line in handle:
            frame_id, _, a, b = line.rstrip("\n").split("\t")
            s2 = float(b)
            frames += 1
            counts[_score_bin(s2)] += 1
            parsed = record_and_chunk(frame_id)
            if parsed is None:
                continue
            record, number = parsed
            keep = record in wanted_set if wanted is not None else (
                record in sequences or len(sequences) < first)
            if keep:  # as float32, the values the per-sequence calls compared with --threshold
                sequences.setdefault(record, SequenceScores(record)).add(
                    number, float(np.float32(a)), float(np.float32(b)))
    order = wanted if wanted is not None else list(sequences)
    return ResultScan([i / SCORE_BINS for i in range(SCORE_BINS + 1)], counts, frames,
                      [sequences[r] for r in order if r in sequences],
                      [r for r in (wanted or []) if r not in sequences])


@dataclass(frozen=True)
class SequenceRow:
    """A row of prediction_summary.tsv."""

    id: str
    length: int
    chunks: int
    scored: int
    virus_chunks: int
    fraction: str  # as written: '0.6667' or 'NA'
    max_score: float | None  # None: no scored chunk
    mean_score: float | None
    call: str

    @classmethod
    def parse(cls, fields: dict[str, str]) -> "SequenceRow":
        def score(name: str) -> float | None:
            return None if fields[name] == "NA" else float(fields[name])
        return cls(fields["sequence_id"], int(fields["length"]), int(fields["chunks"]), int(fields["chunks_scored"]),
                   int(fields["virus_chunks"]), fields["virus_fraction"], score("max_virus_score"),
                   score("mean_virus_score"), fields["call"])


@dataclass
class SummaryScan:
    counts: dict[str, int]  # sequences per call
    by_call: dict[str, list[int]]  # 'virus' / 'others': scored sequences per bin of their max score
    top: list[SequenceRow]  # the highest-scoring sequences, best first
    named: dict[str, SequenceRow]  # the rows of the ids asked for

    @property
    def records(self) -> int:
        return sum(self.counts.values())


def scan_summary(path: Path, *, top: int, ids: Iterable[str] = ()) -> SummaryScan:
    """One streaming pass over prediction_summary.tsv: sequences per call, the histogram of
    scored sequences' max virus score by call, the `top` highest-scoring rows (a heap of
    `top` rows: flat memory on any input; ranked by max score, then mean score, then length,
    then input order) and the rows of `ids`."""
    wanted = set(ids)
    scan = SummaryScan(dict.fromkeys(CALLS, 0), {"virus": [0] * SCORE_BINS, "others": [0] * SCORE_BINS}, [], {})
    heap: list[tuple[tuple, SequenceRow]] = []
    for index, row in enumerate(_summary_rows(path)):
        scan.counts[row.call] = scan.counts.get(row.call, 0) + 1
        if row.id in wanted:
            scan.named[row.id] = row
        if row.max_score is None:
            continue
        scan.by_call.setdefault(row.call, [0] * SCORE_BINS)[_score_bin(row.max_score)] += 1
        rank = (row.max_score, row.mean_score, row.length, -index)  # unique: rows are never compared
        if len(heap) < top:
            heapq.heappush(heap, (rank, row))
        elif top and rank > heap[0][0]:
            heapq.heapreplace(heap, (rank, row))
    scan.top = [row for _, row in sorted(heap, reverse=True)]
    return scan


def _summary_rows(path: Path) -> Iterator[SequenceRow]:
    with open(path, encoding="utf-8") as handle:
        columns = next(handle, "").rstrip("\n").split("\t")
        for line in handle:
            yield SequenceRow.parse(dict(zip(columns, line.rstrip("\n").split("\t"))))


# --------------------------------------------------------------------------- sections


def _table(rows: Iterable[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _run_section(summary: dict | None) -> str:
    if summary is None:
        return "<section id='run'><h2>Run</h2><p>No run_summary.json in this folder.</p></section>"
    v = summary["versions"]
    rows = [("input", str(summary.get("input"))), ("devices", ", ".join(summary["devices"])),
            ("precision", str(summary.get("dtype"))), ("frames", f"{summary['frames']:,}"),
            ("tokens", f"{summary['tokens']:,}"), ("wall time", f"{summary['wall_seconds']:.1f} s"),
            ("versions", f"virnucpro {v['virnucpro']}, torch {v['torch']}, python {v['python']}")]
    rows += [(f"stage: {k}", f"{s:.2f} s") for k, s in summary["stage_seconds"].items()]
    rows += [(f"start-up: {device}", describe_startup(phases))
             for device, phases in summary.get("startup_seconds_per_device", {}).items()]
    rows += [(f"model: {k}", m["identity"]) for k, m in summary["models"].items()]
    warnings = "".join(f"<li>{escape(w)}</li>" for w in summary["warnings"]) or "<li>none</li>"
    return f"<section id='run'><h2>Run</h2>{_table(rows)}<h3>Warnings</h3><ul>{warnings}</ul></section>"


def _gpu_section(rows: list[dict]) -> str:
    if not rows:
        return ("<section id='gpu'><h2>GPU utilisation and memory</h2><p>No GPU metrics: "
                "a CPU run, or NVML was not available.</p></section>")
    devices = sorted({r["device"] for r in rows})
    def series(key: str, scale: float = 1.0):
        return [(d, [r["elapsed"] for r in rows if r["device"] == d],
                 [r[key] * scale for r in rows if r["device"] == d]) for d in devices]
    util = svg.line_chart(series("utilization"), title="GPU utilisation", x_label="seconds since start",
                          y_label="busy %", y_max=100)
    total = max(r["memory_total_mib"] for r in rows) / 1024
    memory = svg.line_chart(series("memory_used_mib", 1 / 1024), title="GPU memory",
                            x_label="seconds since start", y_label="memory used (GiB)", y_max=total)
    return (f"<section id='gpu'><h2>GPU utilisation and memory</h2><figure>{util}</figure>"
            f"<figure>{memory}</figure></section>")


def _throughput_section(summary: dict | None) -> str:
    per_device = (summary or {}).get("throughput_per_device", {})
    if not per_device:
        return "<section id='throughput'><h2>Throughput per device</h2><p>No shard was computed.</p></section>"
    tokens = svg.bar_chart([(d, t["tokens_per_s"]) for d, t in per_device.items()],
                           title="tokens per second", y_label="tokens/s")
    frames = svg.bar_chart([(d, t["frames_per_s"]) for d, t in per_device.items()],
                           title="frames per second", y_label="frames/s")
    gpu = (summary or {}).get("gpu", {})
    rows = "".join(
        f"<tr><td>{escape(d)}</td><td>{t['frames']:,}</td><td>{t['shards']}</td>"
        f"<td>{t['frames_per_s']:,.1f}</td><td>{t['tokens_per_s']:,.0f}</td>"
        f"<td>{'' if t['busy_percent'] is None else format(t['busy_percent'], '.0f')}</td>"
        f"<td>{format(gpu[d]['peak_memory_mib'] / 1024, '.1f') if d in gpu else ''}</td></tr>"
        for d, t in per_device.items())
    table = ("<table class='grid'><tr><th>device</th><th>frames</th><th>shards</th><th>frames/s</th>"
             f"<th>tokens/s</th><th>busy %</th><th>peak GiB</th></tr>{rows}</table>")
    return (f"<section id='throughput'><h2>Throughput per device</h2><figure class='bars'>{tokens}"
            f"</figure><figure class='bars'>{frames}</figure>{table}</section>")


@dataclass(frozen=True)
class CallingRule:
    """How the run called chunks and sequences (its --threshold and --min-virus-fraction)."""

    threshold: float | None = None
    min_virus_fraction: float = 0.5

    @classmethod
    def of(cls, summary: dict | None) -> "CallingRule":
        parameters = (summary or {}).get("parameters", {})
        return cls(parameters.get("threshold"), parameters.get("min_virus_fraction", 0.5))

    def describe(self) -> str:
        chunk = ("its best virus score (score2) is at least the threshold, "
                 f"{self.threshold:g} (--threshold)" if self.threshold is not None else
                 "its best score2 is at least its best score1, over its frames (the original's Is_Virus)")
        return (f"A chunk is virus when {chunk}; a sequence is called virus when at least "
                f"{self.min_virus_fraction:g} of its scored chunks are virus.")

    @property
    def marker(self) -> tuple[float, str]:
        if self.threshold is not None:
            return self.threshold, f"threshold {self.threshold:g}"
        return 0.5, "0.5: score2 = score1"


def _results_section(summary: dict | None, table: SummaryScan | None, frames: int, rule: CallingRule) -> str:
    counts = table.counts if table is not None else (summary or {}).get("sequences") or None
    if not counts:
        return (f"<section id='results'><h2>Results</h2><p>No {SEQUENCES_NAME} in this folder (a run of an "
                f"older version or of the original): per-frame results only, {frames:,} frames.</p></section>")
    records = sum(counts.get(call, 0) for call in CALLS)
    share = f" ({100 * counts.get('virus', 0) / records:.1f} %)" if records else ""
    rows = "".join(f"<tr><td>{call}</td><td class='n'>{counts.get(call, 0):,}</td><td>{CALL_MEANINGS[call]}</td></tr>"
                   for call in CALLS)
    demo = ("<p class='warning'>DEMO MODE: random stand-in models; these calls are not biologically "
            "meaningful.</p>" if _demo_models(summary) else "")
    return (f"<section id='results'><h2>Results</h2>{demo}<p class='headline'>{counts.get('virus', 0):,} of "
            f"{records:,} sequences called virus{share}</p><table class='grid'><tr><th>call</th><th>sequences</th>"
            f"<th></th></tr>{rows}</table><p>{escape(rule.describe())}</p>{_input_line(summary, frames)}</section>")


def _demo_models(summary: dict | None) -> bool:
    return any(m.get("identity") == "demo" for m in (summary or {}).get("models", {}).values())


def _input_line(summary: dict | None, frames: int) -> str:
    if summary is None:
        return f"<p>{frames:,} frames scored.</p>"
    chunk_len = summary.get("parameters", {}).get("chunk_len")
    return (f"<p>Input {escape(str(summary.get('input')))}, {chunk_len} bp chunks, {frames:,} frames scored; "
            f"per sequence: {SEQUENCES_NAME}.</p>")


def _scores_section(scan: ResultScan, table: SummaryScan | None, rule: CallingRule) -> str:
    charts = []
    if table is not None:
        layers = [("virus", table.by_call.get("virus", []), svg.VIRUS),
                  ("others", table.by_call.get("others", []), svg.OTHER)]
        charts.append(svg.histogram(scan.edges, layers, title="sequences by their best chunk's virus score",
                                    x_label="best virus score (score2) of the sequence's chunks, coloured by "
                                    "the sequence's call", y_label="sequences", marker=rule.marker))
    colors = [svg.VIRUS if lo >= 0.5 else svg.OTHER for lo in scan.edges[:-1]]
    charts.append(svg.histogram(scan.edges, [("frames", scan.counts, colors)], title="score distribution",
                                x_label="virus score (score2) per frame", y_label="frames",
                                marker=(0.5, "0.5: score2 = score1")))
    figures = "".join(f"<figure>{chart}</figure>" for chart in charts)
    return (f"<section id='scores'><h2>Distribution of scores</h2><p>{scan.frames:,} frames.</p>"
            f"{figures}</section>")


def _top_section(table: SummaryScan | None) -> str:
    if table is None:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("sequence", "length (bp)", "chunks", "scored", "virus chunks",
                                              "virus fraction", "max virus score", "mean virus score", "call"))
    rows = "".join(
        f"<tr class='{row.call}'><td>{escape(row.id)}</td><td class='n'>{row.length:,}</td>"
        f"<td class='n'>{row.chunks:,}</td><td class='n'>{row.scored:,}</td><td class='n'>{row.virus_chunks:,}</td>"
        f"<td class='n'>{row.fraction}</td><td class='n'>{row.max_score:.4f}</td><td class='n'>{row.mean_score:.4f}"
        f"</td><td>{row.call}</td></tr>" for row in table.top[:TABLE_ROWS])
    scored = table.records - table.counts.get("no_frames", 0) - table.counts.get("skipped", 0)
    return (f"<section id='top'><h2>Top-scoring sequences</h2><p>The {min(TABLE_ROWS, len(table.top))} highest "
            f"of the {scored:,} scored sequences, by their best chunk's virus score (then the mean over their "
            f"chunks, then length); every sequence is in {SEQUENCES_NAME}.</p>"
            f"<table class='grid'><tr>{head}</tr>{rows}</table></section>")


def _sequences_section(scan: ResultScan, chunk_len: int, lengths: dict[str, int], rule: CallingRule,
                       chosen: str) -> str:
    parts = []
    for seq in scan.sequences:
        length = lengths.get(seq.id)
        segments = seq.segments(chunk_len, length, rule.threshold)
        chart = svg.segment_chart(segments, title=seq.id, x_max=length or max(s[1] for s in segments))
        parts.append(f"<figure class='sequence'><figcaption>{escape(seq.id)}</figcaption>{chart}</figure>")
    missing = (f"<p class='missing'>Not in the results: {escape(', '.join(scan.missing))}</p>"
               if scan.missing else "")
    where = ("each chunk over the bases it covers" if lengths else
             f"chunk i drawn over (i-1)&#183;{chunk_len} .. i&#183;{chunk_len} bp (lengths unknown)")
    return (f"<section id='sequences'><h2>Best score per chunk along each sequence</h2>"
            f"<p>{escape(chosen)} Red: virus chunk, dark blue: others; {where}.</p>"
            f"{''.join(parts) or '<p>No sequences to show.</p>'}{missing}</section>")


_CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:13px}th,td{text-align:left;padding:2px 10px 2px 0;vertical-align:top}
table.grid td,table.grid th{border-bottom:1px solid #eee}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.virus td{color:#b01c1d}.headline{font-size:20px;font-weight:bold}.warning{color:#a00;font-weight:bold}
figure{margin:8px 0}figure.bars{display:inline-block;vertical-align:top;margin-right:24px}
figcaption{font-weight:bold;font-size:13px}.missing{color:#a00}"""


def render_report(result_dir: Path, *, first_sequences: int = 5, ids: list[str] | None = None) -> str:
    """The page: the top `first_sequences` sequences drawn chunk by chunk, or those named in
    `ids` (`virnucpro plot`)."""
    result_dir = Path(result_dir)
    results = result_dir / RESULTS_NAME
    if not results.is_file():
        raise InputError(f"{result_dir}: no {RESULTS_NAME} (is this a virnucpro result folder?)")
    summary_path = result_dir / SUMMARY_NAME
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    chunk_len = int((summary or {}).get("parameters", {}).get("chunk_len", 500))
    rule = CallingRule.of(summary)
    table_path = result_dir / SEQUENCES_NAME
    table = (scan_summary(table_path, top=max(TABLE_ROWS, first_sequences), ids=ids or ())
             if table_path.is_file() else None)
    drawn, chosen = _drawn(table, first_sequences, ids)
    scan = scan_results(results, first=first_sequences, ids=drawn)
    if ids and not scan.sequences:
        raise InputError(f"{results}: none of the ids {', '.join(ids)} is there")
    lengths = {row.id: row.length for row in [*table.top, *table.named.values()]} if table else {}
    body = "".join([_results_section(summary, table, scan.frames, rule), _scores_section(scan, table, rule),
                    _top_section(table), _sequences_section(scan, chunk_len, lengths, rule, chosen),
                    _run_section(summary), _gpu_section(read_metrics(result_dir / METRICS_NAME)),
                    _throughput_section(summary)])
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>virnucpro report: "
            f"{escape(result_dir.name)}</title><style>{_CSS}</style></head><body>"
            f"<h1>virnucpro results: {escape(result_dir.name)}</h1>{body}</body></html>\n")


def _drawn(table: SummaryScan | None, first: int, ids: list[str] | None) -> tuple[list[str] | None, str]:
    """The sequences drawn chunk by chunk, and how they were chosen. None: the first `first`
    sequences with frames (no summary table to rank them by)."""
    if ids is not None:
        return ids, "The sequences asked for."
    if table is None:
        return None, f"The first {first} sequences with scored chunks."
    return [row.id for row in table.top[:first]], f"The {first} top-scoring sequences."


def write_report(result_dir: Path, *, first_sequences: int = 5, ids: list[str] | None = None,
                 out: Path | None = None) -> Path:
    out = Path(out) if out is not None else Path(result_dir) / REPORT_NAME
    write_text_atomic(out, render_report(result_dir, first_sequences=first_sequences, ids=ids), fsync=False)
    return out


class ReportOnFinish:
    """Subscriber: at run_finished (after the run summary is written), draws report.html
    with the top `sequences` sequences (None: no report, and an earlier run's is removed).
    The results are safe by then: a report that cannot be drawn is a warning, one that
    cannot be written an OutputError."""

    def __init__(self, sequences: int | None) -> None:
        self.sequences = sequences
        self.result_dir: Path | None = None

    def __call__(self, event: Event) -> None:
        if event.kind == "run_started":
            self.result_dir = Path(event.data["result_dir"])
        elif event.kind == "run_finished" and self.result_dir is not None:
            if self.sequences is None:
                remove_quietly(self.result_dir / REPORT_NAME)  # it would describe another run
                return
            try:
                write_report(self.result_dir, first_sequences=self.sequences)
            except OutputError as exc:
                raise OutputError(f"{exc} (the prediction results are complete; only the report is missing)") from None
            except (OSError, ValueError) as exc:  # reading the run's files to draw it
                log.warning(f"report.html not written: {exc}")
