"""Multi-device scaling: the same input end to end (CLI pipeline: read, shard, schedule,
checkpoint, write) on 1 device, then on N, in the same process run.

    # on a 2-GPU machine, full-size random-weight models (same FLOPs as the real ones):
    python benchmarks/bench_scaling.py --devices cuda:0,cuda:1 --bases 3000000 --out benchmarks/bench_scaling.json
    # CPU smoke test, tiny demo models:
    python benchmarks/bench_scaling.py --tiny --devices cpu,cpu --bases 60000

Reports wall seconds, frames/s, speed-up over one device, and per-GPU busy % (NVML,
sampled every 50 ms) for every run. Each worker builds its own models on its device (the
task factory below is handed to the engine, as the CLI hands in the real one), so model
loading is excluded from the timed part only as far as it is in the CLI: we report both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402  (full-size random models, NVML busy sampler)
import bench_stages  # noqa: E402  (workloads cut from real genomes)

from virnucpro import pipeline  # noqa: E402
from virnucpro.config import RunConfig  # noqa: E402
from virnucpro.engine.devices import resolve_dtype  # noqa: E402
from virnucpro.frame_task import FrameTask, make_frame_task  # noqa: E402
from virnucpro.models.dna_tokenizer import DnaTokenizer  # noqa: E402
from virnucpro.monitor import Monitor  # noqa: E402
from virnucpro.stages.classify import FramePredictor  # noqa: E402


def full_size_task(config: RunConfig, device: torch.device) -> FrameTask:
    """Runs in each worker: ESM-2 3B + DNABERT-S + classifier, random weights, on `device`."""
    torch.cuda.set_device(device)
    bundle = bench_engine.full_size_bundle(DnaTokenizer.from_file(bench_engine.TOKENIZER))
    dtype = resolve_dtype(config.precision, device, config.reference)
    predictor = FramePredictor(bundle, device, dtype, reference=False, batch_tokens=config.batch_tokens,
                               compile=config.compile)
    info = {"identity": {"esm": "random-3B", "dnabert": "random", "classifier": "random"},
            "demo_models": (), "dtype": str(dtype).removeprefix("torch."),
            "feature_dims": bundle.feature_dims(), "batch_tokens": predictor.batch_tokens}
    return FrameTask(predictor, False, info)


def one_run(sample: Path, devices: str, tiny: bool, shard_tokens: int, work: Path) -> dict:
    out = work / f"out_{devices.replace(',', '_').replace(':', '')}"
    config = RunConfig(input=sample, chunk_len=300, out_dir=out, devices=devices, demo=tiny,
                       shard_tokens=shard_tokens)
    gpus = [int(d.split(":")[1]) for d in devices.split(",") if d.startswith("cuda:")]
    samplers = [bench_engine.BusySampler(i) for i in gpus]
    for s in samplers:
        s.__enter__()
    monitor, done = Monitor(), []
    monitor.subscribe(lambda e: done.append((time.perf_counter(), e.data["device"], e.data["frames"]))
                      if e.kind == "shard_done" else None)
    t0 = time.perf_counter()
    outcome = pipeline.run(config, monitor, restart=True,
                           task_factory=make_frame_task if tiny else full_size_task)
    wall = time.perf_counter() - t0
    for s in samplers:
        s.__exit__(None, None, None)
    return {"devices": devices, "frames": outcome.frames, "shards": outcome.shards, "wall_s": round(wall, 2),
            "frames_per_s": round(outcome.frames / wall, 1),
            "steady_frames_per_s": steady_rate(done),
            "busy_percent": {f"cuda:{i}": s.mean for i, s in zip(gpus, samplers)},
            "results": (out / "prediction_results.txt").read_bytes()}


def steady_rate(done: list[tuple[float, str, int]]) -> float | None:
    """Frames/s once every device has finished its first shard (models built, kernels compiled):
    what a long run sees, since start-up is paid once per worker, not per shard."""
    first: dict[str, float] = {}
    for t, device, _ in done:
        first.setdefault(device, t)
    start = max(first.values(), default=None)
    later = [(t, frames) for t, _, frames in done if t > start] if start is not None else []
    if len(later) < 2:
        return None
    return round(sum(f for _, f in later) / (later[-1][0] - start), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", required=True, help="the N devices, e.g. cuda:0,cuda:1 or cpu,cpu")
    ap.add_argument("--bases", type=int, default=3_000_000, help="input size in bases (150 bp reads)")
    ap.add_argument("--shard-tokens", type=int, default=200_000)
    ap.add_argument("--tiny", action="store_true", help="tiny demo models (CPU smoke test)")
    ap.add_argument("--out", type=Path, help="write the results here as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sample = work / "reads.fa"
        bench_stages.write_workload(sample, "reads150", args.bases)
        runs = [one_run(sample, args.devices.split(",")[0], args.tiny, args.shard_tokens, work),
                one_run(sample, args.devices, args.tiny, args.shard_tokens, work)]
    identical = runs[0].pop("results") == runs[1].pop("results")
    report = {"input_bases": args.bases, "tiny_models": args.tiny, "runs": runs,
              "speedup": round(runs[0]["wall_s"] / runs[1]["wall_s"], 3),
              "steady_speedup": (round(runs[1]["steady_frames_per_s"] / runs[0]["steady_frames_per_s"], 3)
                                 if runs[0]["steady_frames_per_s"] and runs[1]["steady_frames_per_s"] else None),
              "outputs_identical": identical}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
