"""ESM-2's GELU through erfc (models/gelu.py, kernel in models/gelu_kernel.py), pinned to the
exact GELU, x Phi(x), computed in float64: the formula's accuracy in fp32, its bf16 results
against the correctly rounded ones (and against the erf form PyTorch computes), special values,
the layer's wiring, the Triton kernel in Triton's CPU interpreter, and on the GPU the kernel
with the hardware's approximate reciprocal and exponential."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_fused_kernels import _in_triton_interpreter, _packed_inputs, _skip_unless_fused

from virnucpro.models import gelu as gelu_module
from virnucpro.models.esm2 import TransformerLayer
from virnucpro.models.gelu import gelu, gelu_formula

CUDA = torch.device("cuda", 0)
# Beyond this the exact GELU of a negative x is below 1e-35 in magnitude (fp32's exp leaves
# its normal range near -13.2): the formula's fit covers |x| <= 12.7.
RANGE = 12.7
# The fit's relative error of q is 1.2e-6; fp32 rounding of the polynomial and the exponential
# adds up to about 2e-6 more. Below x = -6 (|GELU| < 1e-8) the exponent -x^2 / 2 grows to 80,
# where fp32's spacing is 7.6e-6: its rounding alone is that much relative error in exp.
REL_TOL = 4e-6
REL_TOL_FAR_TAIL = 1.2e-5


def exact_gelu(x: torch.Tensor) -> torch.Tensor:
    """x Phi(x) in float64, with Phi through erfc so the negative tail keeps its precision."""
    x = x.double()
    return x * 0.5 * torch.special.erfc(-x / math.sqrt(2.0))


def _every_bf16() -> torch.Tensor:
    """Every bf16 value in [-RANGE, RANGE] (as the GEMM before the GELU gives them)."""
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    return every[every.isfinite() & (every.abs() <= RANGE)]


def _dense_inputs() -> torch.Tensor:
    """Every bf16 value in range, and a fine fp32 grid of the range, in fp32."""
    return torch.cat([_every_bf16().float(), torch.linspace(-RANGE, RANGE, 400_001)])


def _relative_error(got: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    exact = exact_gelu(x)
    return ((got.double() - exact).abs() / exact.abs().clamp_min(1e-300))[exact != 0]


def test_formula_in_fp32_is_the_exact_gelu_within_4e_6_relative_down_to_minus_6():
    x = _dense_inputs()
    near = x >= -6
    assert _relative_error(gelu_formula(x[near]), x[near]).max() < REL_TOL
    assert _relative_error(gelu_formula(x[~near]), x[~near]).max() < REL_TOL_FAR_TAIL
    # the erf form in fp32 (PyTorch's GELU) loses its relative precision in the negative tail
    assert _relative_error(F.gelu(x), x).max() > 100 * REL_TOL


def bf16_error_ulps(got: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|got - exact GELU| in units of bf16's last place at the exact value, where the exact
    value is a normal number (at least 2^-126; below, results may flush to 0)."""
    exact = exact_gelu(x)
    normal = exact.abs() >= 2.0**-126
    _, exponent = torch.frexp(exact[normal])  # exact = m 2^e, 0.5 <= |m| < 1
    ulp = torch.ldexp(torch.ones_like(exact[normal]), exponent - 8)
    return (got.double()[normal] - exact[normal]).abs() / ulp


def test_bf16_results_are_within_half_an_ulp_where_the_erf_form_is_not():
    """Over every bf16 input in range: correctly rounded results are within 0.5 ulp of the exact
    GELU. This formula's are too (its 1e-6 can tip a value lying within 1e-6 of a rounding
    midpoint to the other side: 0.5 + 2^8 x 4e-6 at most); the erf form in fp32 is off by
    many ulps in its negative tail."""
    x = _every_bf16()
    assert bf16_error_ulps(gelu_formula(x), x).max() <= 0.5 + 2**8 * REL_TOL
    assert bf16_error_ulps(F.gelu(x.float()).to(torch.bfloat16), x).max() > 2


def test_special_values():
    x = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), -20.0, -13.0, 40.0, 1e-30, -1e-30])
    got = gelu_formula(x)
    assert got[0] == 0 and got[1] == 0
    assert got[2] == float("inf")  # not inf - inf * 0
    assert got[3] == 0  # the limit; the erf form gives nan
    assert got[4].isnan()
    assert -1e-35 < got[5] <= 0 and -1e-35 < got[6] <= 0
    assert got[7] == 40.0
    assert torch.allclose(got[8:], x[8:] * 0.5, rtol=1e-6, atol=0)


def test_op_off_the_gpu_dispatches_to_the_formula_in_the_inputs_dtype_and_layout():
    """Dispatch, dtypes and layout (the formula's accuracy is tested above): a contiguous
    result even for a transposed input, as the fake implementation tells torch.compile."""
    transposed = gelu(torch.randn(64, 48).t())
    assert transposed.is_contiguous() and transposed.stride() == gelu._opoverload(
        torch.empty(48, 64, device="meta")).stride()
    x = torch.randn(3, 7, 9) * 3
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        got = gelu(x.to(dtype))
        assert got.dtype == dtype and got.shape == x.shape
        assert torch.equal(got, gelu_formula(x.to(dtype)))


def test_layer_with_the_fused_gelu_computes_the_same_function_and_compiles_it_as_one_op():
    """The flag swaps only the GELU: the layer's output moves by fp32 rounding, not more, and
    torch.compile keeps the op as one node of the layer's graph."""
    from torch._dynamo.testing import EagerAndRecordGraphs

    torch.manual_seed(2)
    layer = TransformerLayer(128, 4).eval()
    batch, cos_sin, x = _packed_inputs([9, 52, 30])
    with torch.no_grad():
        expected = layer.forward_packed(x, batch, cos_sin)
        layer.fused_gelu = True
        backend = EagerAndRecordGraphs()
        got = torch.compile(layer.forward_packed, backend=backend, dynamic=True)(x, batch, cos_sin)
    assert "virnucpro.gelu" in str(backend.graphs[0].graph)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, expected)  # it did go through the other formula
    torch._dynamo.reset()


def test_polynomial_is_pinned_at_zero_so_small_inputs_keep_fp32_precision():
    """P(1) = 0 (t = 1 at x = 0): q is 1/2 there, and near 0 the error is fp32's, not the fit's
    1.2e-6 (GELU of tiny x is x/2, exact in bf16: an error there would flip roundings)."""
    assert abs(sum(gelu_module.P_COEFFICIENTS)) < 1e-12
    x = torch.linspace(-1e-4, 1e-4, 20_001)
    assert _relative_error(gelu_formula(x), x).max() < 8e-7  # measured 4.4e-7


def test_gelu_kernel_in_triton_interpreter():
    """The kernel's arithmetic and masking (a size that is not a multiple of its block), in
    fp32 and fp16, with exact division and exp2 (the interpreter runs no PTX), against the
    exact GELU and the formula in PyTorch."""
    _in_triton_interpreter(f"""
        import math, torch
        REL_TOL, REL_TOL_FAR_TAIL = {REL_TOL}, {REL_TOL_FAR_TAIL}
        from virnucpro.models.gelu_kernel import launch
        from virnucpro.models.gelu import gelu_formula
        torch.manual_seed(0)
        x = torch.cat([torch.randn(3001) * 4, torch.tensor([0.0, float("inf"), -12.0, 12.0])])
        got = launch(x, block=256)
        assert got.shape == x.shape and got[-3] == float("inf"), got[-4:]
        exact = x.double() * 0.5 * torch.special.erfc(-x.double() / math.sqrt(2.0))
        checked = exact.isfinite() & (exact != 0) & (x.abs() <= {RANGE})  # the fit's range
        rel = ((got.double() - exact).abs() / exact.abs().clamp_min(1e-300))[checked]
        near = (x >= -6)[checked]
        assert rel[near].max() < REL_TOL and rel.max() < REL_TOL_FAR_TAIL, rel.max()
        # half precision, not contiguous; fp16, since the interpreter converts fp32 to bf16 by
        # truncation (the GPU rounds to nearest), so bf16 cannot be checked here
        xh = x.half().view(5, -1)[:, :600]
        gh = launch(xh, block=128)
        assert gh.dtype == torch.float16 and gh.shape == xh.shape
        ref = gelu_formula(xh).float()
        same = gh.float() == ref  # inf among them; the rest may differ by one rounding step
        assert (same | ((gh.float() - ref).abs() <= 2 ** -10 * ref.abs())).all() and same.double().mean() > 0.99
        assert launch(torch.empty(0)).numel() == 0
        print("ok")
    """)


@pytest.mark.gpu
def test_gpu_gelu_kernel_is_the_exact_gelu_within_tolerance():
    """With rcp.approx and ex2.approx (one and two units of fp32's last place) the kernel stays
    within 5e-6 of the exact GELU for x >= -6 (the far tail's bound below), and its bf16
    results within half an ulp of it but for values that close to a rounding midpoint."""
    _skip_unless_fused("gelu")
    x = _dense_inputs()
    got = gelu(x.to(CUDA)).cpu()
    near = x >= -6
    assert _relative_error(got[near], x[near]).max() < 5e-6
    assert _relative_error(got[~near], x[~near]).max() < REL_TOL_FAR_TAIL
    xb = _every_bf16()
    assert bf16_error_ulps(gelu(xb.to(CUDA)).cpu(), xb).max() <= 0.5 + 2**8 * 5e-6
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -20.0], device=CUDA)
    got_special = gelu(special).cpu()  # the hardware's min/max drop NaNs: the product keeps it
    assert got_special[0] == float("inf") and got_special[1] == 0 and got_special[2].isnan()
    assert got_special[3] == 0 and -1e-35 < got_special[4] <= 0
    big = torch.randn(4097, 10240, device=CUDA, dtype=torch.bfloat16) * 3  # ESM-2 3B's width
    assert torch.equal(gelu(big), gelu(big))
    assert torch.equal(gelu(big[1:]), gelu(big)[1:])  # an element's value never depends on its batch
