"""A tree's bench_engine.py with `whole_predict` run a second time under torch.profiler (CPU
and CUDA), its tables and trace written to OUT_PREFIX_*, and each shard's prepare/run split.
Works on any tree that has benchmarks/bench_engine.py (used to compare two versions):

    cd TREE && PYTHONPATH=$PWD/src python /path/to/profile_whole_predict.py OUT_PREFIX \
        --only reads --variants bf16_packed_compiled --reference-frames 200 --out engine.json
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd() / "benchmarks"))
import bench_engine  # noqa: E402

prefix = sys.argv[1]
sys.argv = ["bench_engine.py"] + sys.argv[2:]
plain = bench_engine.whole_predict


def whole_profiled(predictor, frames, shard):
    seconds = plain(predictor, frames, shard)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        again = plain(predictor, frames, shard)
    print(f"PROFILE whole_predict plain {seconds:.3f} s, profiled {again:.3f} s", flush=True)
    ka = prof.key_averages()
    Path(prefix + "_cpu.txt").write_text(ka.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=60))
    Path(prefix + "_cuda.txt").write_text(ka.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=60))
    prof.export_chrome_trace(prefix + "_trace.json")
    print(ka.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50), flush=True)
    # the time split: prepare (host) then run (device, synchronised) per shard
    shards = [frames[i:i + shard] for i in range(0, len(frames), shard)]
    for s in shards:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        prepared = predictor.prepare(s)
        t1 = time.perf_counter()
        predictor.run(prepared)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        print(f"SPLIT shard {len(s)}: prepare {t1 - t0:.3f} s, run {t2 - t1:.3f} s", flush=True)
    return seconds


bench_engine.whole_predict = whole_profiled
bench_engine.main()
