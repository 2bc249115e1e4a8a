"""A linear layer's product added into the residual stream by the GEMM itself: x += a W^T, in
place, as one cuBLAS call with beta = 1 (C and D the same buffer), so no separate add kernel
reads the product back, and no copy of x is made first.

Why an op: written as `x + F.linear(a, W, b)`, the compiled layer runs the GEMM, then an add
kernel over the whole stream; written as `torch.addmm(x, a, W^T)`, PyTorch copies x into a new
output before the GEMM (measured on an H200: 6 ms of copies a batch of reads, the same as the
add saved; benchmarks/RESULTS.md, issue 15, seventh session). As a custom op that mutates x,
torch.compile keeps the call as it is and updates the layer's input in place (no clone).

The bias is not part of the call (PyTorch's in-place addmm has no bias epilogue): the model
holds the biases apart from the stream and adds them where the stream is read
(models/esm2.py, ESM2.residual_in_gemm).
"""

from __future__ import annotations

import torch


@torch.library.custom_op("virnucpro::accumulate_matmul", mutates_args=("x",))
def accumulate_matmul(x: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> None:
    """x += a weight^T in place (x [N, out], a [N, in], weight [out, in])."""
    x.addmm_(a, weight.t())
