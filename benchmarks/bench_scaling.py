"""Multi-device scaling: the same input end to end (CLI pipeline: read, shard, schedule,
checkpoint, write, with the CLI's monitoring attached) on 1 device, then on N, in one run.

    # on a 2-GPU machine, full-size random-weight models (same FLOPs as the real ones):
    python benchmarks/bench_scaling.py --devices cuda:0,cuda:1 --bases 45000000 \
        --out scaling.json --artifacts scaling_runs
    # CPU smoke test, tiny demo models:
    python benchmarks/bench_scaling.py --tiny --devices cpu,cpu --bases 60000

Reports for each run: wall seconds (start of `pipeline.run` to its return: model build,
compile, all shards, result files), frames/s, tokens/s, start-up (until every device has
finished its first shard), steady-state frames/s (after that), per-device frames and tokens,
per-GPU busy % (NVML every 50 ms, over the whole run and over the embedding window), the
share of the bf16 matmul rate measured in the same process, and peak memory; then the
speed-up of N devices over one and whether the result files are byte-identical.

Each run is a process of its own, timed from its start to its exit, as a user times
`virnucpro predict`: interpreter start, imports, CUDA start-up, models and compilation are
all in it, and nothing compiled or loaded carries over from one run to the next. A short
warm-up run on the first device goes first, so both timed runs find torch.compile's on-disk
cache in the same (warm) state, as every run after a machine's first does; without it the
second timed run would inherit the first one's cache (`--no-warm-up` to skip it).

Each worker builds its own full-size models on its device (the task factory below is
handed to the engine as the CLI hands in the real one); loading real weights from disk is
not part of this benchmark (`check_full_size_cli.py` does that through the CLI).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402  (full-size random models, NVML busy sampler, matmul rate)
import bench_stages  # noqa: E402  (workloads cut from real genomes)

from virnucpro import pipeline  # noqa: E402
from virnucpro.config import RunConfig  # noqa: E402
from virnucpro.layout import HIGHEST_NAME, METRICS_NAME, REPORT_NAME, RESULTS_NAME, SUMMARY_NAME  # noqa: E402
from virnucpro.models.dna_tokenizer import DnaTokenizer  # noqa: E402
from virnucpro.monitoring import MonitorOptions, attach  # noqa: E402
from virnucpro.monitoring.events import Monitor  # noqa: E402
from virnucpro.predict.placement import place_predictor  # noqa: E402
from virnucpro.predict.precision import Precision  # noqa: E402
from virnucpro.predict.task import DeviceInfo, FrameTask, make_frame_task  # noqa: E402

MONITOR_FILES = (METRICS_NAME, SUMMARY_NAME, REPORT_NAME)
# ESM-2 3B forward GEMM FLOPs per token (24 D^2 per layer); attention's 4 T D adds ~0.3 % at
# 49 aa and is left out, so the share below slightly understates the real one.
ESM_GEMM_FLOPS_PER_TOKEN = bench_engine.ESM_3B["num_layers"] * 24 * bench_engine.ESM_3B["embed_dim"] ** 2


def full_size_task(config: RunConfig, device: torch.device) -> FrameTask:
    """Runs in each worker: ESM-2 3B + DNABERT-S + classifier, random weights, on `device`."""
    torch.cuda.set_device(device)
    bundle = bench_engine.full_size_bundle(DnaTokenizer.from_file(bench_engine.TOKENIZER))
    precision = Precision.resolve(config.precision, device, config.reference)
    predictor = place_predictor(bundle, device, precision, batch_tokens=config.batch_tokens,
                                compile=config.compile).predictor
    # Random weights built here, so the identities a --demo run locates (config.demo is set).
    info = DeviceInfo({"esm": "demo", "dnabert": "demo", "classifier": "demo"}, (), precision.name,
                      bundle.feature_dims(), predictor.batch_tokens)
    return FrameTask(predictor, False, info)


class RunClock:
    """Subscriber: when each shard started and finished, on which device, with how much work."""

    def __init__(self) -> None:
        self.done: list[tuple[float, str, int, int]] = []  # (time, device, frames, tokens)
        self.first_started: float | None = None

    def __call__(self, event) -> None:
        if event.kind == "shard_done":
            self.done.append((time.perf_counter(), event.data["device"], event.data["frames"],
                              event.data["tokens"]))
        elif event.kind == "shard_started" and self.first_started is None:
            self.first_started = time.perf_counter()

    def steady(self) -> tuple[float | None, float | None, float | None]:
        """(start-up seconds, steady frames/s, steady tokens/s): once every device has finished
        its first shard (models built, kernels compiled) -- what a long run sees, since start-up
        is paid once per worker, not per shard."""
        first: dict[str, float] = {}
        for t, device, _, _ in self.done:
            first.setdefault(device, t)
        if not first:
            return None, None, None
        start = max(first.values())
        later = [(t, f, k) for t, _, f, k in self.done if t > start]
        if len(later) < 2:
            return start, None, None
        span = later[-1][0] - start
        return start, round(sum(f for _, f, _ in later) / span, 1), round(sum(k for _, _, k in later) / span)


def one_run(sample: Path, devices: str, args, out: Path) -> dict:
    """One timed `pipeline.run`, in this process (a fresh one: see main)."""
    config = RunConfig(input=sample, chunk_len=300, out_dir=out, devices=devices, demo=True,
                       shard_tokens=args.shard_tokens)
    gpus = [int(d.split(":")[1]) for d in devices.split(",") if d.startswith("cuda:")]
    samplers = [bench_engine.BusySampler(i) for i in gpus]
    monitor, clock = Monitor(), RunClock()
    monitor.subscribe(clock)
    session = attach(monitor, MonitorOptions(interval=args.monitor_interval, progress="off", report_sequences=3))
    for s in samplers:
        s.__enter__()
    t0 = time.perf_counter()
    try:
        outcome = pipeline.run(config, monitor, restart=True,
                               task_factory=make_frame_task if args.tiny else full_size_task)
    finally:
        wall = time.perf_counter() - t0
        for s in samplers:
            s.__exit__(None, None, None)
        session.close()
    startup_end, steady_fps, steady_tps = clock.steady()
    embed_s = clock.done[-1][0] - clock.first_started
    tokens = sum(k for _, _, _, k in clock.done)
    summary = json.loads((out / SUMMARY_NAME).read_text())
    return {
        "devices": devices, "frames": outcome.frames, "tokens": tokens, "shards": outcome.shards,
        "pipeline_wall_s": round(wall, 2),
        "load_models_s": round(summary["stage_seconds"]["load models"], 2),
        "startup_s": round(startup_end - t0, 2) if startup_end else None,
        "embedding_window_s": round(embed_s, 2),
        "steady_frames_per_s": steady_fps, "steady_tokens_per_s": steady_tps,
        "busy_percent_nvml_50ms": {f"cuda:{i}": s.mean for i, s in zip(gpus, samplers)},
        "run_summary_gpu": summary["gpu"],
        "run_summary_throughput": summary["throughput_per_device"],  # frames, tokens, shards per device
    }


def timed_process(sample: Path, devices: str, args, out: Path) -> dict:
    """Run one configuration as its own process, as a user runs `virnucpro predict`: the
    wall time includes interpreter start, imports, CUDA start-up, models and compilation, and
    nothing (no compiled code in memory, no CUDA context) carries over between runs."""
    result_file = out.with_suffix(".json")
    cmd = [sys.executable, __file__, "--single", devices, "--input", str(sample), "--result-dir", str(out),
           "--shard-tokens", str(args.shard_tokens), "--monitor-interval", str(args.monitor_interval)]
    cmd += ["--tiny"] if args.tiny else []
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    result = json.loads(result_file.read_text())
    result["wall_s"] = round(wall, 2)
    result["frames_per_s"] = round(result["frames"] / wall, 1)
    result["tokens_per_s"] = round(result["tokens"] / wall)
    if args.artifacts:
        keep_monitor_files(out, args.artifacts / out.name)
    return result


def keep_monitor_files(result_dir: Path, keep: Path) -> None:
    """Copy a run's monitoring files (those it wrote: no gpu_metrics.jsonl without a GPU)."""
    keep.mkdir(parents=True, exist_ok=True)
    for name in MONITOR_FILES:
        if (result_dir / name).is_file():
            shutil.copy2(result_dir / name, keep / name)


def same_results(a: Path, b: Path) -> bool:
    """Both result files of two runs byte-identical."""
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in (RESULTS_NAME, HIGHEST_NAME))


def compare(runs: list[dict], outs: list[Path]) -> dict:
    one, many = runs
    same = same_results(outs[0], outs[1])
    return {"speedup": round(one["wall_s"] / many["wall_s"], 3),
            "steady_speedup": (round(many["steady_frames_per_s"] / one["steady_frames_per_s"], 3)
                               if one["steady_frames_per_s"] and many["steady_frames_per_s"] else None),
            "outputs_identical": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", help="the N devices, e.g. cuda:0,cuda:1 or cpu,cpu")
    ap.add_argument("--bases", type=int, default=45_000_000, help="input size in bases (150 bp reads)")
    ap.add_argument("--shard-tokens", type=int, default=200_000)
    ap.add_argument("--monitor-interval", type=float, default=2.0, help="seconds between NVML samples in the run")
    ap.add_argument("--tiny", action="store_true", help="tiny demo models (CPU smoke test)")
    ap.add_argument("--no-warm-up", action="store_true")
    ap.add_argument("--out", type=Path, help="write the results here as JSON (after each run)")
    ap.add_argument("--artifacts", type=Path, help="copy each run's gpu_metrics.jsonl, run_summary.json, report.html here")
    ap.add_argument("--single", metavar="DEVICES", help=argparse.SUPPRESS)  # one timed run (a child process)
    ap.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.single:
        result = one_run(args.input, args.single, args, args.result_dir)
        args.result_dir.with_suffix(".json").write_text(json.dumps(result))
        return
    if not args.devices:
        ap.error("--devices is required")
    gpu = torch.cuda.is_available() and not args.tiny
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                    "input_bases": args.bases, "tiny_models": args.tiny, "shard_tokens": args.shard_tokens}
    rate = bench_engine.matmul_rate() if gpu else None
    report["matmul_bf16_tflops"] = round(rate, 1) if rate else None
    torch.cuda.empty_cache() if gpu else None

    def save() -> None:
        print(json.dumps(report, indent=1), flush=True)
        if args.out:
            args.out.write_text(json.dumps(report, indent=1) + "\n")

    first = args.devices.split(",")[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.no_warm_up:
            bench_stages.write_workload(work / "warm.fa", "reads150", min(args.bases, 300_000), seed=2)
            report["warm_up"] = timed_process(work / "warm.fa", first, argparse.Namespace(**{**vars(args), "artifacts": None}),
                                              work / "warm")
        sample = work / "reads.fa"
        t0 = time.perf_counter()
        bench_stages.write_workload(sample, "reads150", args.bases)
        report["write_input_s"] = round(time.perf_counter() - t0, 1)
        report["runs"], outs = [], []
        for devices in (first, args.devices):
            outs.append(work / f"out_{devices.replace(',', '_').replace(':', '')}")
            report["runs"].append(timed_process(sample, devices, args, outs[-1]))
            if rate and report["runs"][-1]["steady_tokens_per_s"]:
                run = report["runs"][-1]
                per_gpu = run["steady_tokens_per_s"] / len(devices.split(","))
                run["steady_matmul_share_per_gpu"] = round(per_gpu * ESM_GEMM_FLOPS_PER_TOKEN / 1e12 / rate, 3)
            save()
        report.update(compare(report["runs"], outs))
    save()


if __name__ == "__main__":
    main()
