"""LayerNorm(x + shift) over one batch of ESM-2 3B's residual stream ([65,520 x 2,560] bf16,
shift fp32 [2,560]), each way, side by side in one run: a copy of x (the bandwidth's floor),
Inductor's kernel (the function compiled as the pipeline compiles its layers: one row a
program), and virnucpro's kernel (models/layer_norm_kernel.py) over a sweep of rows a program
and warps.

    python benchmarks/layer_norm_kernels.py --out layer_norm_kernels.json [--tokens 65520]

Each row: median ms over rounds (every way once a round in turn, 20 calls each), the bytes
moved (x read, the result written) per second, and the share of results equal to the
formula's in PyTorch (the others one rounding step away: the sums run in another order).
`best` names the fastest launch of the kernel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402
from esm_layer_kernels import persistent_reductions, start_record  # noqa: E402

from virnucpro.models import layer_norm_kernel  # noqa: E402
from virnucpro.models.layer_norm import layer_norm_plus_formula  # noqa: E402
from virnucpro.predict.compile import compile_options  # noqa: E402

SWEEP = [(rows, warps) for rows in (1, 2, 4, 8) for warps in (4, 8, 16)]
EPS = 1e-5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=65_520)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    _, result = start_record()
    d = 2560
    x = torch.randn(args.tokens, d, device="cuda").mul_(3).to(torch.bfloat16)
    shift = torch.randn(d, device="cuda")
    weight = (1 + 0.1 * torch.randn(d, device="cuda")).to(torch.bfloat16)
    bias = (0.1 * torch.randn(d, device="cuda")).to(torch.bfloat16)
    expected = layer_norm_plus_formula(x, shift, weight, bias, EPS)

    inductor = torch.compile(lambda x, s, w, b: layer_norm_plus_formula(x, s, w, b, EPS), dynamic=True,
                             options=compile_options())
    with torch.inference_mode(), persistent_reductions():
        inductor(x, shift, weight, bias)  # compiled as the layers are: one pass over the row
    ways = {"copy": lambda: x.clone(), "inductor": lambda: inductor(x, shift, weight, bias)}
    for rows, warps in SWEEP:
        ways[f"kernel rows={rows} warps={warps}"] = (
            lambda rows=rows, warps=warps: layer_norm_kernel.launch(x, shift, weight, bias, EPS, rows=rows,
                                                                    num_warps=warps))
    equal = {}
    with torch.inference_mode():
        for name, fn in ways.items():
            got = fn()
            equal[name] = None if name == "copy" else round(float((got == expected).double().mean()), 5)
        times: dict = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, fn in ways.items():
                fn()
                times[name].append(bench_engine.mean_ms(fn, 20))
    moved = 2 * x.numel() * x.element_size()
    rows_out = {}
    for name, samples in times.items():
        ms = float(np.median(samples))
        rows_out[name] = {"ms": round(ms, 4), "tb_per_s": round(moved / ms / 1e9, 2), "equal_to_formula": equal[name]}
        print(f"{name:28s} {ms:7.4f} ms {moved / ms / 1e9:5.2f} TB/s equal {equal[name]}", flush=True)
    kernels = {k: v for k, v in rows_out.items() if k.startswith("kernel")}
    result.update({"tokens": args.tokens, "ways": rows_out, "best": min(kernels, key=lambda k: kernels[k]["ms"]),
                   "shipped_launch": layer_norm_kernel.LAUNCH})
    print("best", result["best"])
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
