"""ESM-2 3B's fc1 + GELU: the unfused paths and cuBLASLt's GELU epilogue (what ships in bf16)
against a fused Triton kernel
(benchmarks/fused_gemm_kernel.py, an experiment) over a sweep of launch configurations, side by
side in one run with the bf16 matrix-rate probe.

    python benchmarks/linear_gelu_kernels.py --out linear_gelu.json [--inductor-autotune]

Rows (x [M, 2560] bf16 packed tokens, W [10240, 2560], M = a batch's tokens):
  cublas_linear          F.linear alone: cuBLAS, the GEMM's own time (the floor for fusing)
  cublas_then_gelu       F.gelu(F.linear(...)) compiled as the pipeline compiles it: cuBLAS,
                         then Inductor's pointwise erf GELU standalone (what shipped first)
  cublas_then_virnucpro_gelu  F.linear, then virnucpro's own GELU kernel (models/gelu_kernel.py),
                         what shipped from the seventh to the tenth session of issue 15 (fp16's still)
  cublaslt_gelu_epilogue fc1 and GELU as one cuBLASLt call (models/linear_gelu.py, bf16's
                         default since the eleventh session): the GELU's
                         tanh form in the GEMM's epilogue, rounded once (its error is against
                         the erf GELU in fp32, as every row's)
  triton_<config>        the fused kernel, one row per launch configuration (its GELU: the one
                         of models/gelu_kernel.py since the tenth session; tl.erf before)
  triton_<best>_no_gelu  the best configuration without the GELU (what the epilogue costs)
  inductor_max_autotune  (--inductor-autotune) Inductor's own Triton GEMM templates with the
                         GELU fused, chosen by timing (not usable as shipped: timing at start-up
                         would let workers pick different kernels)
With --fc2, the same for fc2 plus the residual add (x + h W2^T + b2, K = 10240, N = 2560):
  cublas_then_add        F.linear, then the add (compiled): what ships
  residual_triton_<config> the kernel with the residual added in its epilogue
Each: median ms (CUDA events), TFLOP/s of the GEMM, share of the probe, and the error against
fp32 (gelu(x W^T + b) in fp32 on the same bf16 inputs): max |diff| and worst-row cosine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402
import fused_gemm_kernel  # noqa: E402
from esm_layer_kernels import start_record, time_ms  # noqa: E402

from virnucpro.models import gelu_kernel  # noqa: E402
from virnucpro.models.linear_gelu import linear_gelu  # noqa: E402
from virnucpro.predict.compile import compile_options  # noqa: E402

K, N = 2560, 10240

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages, persistent)
SWEEP = [
    (128, 256, 64, 8, 8, 3, False),
    (128, 256, 64, 8, 8, 4, False),
    (256, 128, 64, 8, 8, 3, False),
    (128, 128, 64, 8, 4, 4, False),
    (128, 128, 64, 8, 8, 5, False),
    (128, 256, 32, 8, 8, 5, False),
    (128, 128, 128, 8, 8, 3, False),
    (64, 256, 64, 8, 4, 4, False),
    (128, 256, 64, 8, 8, 3, True),
    (128, 128, 64, 8, 8, 4, True),
    (256, 128, 64, 8, 8, 3, True),
]


def config_of(row: tuple) -> dict:
    bm, bn, bk, gm, warps, stages, persistent = row
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=warps, num_stages=stages,
                persistent=persistent)


def name_of(config: dict) -> str:
    return ("triton_{BLOCK_M}x{BLOCK_N}x{BLOCK_K}_w{num_warps}_s{num_stages}".format(**config)
            + ("_persistent" if config["persistent"] else ""))


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict:
    out = out.float()
    cos = F.cosine_similarity(out, ref, dim=1)
    return {"max_abs_err_vs_fp32": round(float((out - ref).abs().max()), 5),
            "min_row_cosine_vs_fp32": round(float(cos.min()), 7)}


def measure(fn, ref: torch.Tensor, flops: float, rate: float) -> dict:
    try:
        out = fn()
        torch.cuda.synchronize()
        ms = time_ms(fn)
    except Exception as exc:  # noqa: BLE001 - a configuration that does not fit is a result too
        return {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    tflops = flops / ms / 1e9
    return {"ms": round(ms, 3), "tflops": round(tflops, 1), "share_of_probe": round(tflops / rate, 3),
            **errors(out, ref)}


def rows_for(m: int, rate: float, inductor_autotune: bool, triton: bool = True) -> dict:
    """fc1 + GELU at M rows: the unfused path, the sweep, the best without GELU."""
    x, w, b = inputs(m, K, N)
    ref = F.gelu(x.float() @ w.float().T + b.float())
    flops = 2.0 * m * K * N
    unfused = torch.compile(lambda x: F.gelu(F.linear(x, w, b), approximate="none"),
                            dynamic=True, options=compile_options())
    rows = {"cublas_linear": measure(lambda: F.linear(x, w, b), F.linear(x.float(), w.float(), b.float()),
                                     flops, rate),
            "cublas_then_gelu": measure(lambda: unfused(x), ref, flops, rate),
            "cublas_then_virnucpro_gelu": measure(lambda: gelu_kernel.launch(F.linear(x, w, b)), ref, flops, rate),
            "cublaslt_gelu_epilogue": measure(lambda: linear_gelu(x, w, b), ref, flops, rate)}
    if not triton:
        return rows
    best = sweep(rows, lambda config: fused_gemm_kernel.launch(x, w, b, config=config), ref, flops, rate)
    if best is not None:
        rows[name_of(best) + "_no_gelu"] = measure(
            lambda: fused_gemm_kernel.launch(x, w, b, config=best, gelu=False),
            F.linear(x.float(), w.float(), b.float()), flops, rate)
    if inductor_autotune:
        tuned = torch.compile(lambda x: F.gelu(F.linear(x, w, b), approximate="none"), dynamic=False,
                              mode="max-autotune-no-cudagraphs")
        rows["inductor_max_autotune"] = measure(lambda: tuned(x), ref, flops, rate)
    return rows


def fc2_rows_for(m: int, rate: float) -> dict:
    """fc2 with the residual add (x + h W2^T + b2) at M rows: unfused against the kernel with
    the residual in its epilogue."""
    h, w, b = inputs(m, N, K)
    residual = torch.randn(m, K, device="cuda", dtype=torch.bfloat16)
    ref = h.float() @ w.float().T + b.float() + residual.float()
    flops = 2.0 * m * K * N
    unfused = torch.compile(lambda h, r: r + F.linear(h, w, b), dynamic=True, options=compile_options())
    rows = {"cublas_linear": measure(lambda: F.linear(h, w, b), ref - residual.float(), flops, rate),
            "cublas_then_add": measure(lambda: unfused(h, residual), ref, flops, rate)}
    sweep(rows, lambda config: fused_gemm_kernel.launch(h, w, b, gelu=False, residual=residual, config=config),
          ref, flops, rate, prefix="residual_")
    return rows


def inputs(m: int, k: int, n: int):
    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(n, k, device="cuda") / k**0.5).to(torch.bfloat16)
    b = (torch.randn(n, device="cuda") * 0.1).to(torch.bfloat16)
    return x, w, b


def sweep(rows: dict, run, ref: torch.Tensor, flops: float, rate: float, prefix: str = "") -> dict | None:
    """One row per configuration of SWEEP; the fastest configuration (also named in rows)."""
    best = None
    for row in SWEEP:
        config = config_of(row)
        rows[prefix + name_of(config)] = result = measure(lambda: run(config), ref, flops, rate)
        if "ms" in result and (best is None or result["ms"] < rows[prefix + name_of(best)]["ms"]):
            best = config
    if best is not None:
        rows[prefix + "best"] = name_of(best)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", default="65520,98304", help="rows M (packed tokens), comma-separated")
    ap.add_argument("--inductor-autotune", action="store_true")
    ap.add_argument("--no-triton", action="store_true", help="only the cuBLAS rows (no Triton sweep)")
    ap.add_argument("--fc2", action="store_true", help="also fc2 with the residual add in the epilogue")
    args = ap.parse_args()
    rate, result = start_record()
    for m in (int(t) for t in args.tokens.split(",")):
        result[f"M={m}"] = rows_for(m, rate, args.inductor_autotune, not args.no_triton)
        print(json.dumps(result[f"M={m}"]), flush=True)
        if args.fc2:
            result[f"fc2 M={m}"] = fc2_rows_for(m, rate)
            print(json.dumps(result[f"fc2 M={m}"]), flush=True)
    result["bf16_matrix_rate_tflops_after"] = round(bench_engine.matmul_rate(), 1)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
