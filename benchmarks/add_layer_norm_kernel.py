"""The residual add that ends an ESM-2 layer and the LayerNorm that starts the next, as one
Triton kernel: x = x_prev + ffn (rounded to the input dtype, as the add kernel rounds it) and
LN(x) computed from that rounded x, as the LayerNorm kernel reads it. An experiment, not used by
virnucpro (benchmarks/esm_layer_kernels.py --variants deferred_add_layer_norm). Measured on an
H200 it saved 0.06-0.14 ms of a 25-26 ms layer: it replaced 0.82 ms of add and LayerNorm with
0.60, but Inductor's kernel for the second LayerNorm grew by 0.12-0.16 ms once the layer
returned its two terms (benchmarks/RESULTS.md, issue 15, seventh session). Not kept.

Why: in a batch of 150 bp reads on an H200 the add kernel (two [N, 2560] reads, one write)
took 10.9 ms and the first LayerNorm (one read, one write) 9.9 ms, 2.4 TB/s where the
LayerNorm with its own add reached ~4.3 (benchmarks/RESULTS.md, issue 15, seventh session).
One kernel reads two tensors and writes two: a third less traffic, at the bandwidth if it
runs as well as the LayerNorm that already has its add. Inductor does not make this kernel
itself: with the add left to the next layer's graph (esm_layer_kernels.py --variants
deferred_residual) it recomputed the sum inside the LayerNorm's second pass instead.

Rows of up to BLOCK elements, one row at a time, ROWS rows a program; the row's statistics in
fp32 (mean, then the mean of squared deviations, as a two-pass LayerNorm), one fixed order:
deterministic and independent of the batch.
"""

# ruff: noqa: N803 - Triton kernels name their compile-time constants in capitals

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_layer_norm_kernel(x_ptr, f_ptr, w_ptr, b_ptr, sum_ptr, out_ptr, n_rows, width, eps,
                           BLOCK: tl.constexpr, ROWS: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    in_row = cols < width
    w = tl.load(w_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
    for r in tl.static_range(ROWS):
        row = tl.program_id(0).to(tl.int64) * ROWS + r
        mask = in_row & (row < n_rows)
        at = row * width + cols
        summed = (tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
                  + tl.load(f_ptr + at, mask=mask, other=0.0).to(tl.float32))
        rounded = summed.to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + at, rounded, mask=mask)
        v = rounded.to(tl.float32)  # the LayerNorm reads the rounded sum, as in the unfused path
        mean = tl.sum(v, axis=0) / width
        deviation = tl.where(in_row, v - mean, 0.0)
        variance = tl.sum(deviation * deviation, axis=0) / width
        y = deviation * tl.math.rsqrt(variance + eps) * w + b
        tl.store(out_ptr + at, y.to(out_ptr.dtype.element_ty), mask=mask)


def launch(x: torch.Tensor, f: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
           *, rows: int = 2, num_warps: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + f, LayerNorm(x + f)) over the last dimension, both in x's dtype."""
    x, f = x.contiguous(), f.contiguous()
    width = x.shape[-1]
    n_rows = x.numel() // width
    summed, normed = torch.empty_like(x), torch.empty_like(x)
    if n_rows:
        _add_layer_norm_kernel[(triton.cdiv(n_rows, rows),)](
            x, f, weight, bias, summed, normed, n_rows, width, eps, BLOCK=triton.next_power_of_2(width),
            ROWS=rows, num_warps=num_warps)
    return summed, normed


@torch.library.custom_op("virnucpro_bench::add_layer_norm", mutates_args=())
def add_layer_norm(x: torch.Tensor, f: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    if x.is_cuda:
        return launch(x, f, weight, bias, eps)
    summed = x + f
    return summed, torch.nn.functional.layer_norm(summed, (x.shape[-1],), weight, bias, eps)


@add_layer_norm.register_fake
def _(x, f, weight, bias, eps):
    return torch.empty_like(x), torch.empty_like(x)
