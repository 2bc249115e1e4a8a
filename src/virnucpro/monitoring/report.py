"""report.html: one self-contained page about a finished run (inline SVG, inline CSS, no
scripts, nothing fetched), built from the files in the result folder:
run_summary.json, gpu_metrics.jsonl and prediction_results.txt.

The per-sequence plot follows the original's drew_fig.py: along each sequence, one
horizontal segment per chunk at the chunk's best score, red for virus, dark blue for others,
the chunk numbered i drawn over (i-1)*L .. i*L as drew_fig.py draws it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import logging

from virnucpro.errors import InputError, OutputError
from virnucpro.layout import (METRICS_NAME, REPORT_NAME, RESULTS_NAME, SUMMARY_NAME, record_and_chunk,
                              remove_quietly, write_text_atomic)
from virnucpro.monitoring import svg
from virnucpro.monitoring.events import Event, describe_startup
from virnucpro.monitoring.gpu import read_metrics

log = logging.getLogger("virnucpro")
SCORE_BINS = 40


@dataclass
class SequenceScores:
    """Per chunk number: (max score1, max score2) over the chunk's frames."""

    id: str
    chunks: dict[int, list[float]] = field(default_factory=dict)

    def add(self, number: int, s1: float, s2: float) -> None:
        best = self.chunks.setdefault(number, [s1, s2])
        best[0], best[1] = max(best[0], s1), max(best[1], s2)

    def segments(self, chunk_len: int) -> list[tuple[float, float, float, str]]:
        # call as prediction_results_highestscore.csv makes it: max score2 >= max score1
        return [((n - 1) * chunk_len, n * chunk_len, max(s1, s2), svg.VIRUS if s2 >= s1 else svg.OTHER)
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
            s1, s2 = float(a), float(b)
            frames += 1
            counts[min(int(s2 * SCORE_BINS), SCORE_BINS - 1)] += 1
            parsed = record_and_chunk(frame_id)
            if parsed is None:
                continue
            record, number = parsed
            keep = record in wanted_set if wanted is not None else (
                record in sequences or len(sequences) < first)
            if keep:
                sequences.setdefault(record, SequenceScores(record)).add(number, s1, s2)
    order = wanted if wanted is not None else list(sequences)
    return ResultScan([i / SCORE_BINS for i in range(SCORE_BINS + 1)], counts, frames,
                      [sequences[r] for r in order if r in sequences],
                      [r for r in (wanted or []) if r not in sequences])


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


def _scores_section(scan: ResultScan) -> str:
    colors = [svg.VIRUS if lo >= 0.5 else svg.OTHER for lo in scan.edges[:-1]]
    chart = svg.histogram(scan.edges, scan.counts, colors, title="score distribution",
                          x_label="virus score (score2) per frame", y_label="frames")
    return (f"<section id='scores'><h2>Distribution of scores</h2><p>{scan.frames:,} frames.</p>"
            f"<figure>{chart}</figure></section>")


def _sequences_section(scan: ResultScan, chunk_len: int) -> str:
    parts = []
    for seq in scan.sequences:
        segments = seq.segments(chunk_len)
        chart = svg.segment_chart(segments, title=seq.id, x_max=max(s[1] for s in segments))
        parts.append(f"<figure class='sequence'><figcaption>{escape(seq.id)}</figcaption>{chart}</figure>")
    missing = (f"<p class='missing'>Not in the results: {escape(', '.join(scan.missing))}</p>"
               if scan.missing else "")
    return (f"<section id='sequences'><h2>Best score per chunk along each sequence</h2>"
            f"<p>Red: virus, dark blue: others (chunk call of prediction_results_highestscore.csv); "
            f"chunk i drawn over (i-1)&#183;{chunk_len} .. i&#183;{chunk_len} bp.</p>"
            f"{''.join(parts) or '<p>No sequences to show.</p>'}{missing}</section>")


_CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:13px}th,td{text-align:left;padding:2px 10px 2px 0;vertical-align:top}
table.grid td,table.grid th{border-bottom:1px solid #eee}figure{margin:8px 0}
figure.bars{display:inline-block;vertical-align:top;margin-right:24px}figcaption{font-weight:bold;font-size:13px}.missing{color:#a00}"""


def render_report(result_dir: Path, *, first_sequences: int = 5, ids: list[str] | None = None) -> str:
    result_dir = Path(result_dir)
    results = result_dir / RESULTS_NAME
    if not results.is_file():
        raise InputError(f"{result_dir}: no {RESULTS_NAME} (is this a virnucpro result folder?)")
    summary_path = result_dir / SUMMARY_NAME
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    chunk_len = int((summary or {}).get("parameters", {}).get("chunk_len", 500))
    scan = scan_results(results, first=first_sequences, ids=ids)
    if ids and not scan.sequences:
        raise InputError(f"{results}: none of the ids {', '.join(ids)} is there")
    body = "".join([_run_section(summary), _gpu_section(read_metrics(result_dir / METRICS_NAME)),
                    _throughput_section(summary), _scores_section(scan),
                    _sequences_section(scan, chunk_len)])
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>virnucpro report: "
            f"{escape(result_dir.name)}</title><style>{_CSS}</style></head><body>"
            f"<h1>virnucpro run report: {escape(result_dir.name)}</h1>{body}</body></html>\n")


def write_report(result_dir: Path, *, first_sequences: int = 5, ids: list[str] | None = None,
                 out: Path | None = None) -> Path:
    out = Path(out) if out is not None else Path(result_dir) / REPORT_NAME
    write_text_atomic(out, render_report(result_dir, first_sequences=first_sequences, ids=ids), fsync=False)
    return out


class ReportOnFinish:
    """Subscriber: at run_finished (after the run summary is written), draws report.html
    with the first `sequences` sequences (None: no report, and an earlier run's is removed).
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
