"""run_summary.json, report.html and `virnucpro plot` from a real (tiny-model) CLI run; the
report also opened in headless Chromium where it is installed."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from virnucpro.cli import main
from virnucpro.monitoring import svg

RECORDS = 8
LENGTHS = [2900, 150, 1300, 620, 301, 2000, 450, 1000]


def open_reading_frame(length: int, seed: int) -> str:
    """Random codons without stops: every chunk keeps at least one frame (random bases would
    almost never give a stop-free 100-codon frame)."""
    codons = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"]
    codons = [c for c in codons if c not in ("TAA", "TAG", "TGA")]
    picks = np.random.default_rng(seed).integers(0, len(codons), length // 3 + 1)
    return "".join(codons[k] for k in picks)[:length]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("monitored")
    sample = root / "contigs.fa"
    sample.write_text("".join(f">seq{i} contig\n{open_reading_frame(n, seed=i)}\n" for i, n in enumerate(LENGTHS)))
    log_file = root / "run.log"
    code = main(["predict", str(sample), "-m", "300", "-q", "-v", "--monitor-interval", "0.05",
                 "--log-file", str(log_file), "--esm-model", str(tiny_models.esm),
                 "--dnabert-model", str(tiny_models.dnabert), "--classifier", str(tiny_models.classifier)])
    assert code == 0
    return root / "contigs_merged", log_file


def result_rows(result_dir: Path) -> list[list[str]]:
    return [line.split("\t") for line in (result_dir / "prediction_results.txt").read_text().splitlines()[1:]]


def test_run_summary_records_the_run(finished_run, tiny_models, capsys):
    result_dir, log_file = finished_run
    summary = json.loads((result_dir / "run_summary.json").read_text())
    assert summary["versions"]["torch"] == torch.__version__
    digest = hashlib.sha256(tiny_models.classifier.read_bytes()).hexdigest()
    assert summary["models"]["classifier"]["hash"] == digest
    assert summary["models"]["classifier"]["path"] == str(tiny_models.classifier.resolve())
    assert summary["parameters"]["chunk_len"] == 300 and summary["devices"] == ["cpu"]
    frames = len(result_rows(result_dir))
    assert summary["frames"] == frames > 20 and summary["tokens"] > frames
    assert {"check input", "load models", "predict and write"} <= set(summary["stage_seconds"])
    cpu = summary["throughput_per_device"]["cpu"]
    assert cpu["frames"] == frames and cpu["frames_per_s"] > 0 and cpu["tokens_per_s"] > cpu["frames_per_s"]
    assert summary["gpu"] == {} and summary["warnings"] == []
    startup = summary["startup_seconds_per_device"]["cpu"]  # where start-up time went
    assert {"read models", "models to device", "total"} <= set(startup)
    assert startup["total"] >= startup["read models"] + startup["models to device"] - 0.02
    # a start-up detail: in the log at debug level (-v)
    assert re.search(r"DEBUG cpu ready after [0-9.]+ s \(read models", log_file.read_text())
    assert not (result_dir / "gpu_metrics.jsonl").exists()  # CPU run: quietly no GPU metrics
    # -q keeps the console quiet, the log file still has the summary
    assert "summary:" in log_file.read_text()


class Outline(HTMLParser):
    """The parts of report.html a reader relies on."""

    def __init__(self) -> None:
        super().__init__()
        self.sections, self.captions, self.svgs, self.refs = [], [], 0, []
        self._in_caption = False
        self.strokes: list[list[str]] = []  # per sequence figure: segment colours in order

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "svg":
            self.svgs += 1
        elif tag == "figcaption":
            self._in_caption = True
            self.strokes.append([])
        elif tag == "line" and a.get("stroke-width") == "3":
            self.strokes[-1].append(a["stroke"])
        for key in ("src", "href"):
            if key in a:
                self.refs.append(a[key])
        if tag in ("script", "link", "img", "iframe"):
            self.refs.append(tag)

    def handle_data(self, data):
        if self._in_caption:
            self.captions.append(data)
            self._in_caption = False


def outline(path: Path) -> Outline:
    parser = Outline()
    parser.feed(path.read_text())
    return parser


def chunk_calls(result_dir: Path) -> dict[str, bool]:
    lines = (result_dir / "prediction_results_highestscore.csv").read_text().splitlines()[1:]
    return {k: v == "True" for k, v in (line.split("\t") for line in lines)}


SECTIONS = ["results", "scores", "top", "sequences", "run", "gpu", "throughput"]  # results first


def summary_rows(result_dir: Path) -> list[list[str]]:
    return [line.split("\t") for line in (result_dir / "prediction_summary.tsv").read_text().splitlines()[1:]]


def top_scoring(result_dir: Path) -> list[str]:
    """Ids by max virus score, then mean, then length, then input order (the report's ranking)."""
    scored = [(float(r[6]), float(r[7]), int(r[1]), -i, r[0]) for i, r in enumerate(summary_rows(result_dir))
              if r[6] != "NA"]
    return [row[-1] for row in sorted(scored, reverse=True)]


def test_report_is_self_contained_and_draws_the_top_sequences(finished_run):
    result_dir, _ = finished_run
    page = outline(result_dir / "report.html")
    assert page.sections == SECTIONS
    assert page.refs == []  # nothing fetched: opens offline
    assert page.captions == top_scoring(result_dir)[:5]
    calls = chunk_calls(result_dir)
    for record, strokes in zip(page.captions, page.strokes):
        chunks = sorted((int(k.rpartition("_chunk_")[2]), v) for k, v in calls.items()
                        if k.rpartition("_chunk_")[0] == record)
        assert strokes == [svg.VIRUS if virus else svg.OTHER for _, virus in chunks], record
    html = (result_dir / "report.html").read_text()
    assert "No GPU metrics" in html and f"{len(result_rows(result_dir)):,} frames" in html
    assert re.search(r"<th>start-up: cpu</th><td>ready after [0-9.]+ s \(read models [0-9.]+ s", html)


def fake_metrics(result_dir: Path) -> None:
    rows = [dict(time=100.0 + t, elapsed=float(t), device=d, nvml_index=i, name="H200",
                 utilization=u, memory_used_mib=30_000.0 * (i + 1) + 100 * t, memory_total_mib=143_771.0,
                 power_w=600.0)
            for t in range(0, 60, 10) for i, (d, u) in enumerate((("cuda:0", 97.0), ("cuda:1", 93.0)))]
    (result_dir / "gpu_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plot_named_ids_with_gpu_timelines(finished_run, tmp_path, capsys):
    copy = tmp_path / "results"
    shutil.copytree(finished_run[0], copy)
    fake_metrics(copy)
    assert main(["plot", str(copy), "--ids", "seq7", "seq2", "nope"]) == 0
    page = outline(copy / "plot.html")
    assert page.captions == ["seq7", "seq2"]
    html = (copy / "plot.html").read_text()
    assert "Not in the results: nope" in html
    gpu = html[html.index("<section id='gpu'>"):html.index("<section id='throughput'>")]
    assert gpu.count("<svg") == 2 and gpu.count("<polyline") == 4  # busy and memory, 2 GPUs each
    assert ">cuda:0<" in gpu and ">cuda:1<" in gpu
    assert main(["plot", str(copy), "--ids", "nope"]) == 2
    assert "none of the ids" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(finished_run, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(finished_run[0], copy)
    fake_metrics(copy)
    report = copy / "plot.html"
    assert main(["plot", str(copy), "--ids", "seq0", "seq5"]) == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=90)
    # the browser's own parse of the page: every section and every chart made it into the DOM
    assert re.findall(r'<section id="(\w+)"', dom.stdout) == SECTIONS
    assert dom.stdout.count("<svg") == report.read_text().count("<svg") >= 7
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1100,2600", report.as_uri()],
                   capture_output=True, timeout=90)
    assert shot.is_file() and shot.stat().st_size > 20_000
