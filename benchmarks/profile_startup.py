"""Where a GPU worker's start-up goes: imports, reading the models, the copy to the device,
compilation (begun, as make_frame_task begins it, once ESM-2's architecture is known). N
processes start at once, one per GPU, as `virnucpro predict` starts its
workers; each times its phases, profiles the compile thread with cProfile and writes the top
functions and torch._dynamo's compile times to DIR/profile_N<n>_<i>.txt.

    python benchmarks/profile_startup.py --processes 4 --out DIR

The models are read from the usual cache places (set TORCH_HOME, HF_HOME, VIRNUCPRO_HOME as
`check_full_size_cli.py --cache` leaves them). cProfile slows Python-heavy code, so the
phase seconds here are inflated; `virnucpro predict` logs the unprofiled ones ("ready after").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def child(index: int, processes: int, out: Path, launched: float, threads: int) -> None:
    entered = time.time()
    import cProfile
    import io
    import pstats

    import torch

    imported_torch = time.time()
    from virnucpro.config import ModelPaths
    from virnucpro.models.bundle import load_bundle
    from virnucpro.predict import placement
    from virnucpro.predict.precision import Precision

    imported = time.time()
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    precision = Precision.resolve("bf16", device)
    # One profiler at a time: since Python 3.12 cProfile cannot run in two threads at once.
    # The compile thread is profiled; reading beside it is only timed.
    compiling = cProfile.Profile()
    plain = placement._compile_and_warm_up_esm  # compiling happens at the warm-up's first call
    placement._compile_and_warm_up_esm = lambda esm: compiling.runcall(plain, esm)
    started = []  # as make_frame_task: ESM-2 compiles from the moment its architecture is known

    def start(architecture):
        started.append(placement.start_esm(architecture, device, precision, compile=True))

    t0 = time.time()
    bundle = load_bundle(ModelPaths(), 300, False, on_esm_architecture=start)
    t1 = time.time()
    placed = placement.place_predictor(bundle, device, precision, compile=True, esm=started[0])
    t2 = time.time()
    phases = {"start process": entered - launched, "import torch": imported_torch - entered,
              "import virnucpro": imported - imported_torch, "read models": t1 - t0,
              "to device (copy, end of compile, full warm-up)": t2 - t1, "copy": placed.copy_seconds,
              "ESM-2 compile and warm-up (thread, from the checkpoint's opening)": placed.compile_seconds,
              "whole predictor's warm-up, after the copy": placed.warm_up_seconds,
              "threads": torch.get_num_threads()}
    text = io.StringIO()
    text.write(json.dumps({k: round(v, 2) for k, v in phases.items()}) + "\n")
    from torch._dynamo.utils import compile_times

    text.write("\n===== torch._dynamo.utils.compile_times =====\n" + compile_times(repr="str") + "\n")
    for name, prof in (("compile thread", compiling),):
        for order, count in (("cumulative", 40), ("tottime", 20)):
            text.write(f"\n===== {name}, by {order} =====\n")
            pstats.Stats(prof, stream=text).sort_stats(order).print_stats(count)
    (out / f"profile_N{processes}_{index}.txt").write_text(text.getvalue())
    print(json.dumps({"index": index, **{k: round(v, 2) for k, v in phases.items()}}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--launched", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        child(args.child, args.processes, args.out, args.launched, args.threads)
        return
    launched = time.time()
    procs = [subprocess.Popen([sys.executable, __file__, "--child", str(i), "--processes", str(args.processes),
                               "--out", str(args.out), "--launched", str(launched), "--threads", str(args.threads)])
             for i in range(args.processes)]
    codes = [p.wait() for p in procs]
    print(f"{args.processes} process(es): all ready after {time.time() - launched:.1f} s, exit codes {codes}")


if __name__ == "__main__":
    main()
