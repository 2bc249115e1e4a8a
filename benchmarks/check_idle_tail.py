"""Does the GPU idle at the end of a run? `virnucpro predict` on full-size models (random
weights, the released formats, the real cache places, as check_full_size_cli.py writes them)
with and without --save-embeddings, from one or more source trees, on the same input.

    python benchmarks/check_idle_tail.py --bases 5000000 --out idle_tail
    python benchmarks/check_idle_tail.py --bases 5000000 --out idle_tail --tree ../before .
    python benchmarks/check_idle_tail.py --bases 5000000 --out a --tree ../before . ../before . --only plain \
        --models /tmp/models     # each tree twice: the second run of each on a warm compile cache

For each run it records, from the run's own gpu_metrics.jsonl (NVML every second) and
run_summary.json: wall time, frames/s end to end and per device, GPU busy % from the
device's first finished shard to its last (the run summary's figure), GPU busy % from the
first busy sample to the last sample of the run (what idles after the last shard counts
here), the idle seconds at the end, and the whole utilisation timeline; and the process's
full garbage collections (count, longest and total pause; benchmarks/gc_log/), which stop
the thread that feeds the GPU while they run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_stages  # noqa: E402
from check_full_size_cli import cached_models  # noqa: E402

BUSY = 50  # % utilisation that counts as working


def timeline(metrics: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [(row["elapsed"], row["utilization"]) for row in rows if row.get("device") == "cuda:0"]


def tail_figures(samples: list[tuple[float, float]], interval: float) -> dict:
    busy_at = [i for i, (_, u) in enumerate(samples) if u >= BUSY]
    if not busy_at:
        return {"busy_percent_first_busy_to_end": None, "idle_seconds_at_end": None}
    working = samples[busy_at[0]:]
    return {"busy_percent_first_busy_to_end": round(sum(u for _, u in working) / len(working), 1),
            "idle_seconds_at_end": round((len(samples) - 1 - busy_at[-1]) * interval, 1)}


def run(tree: Path, sample: Path, out: Path, env: dict[str, str], extra: list[str], interval: float,
        bases: int, gc_log: Path) -> dict:
    cmd = [sys.executable, "-m", "virnucpro", "predict", str(sample), "300", "-o", str(out), "--devices", "cuda:0",
           "--monitor-interval", str(interval), "-q", *extra]
    gc_log.unlink(missing_ok=True)  # the logger appends: not to an earlier call's log
    path = os.pathsep.join([str(tree / "src"), str(HERE / "gc_log")])
    t0 = time.perf_counter()
    subprocess.run(cmd, env={**os.environ, **env, "PYTHONPATH": path, "VIRNUCPRO_BENCH_GC_LOG": str(gc_log)},
                   check=True)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "run_summary.json").read_text())
    samples = timeline(out / "gpu_metrics.jsonl")
    device = summary["throughput_per_device"]["cuda:0"]
    computing_s = summary["frames"] / device["frames_per_s"]  # the frames at the device's steady rate
    return {"tree": str(tree), "options": extra, "wall_s": round(wall, 1), "frames": summary["frames"],
            "frames_per_s_end_to_end": round(summary["frames"] / wall, 1),
            "frames_per_s_device": device["frames_per_s"],
            "busy_percent_first_to_last_shard": summary["gpu"]["cuda:0"]["mean_busy_percent_after_first_shard"],
            "fixed_cost_s": round(wall - computing_s, 1),  # what the run pays besides computing
            "gbp_per_gpu_hour": round(bases / computing_s * 3600 / 1e9, 3),  # as a user sizes a job
            "startup_s": summary.get("startup_seconds_per_device", {}).get("cuda:0"),
            **tail_figures(samples, interval), "full_collections": full_collections(gc_log),
            "timeline_elapsed_util": samples}


def full_collections(gc_log: Path) -> dict:
    """Generation-2 collections of the run's process: how many, the longest and total pause."""
    rows = [json.loads(line) for line in gc_log.read_text().splitlines()] if gc_log.is_file() else []
    full = [r["seconds"] for r in rows if r["generation"] == 2]
    return {"count": len(full), "max_s": round(max(full, default=0.0), 3), "total_s": round(sum(full), 3),
            "all_generations": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bases", type=int, default=5_000_000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tree", type=Path, nargs="+", default=[HERE.parent], help="source trees to run")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--only", choices=("plain", "embeddings"), help="only the plain or the --save-embeddings runs")
    ap.add_argument("--models", type=Path, help="keep the full-size model files here, for a later call (default: "
                    "written to a temporary folder each time)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("check_idle_tail needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0), "input_bases": args.bases, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = cached_models(args.models or work / "cache")
        sample = work / "reads.fa"
        report["input_bases_written"] = bench_stages.write_workload(sample, "reads150", args.bases)
        for tree in args.tree:
            modes = {"plain": [], "embeddings": ["--save-embeddings"]}
            for extra in [modes[args.only]] if args.only else modes.values():
                out = work / f"out_{len(report['runs'])}"
                report["runs"].append(run(tree.resolve(), sample, out, env, extra, args.interval,
                                          report["input_bases_written"], args.out / f"{out.name}_gc.jsonl"))
                brief = {k: v for k, v in report["runs"][-1].items() if k != "timeline_elapsed_util"}
                print(json.dumps(brief), flush=True)
                (args.out / "idle_tail.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
