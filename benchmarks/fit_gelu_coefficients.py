"""Re-derive the constants of virnucpro's GELU through erfc (models/gelu.py) and check them.

    python benchmarks/fit_gelu_coefficients.py

erfc(z) = t exp(P(t) - z^2) with t = 1 / (1 + p z) defines P on t in (0, 1]; P is smooth there,
so a polynomial of low degree fits it. The fit is minimax in P's absolute error (= the relative
error of erfc, hence of Phi(-|x|) and of GELU for x < 0) over z in [0, 9] (|x| <= 12.7), by
Lawson's iteratively reweighted least squares, with P(1) = 0 imposed (exact at x = 0). For
each degree, p is chosen from a grid. NumPy and the standard library only; float64.

Prints, per degree, the best p, the fit's error and the coefficients (lowest degree first), and
whether models/gelu.py's constants are the degree-6 fit.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

Z_MAX = 9.0  # |x| = 12.7; GELU(-12.7) ~ -4e-36, fp32's exp underflows soon after


def target(t: np.ndarray, p: float) -> np.ndarray:
    """log(erfc(z) / t) + z^2 at z = (1/t - 1) / p."""
    z = (1.0 / t - 1.0) / p
    return np.array([math.log(math.erfc(v)) for v in z]) - np.log(t) + z * z


def fit(degree: int, p: float, points: int = 6000, iterations: int = 150) -> tuple[np.ndarray, float]:
    """Coefficients c_0..c_degree with sum c = 0, and the largest error on the grid."""
    t = np.linspace(1.0 / (1.0 + p * Z_MAX), 1.0, points)
    y = target(t, p)
    basis = np.stack([t**k - 1.0 for k in range(1, degree + 1)], axis=1)  # P(1) = 0 built in
    weights = np.full(points, 1.0 / points)
    for _ in range(iterations):  # Lawson: weights grow where the error is largest
        root = np.sqrt(weights)
        c, *_ = np.linalg.lstsq(basis * root[:, None], y * root, rcond=None)
        error = np.abs(basis @ c - y)
        weights = weights * error
        weights /= weights.sum()
    return np.concatenate([[-c.sum()], c]), float(error.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--degrees", default="5,6,7")
    args = ap.parse_args()
    fits = {}
    for degree in map(int, args.degrees.split(",")):
        best = min(((*fit(degree, float(p)), float(p)) for p in np.arange(0.30, 0.81, 0.01)), key=lambda r: r[1])
        fits[degree] = best
        coefficients, error, p = best
        print(f"degree {degree}: p = {p:.2f}, max relative error of erfc {error:.3e}")
        print("   ", ", ".join(repr(float(c)) for c in coefficients))
    if 6 in fits:
        from virnucpro.models import gelu

        coefficients, _, p = fits[6]
        same = (math.isclose(gelu.K, p / math.sqrt(2.0), rel_tol=1e-12)
                and np.allclose(gelu.P_COEFFICIENTS, coefficients, rtol=0, atol=1e-9))
        print("models/gelu.py holds the degree-6 fit:", same)


if __name__ == "__main__":
    main()
