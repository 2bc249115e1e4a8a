"""The Triton kernel behind virnucpro::gelu (models/gelu.py): GELU(x) = max(x, 0) - |x| q,
q = t exp(P(t) - x^2 / 2), t = 1 / (1 + K |x|), one value per element, in fp32.

On the GPU the reciprocal and the exponential are the hardware's approximate ones
(rcp.approx.ftz, ex2.approx.ftz: about 1 and 2 units of the last place of fp32), so each is one
instruction; the compiler's own division and exp2 add range checks for inputs this formula never
gives (t's denominator is at least 1; a result below 2^-126 is flushed to 0, where GELU is
below 1e-37 in magnitude). The polynomial is evaluated in base 2 (its coefficients times
log2 e), so the exponential needs no multiply first. (In fp32 those constants sum to 1e-7
off P(1) = 0: q at x = 0 is 1/2 within 1.3e-7, not exactly as in the formula's base e.)
Each element is computed alone: the result does not depend on the launch, the batch or the
number of GPUs.
"""

# ruff: noqa: N803 - Triton kernels name their compile-time constants in capitals

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from virnucpro.models.gelu import ABS_CAP, P0_WITH_HALF, P_COEFFICIENTS, K

_LOG2E = 1.0 / math.log(2.0)
# P's coefficients in base 2, highest degree first (Horner's order)
_P2 = tuple(c * _LOG2E for c in (*P_COEFFICIENTS[:0:-1], P0_WITH_HALF))
assert len(_P2) == 7  # the kernel's Horner steps below are written out for degree 6

# Elements per program and warps: the fastest of five on an H200 over one fc1 output of a
# batch of reads (benchmarks/gelu_kernels.py: 0.679 ms; the others 0.691-0.716). Any launch
# gives the same bits.
LAUNCH = dict(block=2048, num_warps=4)


@triton.jit
def _reciprocal(x, APPROX: tl.constexpr):
    if APPROX:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    return 1.0 / x  # Triton's CPU interpreter runs no PTX


@triton.jit
def _exp2(x, APPROX: tl.constexpr):
    if APPROX:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    return tl.exp2(x)


@triton.jit
def gelu_of(x, k, c6, c5, c4, c3, c2, c1, c0, half_log2e, abs_cap, APPROX: tl.constexpr):
    """GELU of fp32 x, elementwise (the formula above; the constants as launch passes them).
    Also the epilogue of the fused GEMM experiment, benchmarks/fused_gemm_kernel.py."""
    a = tl.abs(x)
    t = _reciprocal(a * k + 1.0, APPROX)
    p = c6 * t + c5
    p = p * t + c4
    p = p * t + c3
    p = p * t + c2
    p = p * t + c1
    p = p * t + c0
    q = t * _exp2(p - half_log2e * x * x, APPROX)
    return tl.maximum(x, 0.0) - tl.minimum(a, abs_cap) * q


@triton.jit
def _gelu_kernel(x_ptr, out_ptr, n, k, c6, c5, c4, c3, c2, c1, c0, half_log2e, abs_cap,
                 BLOCK: tl.constexpr, APPROX: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    g = gelu_of(x, k, c6, c5, c4, c3, c2, c1, c0, half_log2e, abs_cap, APPROX)
    tl.store(out_ptr + offsets, g.to(out_ptr.dtype.element_ty), mask=mask)


def constants() -> tuple:
    """gelu_of's constant arguments after x: k, the base-2 coefficients, half log2 e, the cap."""
    return (K, *_P2, 0.5 * _LOG2E, ABS_CAP)


def launch(x: torch.Tensor, *, block: int = LAUNCH["block"], num_warps: int = LAUNCH["num_warps"],
           approx: bool | None = None) -> torch.Tensor:
    """GELU of every element of x (any shape, fp32/bf16/fp16), in x's dtype, contiguous.
    approx: the hardware's reciprocal and exponential (default: on a GPU, not in Triton's
    interpreter)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return out
    if approx is None:
        approx = x.is_cuda
    grid = (triton.cdiv(n, block),)
    # Triton launches on the current device: make it x's (a worker's GPU need not be device 0)
    with torch.cuda.device(x.device if x.is_cuda else -1):  # -1: no-op (CPU interpreter)
        _gelu_kernel[grid](x, out, n, *constants(), BLOCK=block, APPROX=approx,
                           num_warps=num_warps)
    return out
