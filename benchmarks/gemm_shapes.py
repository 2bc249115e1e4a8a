"""ESM-2 3B's four GEMMs at one batch's token count, each called the ways the layer could call
it, side by side in one run with the bf16 matrix-rate probe: which calls run near the probe's
rate, and what adding the residual in the GEMM (in place, beta = 1) costs the GEMM.

    python benchmarks/gemm_shapes.py --out gemm_shapes.json [--tokens 65520] [--rounds 5]
    python benchmarks/gemm_shapes.py --out rows.json --shipped --tokens 65520 67536 101376

With several --tokens, every call is timed at each row count (interleaved in the same rounds),
and `per_tokens` sums the layer's four GEMMs at each: ns a token and the rate. A GEMM's tiles
are spread over the GPU's SMs in waves; a row count whose tiles leave the last wave nearly
empty pays for a whole one. `--shipped` keeps only the calls the model makes (qkv and fc1
through F.linear, out_proj and fc2 accumulating into the stream) on PyTorch's default entry.

GEMMs (x [M, K] bf16 packed tokens, W [N, K]): qkv (K 2560, N 7680), out_proj (2560, 2560),
fc1 (2560, 10240), fc2 (10240, 2560). Calls:
  linear        F.linear(x, W, b): what ships (cuBLASLt, the bias in its epilogue)
  mm            x @ W^T, no bias
  accumulate    y.addmm_(x, W^T): y += x W^T in place (out_proj and fc2 only: the residual)
each under both of PyTorch's cuBLAS entry points (torch.backends.cuda.preferred_blas_library
"cublas" and "cublaslt"). The calls are timed in rounds, every call once a round in turn, so
that the clocks' drift under load (the probe reads 750-790 TFLOP/s within one call) falls on
all alike; each row is the median over rounds of the mean of `--repeats` back-to-back calls.
Then, for out_proj and fc2, the rounding of the stream each way against float64 (`errors`):
the shipped y + F.linear(x, W, b) rounds the product, then the sum; the in-place
y.addmm_(x, W^T) (bias added after, in float64) was measured on an H200 to do the same (cuBLAS
rounds the product before it adds C). Reported as the largest and the mean error in units of
bf16's last place at the exact value.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402
from esm_layer_kernels import start_record  # noqa: E402

D = 2560
SHAPES = {"qkv": (D, 3 * D), "out_proj": (D, D), "fc1": (D, 4 * D), "fc2": (4 * D, D)}
RESIDUAL = ("out_proj", "fc2")  # the GEMMs whose output is added to the residual stream
SHIPPED = {"qkv": "linear", "out_proj": "accumulate", "fc1": "linear", "fc2": "accumulate"}  # models/esm2.py


def calls(name: str, m: int) -> dict:
    """name's calls, each a function of no arguments, on random unit-scale operands."""
    k, n = SHAPES[name]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(n, k, device="cuda") * k**-0.5).to(torch.bfloat16)
    b = (torch.randn(n, device="cuda") * 0.02).to(torch.bfloat16)
    y = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    out = {"linear": lambda: F.linear(x, w, b), "mm": lambda: x @ w.t()}
    if name in RESIDUAL:
        out["accumulate"] = lambda: y.addmm_(x, w.t())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=int, nargs="+", default=[65_520], help="rows M: packed tokens per batch")
    ap.add_argument("--shipped", action="store_true", help="only the calls the model makes, default entry")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    rate, result = start_record()
    backends = ("cublas",) if args.shipped else ("cublas", "cublaslt")
    timed = {}  # (gemm, call, backend, rows) -> function
    for m in args.tokens:
        for name in SHAPES:
            for call, fn in calls(name, m).items():
                if args.shipped and call != SHIPPED[name]:
                    continue
                for backend in backends:
                    timed[(name, call, backend, m)] = fn
    times: dict = {key: [] for key in timed}
    for _ in range(args.rounds):
        for key, fn in timed.items():
            torch.backends.cuda.preferred_blas_library(key[2])
            fn()  # warm: the backend's first call picks its kernel
            times[key].append(bench_engine.mean_ms(fn, args.repeats))
    torch.backends.cuda.preferred_blas_library("cublas")
    result["bf16_matrix_rate_after_tflops"] = round(bench_engine.matmul_rate(), 1)
    result["tokens"] = args.tokens if len(args.tokens) > 1 else args.tokens[0]
    rows, layer = {}, {}
    for (name, call, backend, m), samples in times.items():
        k, n = SHAPES[name]
        ms = float(np.median(samples))
        tflops = 2 * m * k * n / ms / 1e9
        key = f"{name} {call} {backend}" + (f" {m}" if len(args.tokens) > 1 else "")
        rows[key] = {"ms": round(ms, 4), "tflops": round(tflops, 1), "share_of_probe": round(tflops / rate, 3),
                     "ms_per_round": [round(t, 4) for t in samples]}
        print(f"{m:7d} {name:9s} {call:10s} {backend:9s} {ms:7.4f} ms {tflops:6.1f} TFLOP/s", flush=True)
        if call == SHIPPED[name] and backend == "cublas":
            layer.setdefault(m, []).append((ms, 2 * m * k * n))
    result["gemms"] = rows
    result["per_tokens"] = {}
    for m, parts in layer.items():  # the layer's four shipped GEMMs together
        ms, flop = sum(p[0] for p in parts), sum(p[1] for p in parts)
        result["per_tokens"][m] = {"ms": round(ms, 4), "ns_per_token": round(ms * 1e6 / m, 3),
                                   "tflops": round(flop / ms / 1e9, 1)}
        print(f"{m:7d} layer GEMMs {ms:7.3f} ms {ms * 1e6 / m:7.3f} ns/token {flop / ms / 1e9:6.1f} TFLOP/s", flush=True)
    result["errors"] = {name: stream_errors(name, 8192) for name in RESIDUAL}
    print(json.dumps(result["errors"], indent=1))
    args.out.write_text(json.dumps(result, indent=1))


def ulps(got: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """(largest, mean) |got - exact| in units of bf16's last place at |exact| (the spacing of
    bf16 values around it: 2^(floor(log2 |exact|) - 7))."""
    spacing = torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(1e-30))) - 7)
    err = ((got.double() - exact).abs() / spacing)
    return round(float(err.max()), 3), round(float(err.mean()), 4)


def stream_errors(name: str, m: int) -> dict:
    """The residual stream after adding one GEMM's product (bias included), each way, against
    float64 from the same bf16 operands."""
    k, n = SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    w = (torch.randn(n, k, device="cuda", generator=gen) * k**-0.5).to(torch.bfloat16)
    b = (torch.randn(n, device="cuda", generator=gen) * 0.02).to(torch.bfloat16)
    y = (torch.randn(m, n, device="cuda", generator=gen) * 2).to(torch.bfloat16)
    exact_product = x.double() @ w.double().t()
    exact = y.double() + exact_product + b.double()
    out = {"shipped: y + linear(x)": ulps(y + F.linear(x, w, b), exact)}
    for reduced in (True, False):
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = reduced
        got = y.clone().addmm_(x, w.t())
        out[f"in place, reduced-precision reduction {reduced}"] = ulps(got, y.double() + exact_product)
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    out["product alone, rounded once (F.linear without bias)"] = ulps(F.linear(x, w), exact_product)
    return out


if __name__ == "__main__":
    main()
