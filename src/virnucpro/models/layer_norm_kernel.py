"""The Triton kernel behind virnucpro::layer_norm_plus (models/layer_norm.py): LayerNorm of
x + shift over the last dimension, ROWS rows a program.

Each row is read once into registers (BLOCK, the width rounded up to a power of two, lanes
past the width masked), its mean and then the mean of its squared deviations summed in fp32
(a two-pass LayerNorm without a second read), normalised, scaled and shifted in fp32, and
rounded once to x's dtype. Why a kernel of its own: the one Inductor writes for this
LayerNorm over 2,560 columns ran at about 2 TB/s in whole ESM-2 batches on an H200, where a
copy runs at 4.2; this one, one row a program on 4 warps, at 3.7 (0.180 ms over a batch of
reads' 65,520 rows, a copy 0.158), and LayerNorm went from 23.6 to 15.6 ms of a batch
(benchmarks/RESULTS.md, issue 15, eighth session). Every row is computed alone, in one fixed
order: deterministic, and independent of the batch and of the launch.
"""

# ruff: noqa: N803 - Triton kernels name their compile-time constants in capitals

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Rows a program and warps: the fastest of twelve (1-8 rows, 4-16 warps) on an H200
# (benchmarks/layer_norm_kernels.py; more warps or rows a program ran at 1.7-3.1 TB/s).
LAUNCH = dict(rows=1, num_warps=4)


@triton.jit
def _layer_norm_kernel(x_ptr, shift_ptr, w_ptr, b_ptr, out_ptr, n_rows, eps,
                       WIDTH: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    in_row = cols < WIDTH
    shift = tl.load(shift_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
    for r in tl.static_range(ROWS):
        row = tl.program_id(0).to(tl.int64) * ROWS + r
        # the row check as a full-width tensor: a scalar in the mask is refused by Triton's
        # interpreter (3.9); on the GPU the same code
        mask = in_row & ((tl.zeros([BLOCK], tl.int64) + row) < n_rows)
        at = row * WIDTH + cols
        v = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32) + shift  # 0 past the width
        mean = tl.sum(v, axis=0) / WIDTH
        deviation = tl.where(in_row, v - mean, 0.0)
        variance = tl.sum(deviation * deviation, axis=0) / WIDTH
        y = deviation * tl.math.rsqrt(variance + eps) * w + b
        tl.store(out_ptr + at, y.to(out_ptr.dtype.element_ty), mask=mask)


def launch(x: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, *,
           rows: int = LAUNCH["rows"], num_warps: int = LAUNCH["num_warps"]) -> torch.Tensor:
    """LayerNorm(x + shift) over the last dimension, in x's dtype, contiguous; shift, weight
    and bias [width] (any float dtype, computed in fp32)."""
    x = x.contiguous()
    width = x.shape[-1]
    out = torch.empty_like(x)
    n_rows = x.numel() // width if width else 0
    if n_rows == 0:
        return out
    # Triton launches on the current device: make it x's (a worker's GPU need not be device 0)
    with torch.cuda.device(x.device if x.is_cuda else -1):  # -1: no-op (CPU interpreter)
        _layer_norm_kernel[(triton.cdiv(n_rows, rows),)](
            x, shift.contiguous(), weight.contiguous(), bias.contiguous(), out, n_rows, eps, WIDTH=width,
            BLOCK=triton.next_power_of_2(width), ROWS=rows, num_warps=num_warps)
    return out
