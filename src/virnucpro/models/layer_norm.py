"""LayerNorm of the residual stream held as x + shift (models/esm2.py, ESM2.residual_in_gemm:
x in the model's dtype, shift the fp32 [D] biases kept apart from it), as one op: on the GPU
one Triton kernel (models/layer_norm_kernel.py) that reads x once and writes the result once;
elsewhere the same arithmetic in PyTorch. Both sum x + shift and normalise in fp32, and round
once to x's dtype, as a half-precision nn.LayerNorm computes and rounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("virnucpro::layer_norm_plus", mutates_args=())
def layer_norm_plus(x: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    eps: float) -> torch.Tensor:
    """LayerNorm(x + shift) over the last dimension with `weight` and `bias`, in x's dtype,
    contiguous."""
    if x.is_cuda:
        from virnucpro.models.layer_norm_kernel import launch

        return launch(x, shift, weight, bias, eps)
    return layer_norm_plus_formula(x, shift, weight, bias, eps)


@layer_norm_plus.register_fake
def _(x, shift, weight, bias, eps):
    return x.new_empty(x.shape)  # contiguous, as both implementations return it


def layer_norm_plus_formula(x: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            eps: float) -> torch.Tensor:
    """The op's arithmetic in PyTorch: in fp32, rounded once to x's dtype."""
    return F.layer_norm(x.float() + shift.float(), (x.shape[-1],), weight.float(), bias.float(),
                        eps).to(x.dtype).contiguous()
