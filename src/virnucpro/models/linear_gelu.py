"""fc1 and its GELU as one cuBLASLt call: the GELU applied in the GEMM's epilogue to the fp32
accumulator (bias added), rounded to bf16 once, so the 10,240-wide pre-activation of every token
is never written out and read back by a GELU kernel of its own.

Which GELU: cuBLASLt's epilogue computes the tanh form,
0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), which differs from the model's erf GELU by at
most 4.7e-4 (at x = 2.70). The path it replaces rounds twice (the GEMM's output to bf16, then
the GELU's), and the rounding of the pre-activation is an error of the same size: over
x ~ N(0, s^2), s = 0.5 .. 8, the tanh form rounded once is the closer of the two to the exact
erf GELU: root-mean-square 0.61-0.99x of the two-rounding path's error, with a mean error of
the same size (benchmarks/RESULTS.md, issue 15, eleventh session; tests/test_linear_gelu.py).
So in bf16 this is a more accurate evaluation of the model's function, not a coarser one; in
fp32 (the reference path, CPUs) the model keeps the erf form.

Why an op: PyTorch's `_addmm_activation` computes the tanh form on GPUs (in the epilogue, or
after the GEMM where cuBLASLt cannot take the call) but the erf form on CPUs. The op fixes the
tanh form everywhere, so that the CPU tests check the GPU's function, and the compiled layer
calls the one GEMM as an opaque node. Off the GPU it is the same arithmetic, unfused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("virnucpro::linear_gelu", mutates_args=())
def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x weight^T + bias); x [..., in], weight [out, in], bias [out]; [..., out]."""
    if x.is_cuda:  # the GEMM takes rows: the padded path's [B, T, in] as B T rows
        rows = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)
        return rows.reshape(*x.shape[:-1], weight.shape[0])
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


@linear_gelu.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])
