"""Throughput of the CPU stages: read (from a FASTA file) + chunk + select frames, one core.

Workloads are cut from the genomes in ../shared/data/genomes (beside the repository):
- reads150: 150 bp reads, both strands, chunk length 300 (one chunk per read);
- contigs: 150 bp .. 20 kb pieces, both strands, chunk length 500.
Each workload is written to a temporary FASTA file (60-column lines for contigs) and
timed end to end the way the pipeline runs it: stream records, chunk, and select frames in
batches of about 1 Mbp. The process is pinned to one CPU core.

    python benchmarks/bench_stages.py [--bases 30e6] [--repeats 3] [--out benchmarks/bench_stages.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from virnucpro.stages.chunk import iter_chunks
from virnucpro.stages.read import read_records
from virnucpro.stages.translate import select_frames

GENOMES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "genomes"
BATCH_BASES = 1 << 20  # chunk bases handed to select_frames at once, as the pipeline does
_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")


def load_genomes() -> list[str]:
    """All sequences of the shared genomes (read with the package's own reader)."""
    paths = sorted(p for p in GENOMES_DIR.iterdir() if ".fasta" in p.name)
    if not paths:
        raise SystemExit(f"no genomes found in {GENOMES_DIR}")
    return [r.seq.upper() for p in paths for r in read_records(p) if len(r.seq) >= 150]


def _piece(rng: random.Random, genomes: list[str], weights: list[int], length: int) -> str:
    """A piece of a genome chosen in proportion to its size (short genomes give shorter
    contigs), from either strand."""
    genome = rng.choices(genomes, weights)[0]
    length = min(length, len(genome))
    start = rng.randrange(len(genome) - length + 1)
    piece = genome[start : start + length]
    return piece.translate(_COMPLEMENT)[::-1] if rng.random() < 0.5 else piece


def write_workload(path: Path, kind: str, total_bases: int, seed: int = 1) -> int:
    """Write a reads150 or contigs FASTA of about `total_bases`; return the bases written."""
    rng = random.Random(seed)
    genomes = load_genomes()
    weights = [len(g) for g in genomes]
    written = 0
    with open(path, "w") as out:
        index = 0
        while written < total_bases:
            length = 150 if kind == "reads150" else rng.randint(150, 20_000)
            seq = _piece(rng, genomes, weights, length)
            length = len(seq)
            lines = seq if kind == "reads150" else "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60))
            out.write(f">{kind}_{index:07d} bench\n{lines}\n")
            written += length
            index += 1
    return written


def run_stages(path: Path, chunk_len: int) -> tuple[int, int]:
    """read + chunk + select over the whole file; returns (bases, kept frames)."""
    bases = frames = 0
    batch, batch_bases = [], 0
    for chunk in iter_chunks(read_records(path), chunk_len, on_empty=lambda _id: None):
        batch.append(chunk)
        batch_bases += len(chunk.seq)
        if batch_bases >= BATCH_BASES:
            frames += len(select_frames(batch))
            bases += batch_bases
            batch, batch_bases = [], 0
    frames += len(select_frames(batch))
    return bases + batch_bases, frames


def time_parts(path: Path, chunk_len: int) -> dict[str, float]:
    """Seconds spent in each stage alone (for profiling; not the headline number)."""
    t0 = time.perf_counter()
    records = list(read_records(path))
    t1 = time.perf_counter()
    chunks = list(iter_chunks(records, chunk_len, on_empty=lambda _id: None))
    t2 = time.perf_counter()
    for i in range(0, len(chunks), 5000):
        select_frames(chunks[i : i + 5000])
    t3 = time.perf_counter()
    return {"read_s": t1 - t0, "chunk_s": t2 - t1, "select_s": t3 - t2}


def bench(kind: str, chunk_len: int, total_bases: int, repeats: int, work: Path) -> dict:
    path = work / f"{kind}.fa"
    write_workload(path, kind, total_bases)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        bases, frames = run_stages(path, chunk_len)
        timings.append(time.perf_counter() - start)
    best = min(timings)
    return {
        "workload": kind,
        "chunk_len": chunk_len,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "bases": bases,
        "frames": frames,
        "seconds": [round(t, 3) for t in timings],
        "mbp_per_s_best": round(bases / best / 1e6, 2),
        "mbp_per_s_median": round(bases / statistics.median(timings) / 1e6, 2),
        "frames_per_s_best": round(frames / best),
        "parts": {k: round(v, 3) for k, v in time_parts(path, chunk_len).items()},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=float, default=30e6, help="bases per workload")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_stages.json"))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as promised
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            bench("reads150", 300, int(args.bases), args.repeats, Path(tmp)),
            bench("contigs", 500, int(args.bases), args.repeats, Path(tmp)),
        ]
    report = {
        "benchmark": "read+chunk+select_frames, one core",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{_cpu_model()}, {os.cpu_count()} CPUs visible, pinned to one",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "results": results,
    }
    for r in results:
        print(
            f"{r['workload']:9s} L={r['chunk_len']}: {r['mbp_per_s_best']:6.2f} Mbp/s "
            f"(median {r['mbp_per_s_median']:.2f}), {r['frames_per_s_best']:,} frames/s, "
            f"{r['bases'] / 1e6:.1f} Mbp -> {r['frames']:,} frames; parts {r['parts']}"
        )
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
