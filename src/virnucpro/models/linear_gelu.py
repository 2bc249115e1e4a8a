"""ESM-2's first feed-forward projection and its GELU as one op: gelu(x @ W^T + b).

Unfused, cuBLAS writes the projection's [N, 10240] output in bf16 and a separate pointwise
kernel reads it back to apply the exact (erf) GELU: 2.7 GB of traffic per batch and layer, and
about 6.5 % of a compiled ESM-2 3B batch on an H200 (benchmarks/RESULTS.md). cuBLASLt's GELU
epilogue computes the tanh approximation, not the erf GELU the model was trained with, so on
the GPU the op is a Triton kernel of our own (models/linear_gelu_kernel.py) that applies the
erf GELU to the fp32 accumulator: one rounding to bf16 where the unfused path has two, so it
is, if anything, closer to fp32.

Its launch configuration is fixed per GPU generation, never chosen by timing at start-up:
every worker runs the same kernel, so a frame's numbers do not depend on which GPU, or how
many, ran it. Where it applies is decided where the model is placed (predict/placement.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Launch configuration per compute capability (major): tile sizes, tile-rows per L2 group,
# warps, pipeline stages. Measured on an H200 (benchmarks/linear_gelu_kernels.py); a GPU
# generation without an entry keeps the unfused path.
CONFIGS = {
    9: dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
}


@torch.library.custom_op("virnucpro::linear_gelu", mutates_args=())
def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(x @ weight^T + bias), x [M, K], weight [N, K], bias [N]. An opaque op to
    torch.compile: the compiled layer calls the kernel as one node. Off the GPU (tests), the
    unfused functions."""
    if x.is_cuda:
        from virnucpro.models.linear_gelu_kernel import launch

        return launch(x, weight, bias)
    return F.gelu(F.linear(x, weight, bias), approximate="none")


@linear_gelu.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])
