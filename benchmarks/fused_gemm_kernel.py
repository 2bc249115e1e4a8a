"""A GEMM with its epilogue fused, in Triton: gelu(x @ W^T + b), or x @ W^T + b + residual,
with fp32 accumulation and one rounding to the output's dtype. An experiment, not used by
virnucpro: measured on an H200 against cuBLAS + Inductor's pointwise kernels
(benchmarks/linear_gelu_kernels.py, esm_layer_kernels.py --variants fused_fc1_gelu), it lost
inside the ESM-2 layer, since the Triton GEMM runs 15-20 % under cuBLAS (benchmarks/RESULTS.md).
With virnucpro's own GELU formula in the epilogue (models/gelu_kernel.py gelu_of, in place of
tl.erf) it ties with cuBLAS + virnucpro's GELU kernel standalone (tenth session), still no win.

Tiles are read through the Hopper tensor-memory accelerator (TMA descriptors), which also
zero-fills tiles that run past the matrix edge, so any token count works. No split over K and
no atomics: each output element is summed in one fixed order.
"""

# ruff: noqa: N803 - Triton kernels name their compile-time constants (tile sizes, flags) in capitals

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from virnucpro.models.gelu_kernel import constants, gelu_of

# The shipped GELU's constants (models/gelu_kernel.py), as compile-time values in the epilogue
_GK, _C6, _C5, _C4, _C3, _C2, _C1, _C0, _HALF_LOG2E, _CAP = (tl.constexpr(c) for c in constants())


@triton.jit
def _tile_of(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Tile (row, column) of program `pid`, walking GROUP_M tile-rows at a time down each
    column band so that neighbouring programs share A's rows and W's columns in L2."""
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    rows = min(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % rows, (pid % per_group) // rows


@triton.jit
def _tile(a_desc, w_desc, out_desc, bias_ptr, res_desc, off_m, off_n, N: tl.constexpr, K: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GELU: tl.constexpr,
          RESIDUAL: tl.constexpr):
    """One output tile: the K loop, then bias, and GELU or the residual, on the fp32
    accumulator; one rounding."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = a_desc.load([off_m, k])  # [BLOCK_M, BLOCK_K]
        w = w_desc.load([off_n, k])  # [BLOCK_N, BLOCK_K]: W's rows are outputs
        acc = tl.dot(a, w.T, acc)
    cols = off_n + tl.arange(0, BLOCK_N)
    acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if GELU:  # the exact GELU as virnucpro's own kernel computes it (20 instructions a value)
        acc = gelu_of(acc, _GK, _C6, _C5, _C4, _C3, _C2, _C1, _C0, _HALF_LOG2E, _CAP, APPROX=True)
    if RESIDUAL:
        acc += res_desc.load([off_m, off_n]).to(tl.float32)
    out_desc.store([off_m, off_n], acc.to(out_desc.dtype))


# The token count M is not specialised on (Triton would otherwise compile a second variant
# for counts divisible by 16, mid-run, the first time a batch has one).
@triton.jit(do_not_specialize=["M"])
def _linear_gelu_kernel(a_desc, w_desc, out_desc, bias_ptr, res_desc, M, N: tl.constexpr, K: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP_M: tl.constexpr, GELU: tl.constexpr, RESIDUAL: tl.constexpr):
    """One program per output tile."""
    pid_m, pid_n = _tile_of(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    _tile(a_desc, w_desc, out_desc, bias_ptr, res_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, N, K,
          BLOCK_M, BLOCK_N, BLOCK_K, GELU, RESIDUAL)


@triton.jit(do_not_specialize=["M"])
def _linear_gelu_persistent(a_desc, w_desc, out_desc, bias_ptr, res_desc, M, N: tl.constexpr, K: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            GROUP_M: tl.constexpr, GELU: tl.constexpr, RESIDUAL: tl.constexpr,
                            PROGRAMS: tl.constexpr):
    """One program per multiprocessor, walking the tiles: a tile's epilogue can overlap the
    next tile's first loads."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), num_pid_m * num_pid_n, PROGRAMS, flatten=True):
        pid_m, pid_n = _tile_of(tile, num_pid_m, num_pid_n, GROUP_M)
        _tile(a_desc, w_desc, out_desc, bias_ptr, res_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, N, K,
              BLOCK_M, BLOCK_N, BLOCK_K, GELU, RESIDUAL)


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, gelu: bool = True,
           residual: torch.Tensor | None = None, config: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """gelu(x @ weight^T + bias) (or without the GELU), plus `residual` [M, N] if given;
    x [M, K], weight [N, K], bias [N]."""
    x, weight = x.contiguous(), weight.contiguous()
    m, k = x.shape
    n = weight.shape[0]
    if out is None:
        out = x.new_empty(m, n)
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    out_desc = TensorDescriptor.from_tensor(out, [bm, bn])
    res_desc = out_desc if residual is None else TensorDescriptor.from_tensor(residual.contiguous(), [bm, bn])
    args = (TensorDescriptor.from_tensor(x, [bm, bk]), TensorDescriptor.from_tensor(weight, [bn, bk]),
            out_desc, bias, res_desc, m, n, k)
    meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=config["GROUP_M"], GELU=gelu,
                RESIDUAL=residual is not None,
                num_warps=config["num_warps"], num_stages=config["num_stages"])
    if config.get("persistent"):
        programs = min(tiles, _multiprocessors(x.device))
        _linear_gelu_persistent[(programs,)](*args, PROGRAMS=programs, **meta)
    else:
        _linear_gelu_kernel[(tiles,)](*args, **meta)
    return out


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count

