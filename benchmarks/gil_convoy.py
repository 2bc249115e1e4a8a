"""Reading the models beside a thread that compiles: how much the interpreter lock's convoy
effect slows the reading, at Python's default switch interval and at the one virnucpro's
start-up sets while ESM-2 compiles beside the reading (engine/background.quick_thread_switching).

    python benchmarks/gil_convoy.py --out gil_convoy.json     # models from the usual cache places

CPU only, no GPU needed. The full-size model files are read from the usual cache places (set
TORCH_HOME, HF_HOME, VIRNUCPRO_HOME as `check_full_size_cli.py --cache` leaves them). The
thread beside compiles a small ESM-2 again and again (Dynamo and Inductor on the CPU, warm
cache): like the start-up's compile thread, it is Python from end to end.

Reports, in one process: load_bundle's seconds alone, then beside the compiling thread at the
default switch interval and at the quick one, and how many compiles the thread finished
meanwhile (its progress).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from virnucpro.config import ModelPaths
from virnucpro.engine.background import quick_thread_switching
from virnucpro.models.bundle import load_bundle
from virnucpro.models.esm2 import ESM2
from virnucpro.models.protein_alphabet import encode_proteins
from virnucpro.predict.compile import compile_packed_layers, warm_up_frames
from virnucpro.predict.packing import pack_proteins


def compile_once() -> None:
    torch._dynamo.reset()
    esm = ESM2(2, 64, 4).eval()
    compile_packed_layers(esm)
    with torch.inference_mode():
        esm.pooled_packed(pack_proteins(*encode_proteins([f.aa for f in warm_up_frames()])))


def read_models(beside: bool, quick: bool) -> dict:
    stop = threading.Event()
    compiles: list[float] = []

    def compile_loop() -> None:
        with quick_thread_switching() if quick else nullcontext():
            while not stop.is_set():
                t = time.perf_counter()
                compile_once()
                compiles.append(round(time.perf_counter() - t, 2))

    thread = threading.Thread(target=compile_loop, daemon=True)
    if beside:
        thread.start()
        time.sleep(0.5)  # the compile under way, as at start-up
    t0 = time.perf_counter()
    load_bundle(ModelPaths(), 300, False)
    seconds = time.perf_counter() - t0
    stop.set()
    if beside:
        thread.join()
    return {"read_models_s": round(seconds, 2), "compiles_finished_beside": len(compiles),
            "compile_s": compiles[:6], "switch_interval_s": sys.getswitchinterval() if not quick else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    compile_once()  # imports and the on-disk cache warm, outside the measurements
    load_bundle(ModelPaths(), 300, False)  # the files in the page cache
    runs = {"alone": read_models(beside=False, quick=False),
            "beside_default_interval": read_models(beside=True, quick=False),
            "beside_quick_switching": read_models(beside=True, quick=True),
            "alone_again": read_models(beside=False, quick=False)}
    report = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "runs": runs}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
