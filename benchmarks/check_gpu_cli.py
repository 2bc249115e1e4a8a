"""The CLI on a GPU: default (fast) path vs --reference on the same input, tiny demo models.

    python benchmarks/check_gpu_cli.py [INPUT] [--out DIR]

Checks the two runs give the same frames (ids, in order) and prints how far their scores are
apart (bf16 fast path vs fp32 reference), plus an fp32 fast-path run (batched, same precision
as the reference) which must agree to fp32 rounding.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def table(path: Path) -> tuple[list[str], np.ndarray]:
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return [r[0] for r in rows], np.array([[float(r[2]), float(r[3])] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input", nargs="?", type=Path, default=REPO / "examples" / "ecoli_reads150.fa")
    parser.add_argument("--out", type=Path, default=Path("gpu_cli_check"))
    args = parser.parse_args()
    runs = {"default": [], "fp32": ["--precision", "fp32"], "reference": ["--reference"]}
    results = {}
    for name, extra in runs.items():
        out = args.out / name
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "virnucpro", "predict", str(args.input), "-m", "300",
                        "--demo", "--devices", "cuda:0", "-o", str(out), "--restart", *extra], check=True)
        ids, scores = table(out / "prediction_results.txt")
        results[name] = (ids, scores, time.perf_counter() - t0)
    ref_ids, ref_scores, _ = results["reference"]
    report = {}
    for name, (ids, scores, seconds) in results.items():
        assert ids == ref_ids, f"{name}: frames differ from the reference run"
        report[name] = {"frames": len(ids), "seconds": round(seconds, 1),
                        "max_abs_score_diff_vs_reference": float(np.abs(scores - ref_scores).max()),
                        "label_agreement": float(((scores[:, 1] > scores[:, 0]) ==
                                                  (ref_scores[:, 1] > ref_scores[:, 0])).mean())}
    print(json.dumps(report, indent=1))
    (args.out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
