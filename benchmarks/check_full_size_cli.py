"""`virnucpro predict` as a user runs it, on full-size models read from the real cache places.

    python benchmarks/check_full_size_cli.py --bases 10000000 --out full_size_cli
    python benchmarks/check_full_size_cli.py --bases 10000000 --out full_size_cli --one-gpu-too
    python benchmarks/check_full_size_cli.py --bases 102000000 --out scaling \
        --devices cuda:0 cuda:0,cuda:1 cuda:0,cuda:1,cuda:2,cuda:3

Weights cannot be downloaded here, so this writes full-size models with random weights in the
released formats, where a user's machine keeps them, and gives the CLI no model paths:
  - ESM-2 3B (36 x 2560) as fair-esm's esm2_t36_3B_UR50D.pt (fp16 tensors, prefixed keys, an
    argparse config) in $TORCH_HOME/hub/checkpoints;
  - DNABERT-S (12 x 768, the real tokenizer) as a Hugging Face snapshot in $HF_HUB_CACHE;
  - the 300 bp classifier as a whole-module pickle in $VIRNUCPRO_HOME.
Then it runs `python -m virnucpro predict reads.fa 300 --devices auto` (compile on, the
default) on a reads workload cut from ../shared/data/genomes, once per --devices value
(or with --one-gpu-too also with `--devices cuda:0`), checking that every run's result
files are byte-identical to the first's. A short run on
cuda:0 goes first so both timed runs find torch.compile's on-disk cache warm. The log, the
run_summary.json, gpu_metrics.jsonl and report.html of each run are copied to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_engine  # noqa: E402
import bench_stages  # noqa: E402
from bench_scaling import keep_monitor_files  # noqa: E402

from virnucpro.layout import HIGHEST_NAME, RESULTS_NAME, STORE_DIRNAME  # noqa: E402
from virnucpro.models.esm2 import ESM2  # noqa: E402
from virnucpro.models.formats import (  # noqa: E402
    make_dnabert_folder,
    save_fair_esm_checkpoint,
    save_released_classifier,
)

DNABERT_COMMIT = "0" * 40


def write_models(root: Path) -> dict[str, str]:
    """The three models in their cache places under `root`; returns the environment to use."""
    env = {"TORCH_HOME": str(root / "torch"), "HF_HOME": str(root / "hf"),
           "HF_HUB_CACHE": str(root / "hf" / "hub"), "VIRNUCPRO_HOME": str(root / "virnucpro")}
    checkpoints = root / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    with torch.device("cuda"):
        esm = bench_engine.randomise(ESM2(**bench_engine.ESM_3B), seed=0)
    save_fair_esm_checkpoint(esm, checkpoints / "esm2_t36_3B_UR50D.pt")
    del esm
    torch.cuda.empty_cache()
    repo = root / "hf" / "hub" / "models--zhihan1996--DNABERT-S"
    make_dnabert_folder(repo / "snapshots" / DNABERT_COMMIT, hidden=768, layers=12, heads=12,
                        intermediate=3072, seed=1, tokenizer=bench_engine.TOKENIZER)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(DNABERT_COMMIT)
    save_released_classifier(root / "virnucpro", input_dim=768 + 2560, hidden_dim=512, seed=2,
                             name="300_model.pth")
    return env


def predict(sample: Path, out: Path, devices: str, env: dict[str, str], keep: Path,
            stop_after: float | None = None) -> dict:
    """Time `virnucpro predict` as a process. stop_after: interrupt it with SIGINT (a clean
    stop that keeps every finished shard) after that many seconds; rerun to resume."""
    log_file = keep / "virnucpro.log"
    keep.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "virnucpro", "predict", str(sample), "300", "-o", str(out),
           "--devices", devices, "--monitor-interval", "2", "--log-file", str(log_file)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
    interrupted = False
    try:
        _, stderr = proc.communicate(timeout=stop_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate()
        interrupted = True
    wall = time.perf_counter() - t0
    print(stderr[-4000:], flush=True)
    if interrupted:
        stored = out / STORE_DIRNAME
        return {"command": " ".join(cmd[1:]), "devices": devices, "wall_s": round(wall, 1),
                "interrupted_after_s": stop_after, "exit_code": proc.returncode,
                "stored_shards": len(list(stored.glob("shard_*.npz"))) if stored.is_dir() else 0}
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}")
    keep_monitor_files(out, keep)
    summary = json.loads((out / "run_summary.json").read_text())
    return {"command": " ".join(cmd[1:]), "devices": devices, "wall_s": round(wall, 1),
            "frames": summary["frames"], "frames_per_s_end_to_end": round(summary["frames"] / wall, 1),
            "stage_seconds": summary["stage_seconds"],
            "startup_seconds_per_device": summary.get("startup_seconds_per_device"),
            "throughput_per_device": summary["throughput_per_device"],
            "gpu": summary["gpu"], "warnings": summary["warnings"], "models": summary["models"],
            "result_sha256": {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
                              for name in (RESULTS_NAME, HIGHEST_NAME)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bases", type=int, default=10_000_000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--devices", nargs="+", default=["auto"], metavar="SPEC",
                    help="one timed run per --devices value, in this order (e.g. cuda:0 cuda:0,cuda:1 auto); "
                         "every run's result files are compared with the first's, and speed-ups are "
                         "given against the first")
    ap.add_argument("--one-gpu-too", action="store_true", help="also run on cuda:0 alone (after the others)")
    ap.add_argument("--no-warm-up", action="store_true", help="skip the short untimed first run")
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep the models, the input and the result folders here and reuse them "
                         "(several invocations on one machine; a rerun resumes an interrupted "
                         "run); default: a temporary folder")
    ap.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                    help="interrupt each timed run with SIGINT after this long (it keeps its "
                         "finished shards; the same command again resumes it)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("check_full_size_cli needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                    "cpus": os.cpu_count()}
    runs = list(args.devices) + (["cuda:0"] if args.one_gpu_too else [])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = args.cache or work
        t0 = time.perf_counter()
        env = cached_models(cache / "cache")
        report["write_models_s"] = round(time.perf_counter() - t0, 1)
        sample = cache / f"reads_{args.bases}.fa"
        if not sample.is_file():
            bench_stages.write_workload(sample, "reads150", args.bases)
        report["input_bases"] = args.bases
        if not args.no_warm_up:
            # torch.compile's on-disk cache warm for every timed run alike (see bench_scaling)
            warm = work / "warm.fa"
            bench_stages.write_workload(warm, "reads150", 100_000, seed=2)
            report["warm_up"] = predict(warm, work / "out_warm", "cuda:0", env, args.out / "warm_up")
        report["runs"] = []
        for n, devices in enumerate(runs):
            # the input size in the name: a kept result folder is only resumed by the same run
            name = f"run{n}_{devices.replace(',', '+').replace(':', '')}_{args.bases}bp"
            result = predict(sample, cache / name, devices, env, args.out / name, args.stop_after)
            first = report["runs"][0] if report["runs"] else None
            if first and "result_sha256" in first and "result_sha256" in result:
                result["outputs_identical_to_first"] = result["result_sha256"] == first["result_sha256"]
                result["speedup_end_to_end_over_first"] = round(first["wall_s"] / result["wall_s"], 3)
            report["runs"].append({"name": name, **result})
            (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


def cached_models(root: Path) -> dict[str, str]:
    """write_models(root) unless a finished earlier call left them there."""
    done = root / "complete"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        env = write_models(root)
        (root / "env.json").write_text(json.dumps(env))
        done.touch()
    return json.loads((root / "env.json").read_text())


if __name__ == "__main__":
    main()
