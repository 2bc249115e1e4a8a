"""ESM-2's GELU, x Phi(x), through erfc instead of erf: the same function, computed in about
half the GPU instructions and more accurately.

Why: in the packed path the GELU is its own kernel between the fc1 and fc2 GEMMs, over
10,240 values per token. The kernel Inductor writes for the erf form, 0.5 x (1 + erf(x / sqrt 2)),
takes about 39 instructions per value on an H100/H200 (libdevice's erff chooses its
polynomial's coefficients per branch, so each step of it is a move and a multiply-add), and ran
at 2.6 TB/s against 4.2 for a copy: 1.5-1.7 ms of a 26 ms layer of ~98k tokens
(benchmarks/RESULTS.md).

The form used here, for every x:

    q = Phi(-|x|) = erfc(|x| / sqrt 2) / 2 = t exp(P(t) - x^2 / 2),   t = 1 / (1 + K |x|)
    GELU(x) = max(x, 0) - |x| q                 (x >= 0: x (1 - q); x < 0: x q)

P is a polynomial of degree 6 in t, fitted so that q's relative error is at most 1.22e-6 for
|x| <= 12.7 (benchmarks/fit_gelu_coefficients.py re-derives the constants). One polynomial with
fixed coefficients, one reciprocal and one exponential: about 20 instructions per value
(kernel in models/gelu_kernel.py). Measured on an H200 over one fc1 output of a batch of reads
(65,520 x 10,240 bf16): 0.68 ms, as fast as a copy of it (0.65 ms), against 0.86 ms for
PyTorch's own GELU and 1.12 for Inductor's; in whole batches of ESM-2 3B the GELU went from
42 to 24 ms of a 631 ms batch of reads, and ESM-2 from ~104.6k to ~106.7k tokens/s, with the
same fidelity to fp32 (benchmarks/RESULTS.md, issue 15, seventh session).

Accuracy, against the exact GELU in float64, in fp32 arithmetic: within 4e-6 relative for
x >= -6, and 1.2e-5 down to -12.7 (|GELU| < 1e-8 there; the exponent's own fp32 rounding
dominates); below, the result is under 1e-35 in magnitude and may flush to 0. The
erf form in fp32, as PyTorch and Inductor compute it, loses relative precision for x below
about -3, where 1 + erf cancels: over every bf16 input its bf16 results are up to 255 units of
bf16's last place off the exact GELU, this form's within half a unit (tests/test_gelu.py
measures both).

Off the GPU the op is the same formula in PyTorch's fp32 arithmetic (tests, CPU runs). Where
the kernel is used is decided where the model is placed (predict/placement.py).
"""

from __future__ import annotations

import math

import torch

# t = 1 / (1 + K |x|): the fit's 1 / (1 + 0.38 z) at z = |x| / sqrt 2.
K = 0.38 / math.sqrt(2.0)
# P(t) = sum P_COEFFICIENTS[i] t^i ~ log(erfc(z) / t) + z^2, minimax over z in [0, 9] with
# P(1) = 0 (their sum is 0): q = 1/2 exactly at x = 0, so the error vanishes towards 0.
P_COEFFICIENTS = (-1.5386878634075352, 0.979387553649728, 0.5647799888976293, -0.28696616920067797,
                  0.9618298068199245, -0.9562320035194241, 0.2758886867603557)
# In the exponent: log(1/2) (q is half of erfc), folded into the constant term.
P0_WITH_HALF = P_COEFFICIENTS[0] + math.log(0.5)
# |x| is capped where it multiplies q (q is 0 there), so GELU(+inf) = +inf, not inf - inf * 0.
ABS_CAP = 3.0e38


@torch.library.custom_op("virnucpro::gelu", mutates_args=())
def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU(x) = x Phi(x) (the exact, erf GELU; not the tanh approximation), in x's dtype."""
    if x.is_cuda:
        from virnucpro.models.gelu_kernel import launch

        return launch(x)
    return gelu_formula(x)


@gelu.register_fake
def _(x):
    return x.new_empty(x.shape)  # contiguous, as both implementations return it


def gelu_formula(x: torch.Tensor) -> torch.Tensor:
    """The op's arithmetic in PyTorch, in fp32 whatever x's dtype; returns x's dtype,
    contiguous."""
    xf = x.float()
    a = xf.abs()
    t = 1.0 / (1.0 + K * a)
    p = torch.full_like(t, P_COEFFICIENTS[-1])
    for c in P_COEFFICIENTS[-2:0:-1]:
        p = p * t + c
    p = p * t + P0_WITH_HALF
    q = t * torch.exp(p - 0.5 * xf * xf)
    return (torch.clamp_min(xf, 0.0) - torch.clamp_max(a, ABS_CAP) * q).to(x.dtype).contiguous()
