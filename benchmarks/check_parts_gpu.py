"""Parts and merge on a GPU, with full-size models: N `virnucpro predict --part K/N` processes
and a `virnucpro merge` must give the bytes of one `virnucpro predict` of the whole input.

    python benchmarks/check_parts_gpu.py --bases 2000000 --parts 4 --out parts_gpu

Writes full-size models with random weights in the cache places (check_full_size_cli.py), a
150 bp reads workload cut from ../shared/data/genomes, then runs, each as its own process on
cuda:0 (compile on, batch budget left to the device): the whole input, each of the N parts
one after the other, and the merge of the parts given in reverse order. Reports per part its
protein tokens (part.json), its deviation from the mean part, its wall time and the batch
budget its device chose, and whether the merged files are byte-identical to the whole run's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_stages  # noqa: E402
from check_full_size_cli import cached_models  # noqa: E402

from virnucpro.layout import HIGHEST_NAME, PART_NAME, RESULTS_NAME, SEQUENCES_NAME  # noqa: E402

COMPARED = (RESULTS_NAME, HIGHEST_NAME, SEQUENCES_NAME)


def virnucpro(args: list[str], env: dict[str, str]) -> float:
    """Run `python -m virnucpro ARGS` as a process; its wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "virnucpro", *args, "-q"], env={**os.environ, **env},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"virnucpro {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return round(time.perf_counter() - t0, 1)


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in COMPARED}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bases", type=int, default=2_000_000)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/check_parts_gpu"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("check_parts_gpu needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0), "bases": args.bases, "parts": args.parts}
    t0 = time.perf_counter()
    env = cached_models(args.work / "cache")
    report["write_models_s"] = round(time.perf_counter() - t0, 1)
    sample = args.work / f"reads_{args.bases}.fa"
    if not sample.is_file():
        bench_stages.write_workload(sample, "reads150", args.bases)
    common = ["300", "--devices", "cuda:0"]
    report["whole_s"] = virnucpro(["predict", str(sample), *common, "-o", str(args.work / "whole")], env)
    whole = json.loads((args.work / "whole" / "run_summary.json").read_text())
    report["whole"] = {"frames": whole["frames"], "tokens": whole["tokens"],
                       "startup_s": whole["startup_seconds_per_device"]}
    folders, parts = [], []
    for k in range(1, args.parts + 1):
        folder = args.work / f"part{k}of{args.parts}"
        wall = virnucpro(["predict", str(sample), *common, "--part", f"{k}/{args.parts}", "-o", str(folder)], env)
        record = json.loads((folder / PART_NAME).read_text())
        parts.append({"part": f"{k}/{args.parts}", "wall_s": wall, "shards": record["part_shards"],
                      "frames": record["part_frames"], "tokens": record["part_tokens"],
                      "batch_tokens": record["batch_tokens"]})
        folders.append(folder)
    mean = sum(p["tokens"] for p in parts) / len(parts)
    for p in parts:
        p["tokens_vs_mean_percent"] = round(100 * (p["tokens"] - mean) / mean, 2)
    report["parts_detail"] = parts
    report["shards_in_run"] = record["shards"]
    report["merge_s"] = virnucpro(["merge", *map(str, reversed(folders)), "-o", str(args.work / "merged")], env)
    report["merged_identical_to_whole"] = {name: same for name, same in zip(
        COMPARED, (a == b for a, b in zip(digests(args.work / "whole").values(),
                                          digests(args.work / "merged").values())))}
    merged = json.loads((args.work / "merged" / "run_summary.json").read_text())
    report["merged_summary_devices"] = merged["devices"]
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
