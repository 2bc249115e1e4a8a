"""A 24 GB card emulated on a large one: cap this process's share of GPU memory, then run the
full-size models (random weights) on real-genome frames with the budget sized automatically,
and once more with a budget far too large, which must be rescued by out-of-memory splitting.

    python benchmarks/check_small_gpu.py [--gib 24]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import TOKENIZER, frames_of, full_size_bundle  # noqa: E402

from virnucpro.models import demo  # noqa: E402
from virnucpro.models.dna_tokenizer import DnaTokenizer  # noqa: E402
from virnucpro.predict.placement import place_predictor  # noqa: E402
from virnucpro.predict.precision import Precision  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=24.0)
    parser.add_argument("--out", type=Path, default=Path("check_small_gpu.json"))
    args = parser.parse_args()
    device = torch.device("cuda", 0)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(args.gib * 2**30 / total, 0)
    tokenizer = DnaTokenizer.from_file(TOKENIZER) if TOKENIZER.is_file() else demo.demo_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        frames = frames_of("contigs", 600_000, Path(tmp))
    report = {"cap_gib": args.gib, "frames": len(frames)}
    results = {}
    for name, budget in (("auto", None), ("forced_400k_tokens", 400_000)):
        bundle = full_size_bundle(tokenizer)
        predictor = place_predictor(bundle, device, Precision.resolve("bf16", device), batch_tokens=budget).predictor
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        results[name] = predictor.predict(frames)
        torch.cuda.synchronize()
        report[name] = {"batch_tokens": predictor.batch_tokens, "oom_splits": results[name].batches_halved,
                        "seconds": round(time.perf_counter() - t0, 2),
                        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        del predictor, bundle
        torch.cuda.empty_cache()
    report["max_abs_score_diff_auto_vs_split"] = float(
        np.abs(results["auto"].score2 - results["forced_400k_tokens"].score2).max())
    print(json.dumps(report, indent=1))
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
