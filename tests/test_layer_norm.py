"""virnucpro::layer_norm_plus (models/layer_norm.py): LayerNorm(x + shift) in fp32, rounded
once. Its PyTorch arithmetic against nn.LayerNorm; the Triton kernel's rows, masking and
arithmetic in Triton's CPU interpreter where Triton is installed; on the GPU, the kernel
against the same arithmetic in PyTorch, and its determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_fused_kernels import _in_triton_interpreter, _skip_unless_fused

from virnucpro.models.layer_norm import layer_norm_plus, layer_norm_plus_formula

CUDA = torch.device("cuda", 0)


def _inputs(rows: int, width: int, dtype: torch.dtype, seed: int = 0):
    """x with a large common offset per row (as the residual stream has: the mean must be taken
    out before the squares are summed), shift of the size of ESM-2's biases."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, width, generator=gen) * 3 + torch.randn(rows, 1, generator=gen) * 20).to(dtype)
    shift = torch.randn(width, generator=gen)
    weight = (1 + 0.1 * torch.randn(width, generator=gen)).to(dtype)
    bias = (0.1 * torch.randn(width, generator=gen)).to(dtype)
    return x, shift, weight, bias


def test_formula_is_layer_norm_of_the_sum_in_fp32_rounded_once():
    x, shift, weight, bias = _inputs(50, 96, torch.bfloat16)
    expected = F.layer_norm(x.float() + shift, (96,), weight.float(), bias.float(), 1e-5).to(torch.bfloat16)
    got = layer_norm_plus(x, shift, weight, bias, 1e-5)  # the op, off the GPU
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
    # with no shift, nn.LayerNorm itself in fp32
    x32, _, w32, b32 = _inputs(50, 96, torch.float32)
    torch.testing.assert_close(layer_norm_plus_formula(x32, torch.zeros(96), w32, b32, 1e-5),
                               F.layer_norm(x32, (96,), w32, b32, 1e-5), rtol=0, atol=0)


def test_layer_norm_kernel_in_triton_interpreter():
    """Rows a program that do not divide the row count, a width that is not a power of two,
    fp32 and fp16 (the interpreter truncates fp32 to bf16, so bf16 is checked on the GPU only):
    the kernel's sums run in another order than PyTorch's, so fp32 results agree within a few
    units of fp32's last place of values of order 1, and fp16 results within one rounding step."""
    _in_triton_interpreter(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_layer_norm import _inputs
        from virnucpro.models.layer_norm import layer_norm_plus_formula
        from virnucpro.models.layer_norm_kernel import launch
        for width, rows, per_program in [(160, 7, 2), (96, 5, 4), (128, 3, 1)]:
            x, shift, weight, bias = _inputs(rows, width, torch.float32, seed=width)
            got = launch(x, shift, weight, bias, 1e-5, rows=per_program, num_warps=4)
            expected = layer_norm_plus_formula(x, shift, weight, bias, 1e-5)
            assert got.shape == x.shape and (got - expected).abs().max() < 1e-5, (got - expected).abs().max()
            xh, _, wh, bh = _inputs(rows, width, torch.float16, seed=width)
            gh = launch(xh, shift, wh, bh, 1e-5, rows=per_program, num_warps=4)
            ref = layer_norm_plus_formula(xh, shift, wh, bh, 1e-5).float()
            assert gh.dtype == torch.float16
            assert ((gh.float() - ref).abs() <= 2 ** -10 * ref.abs() + 2 ** -24).all()
        assert launch(torch.empty(0, 8), torch.zeros(8), torch.ones(8), torch.zeros(8), 1e-5).numel() == 0
        print("ok")
    """)


@pytest.mark.gpu
def test_gpu_layer_norm_kernel_matches_the_formula_and_is_deterministic():
    """ESM-2 3B's width in bf16 over a batch-sized row count: each result is the formula's or
    one bf16 rounding step from it (the fp32 sums run in another order), and the same bits
    every call. Where the affine step cancels (w y + b near 0) a result is tiny and its fp32
    error, a few fp32 ulps of the terms (|w y| < 8 here: ~1e-6), is more than its own step:
    the bound adds 1e-5 absolute."""
    _skip_unless_fused("residual_in_gemm")
    x, shift, weight, bias = (t.to(CUDA) for t in _inputs(20_001, 2560, torch.bfloat16))
    got = layer_norm_plus(x, shift, weight, bias, 1e-5)
    expected = layer_norm_plus_formula(x, shift, weight, bias, 1e-5)
    step = torch.finfo(torch.bfloat16).eps * expected.float().abs() + 1e-5
    diff = (got.float() - expected.float()).abs()
    assert (diff <= step).all(), (diff.max(), (diff - step).max(), expected.float().flatten()[(diff - step).argmax()])
    # a result differs only where the fp32 value lies within a few fp32 ulps of a bf16 rounding
    # midpoint (a chance of ~2^-14 each): a systematic difference (eps, the shift) shows here
    assert (got == expected).double().mean() > 0.99
    assert torch.equal(layer_norm_plus(x, shift, weight, bias, 1e-5), got)
