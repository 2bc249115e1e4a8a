"""Why ESM-2's GELU kernel runs below the memory bandwidth: GELU over one fc1 output of a
reads batch ([65,520, 10,240] bf16), as PyTorch's own kernel, as Inductor compiles it
(dynamic and static shapes) and as hand-written Triton kernels of several launch
configurations; a bf16 copy and x*2 as the bandwidth ceiling; and virnucpro's GELU through
erfc (models/gelu.py, about half the instructions of the erf form) at several launches, with its
accuracy on the same tensor against the exact GELU in float64. Also prints the triton_meta
Inductor gives its kernel (which arguments it declares divisible by 16).

    python benchmarks/gelu_kernels.py --out gelu_kernels.json

GB/s counts one read and one write of the tensor.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from esm_layer_kernels import time_ms  # noqa: E402

from virnucpro.predict.compile import compile_options  # noqa: E402

ROWS, WIDTH = 65_520, 10_240


@triton.jit
def gelu_kernel(ptr, out, n, block: tl.constexpr, exact: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * block + tl.arange(0, block)
    mask = offs < n
    v = tl.load(ptr + offs, mask).to(tl.float32)
    if exact:  # the model's erf GELU, as ATen and Inductor compute it
        g = 0.5 * v * (1.0 + tl.extra.cuda.libdevice.erf(v * 0.7071067811865476))
    else:  # x*2: memory only
        g = v * 2.0
    tl.store(out + offs, g.to(tl.bfloat16), mask)


# The same kernel without Triton's specialisation of n (then it cannot know n is a multiple
# of 16, as Inductor's dynamic-shape kernels may not).
gelu_kernel_unspecialised = triton.jit(gelu_kernel.fn, do_not_specialize=["n"])


def accuracy(x: torch.Tensor, outputs: dict[str, torch.Tensor], rows: int = 4096) -> dict:
    """Each bf16 GELU output against the exact GELU in float64 on the first rows of x: the share
    of values that differ from the correctly rounded bf16 result, and the largest error in
    bf16 units of the last place at the exact value (where it is a normal number)."""
    x64 = x[:rows].double()
    exact = x64 * 0.5 * torch.special.erfc(-x64 / 2**0.5)
    correct = exact.to(torch.bfloat16)
    normal = exact.abs() >= 2.0**-126
    _, exponent = torch.frexp(exact)  # exact = m 2^e, 0.5 <= |m| < 1: bf16's ulp is 2^(e - 8)
    ulp = torch.ldexp(torch.ones_like(exact), exponent - 8)
    report = {}
    for name, out in outputs.items():
        out = out[:rows]
        report[name] = {"not_correctly_rounded": float((out != correct).double().mean()),
                        "max_error_ulps": float(((out.double() - exact).abs() / ulp)[normal].max())}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch._dynamo.config.specialize_float = True
    x = torch.randn(ROWS, WIDTH, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    n = x.numel()
    gigabytes = 2 * n * x.element_size() / 1e9
    specialised, unspecialised, cdiv = gelu_kernel, gelu_kernel_unspecialised, triton.cdiv

    def compiled(fn, dynamic):
        torch._dynamo.reset()
        compiled_fn = torch.compile(fn, dynamic=dynamic, options=compile_options())
        from torch._inductor.utils import run_and_get_code

        with torch._inductor.config.patch(fx_graph_cache=False):
            _, codes = run_and_get_code(compiled_fn, x)
        meta = re.findall(r"'configs': (\[.*?\])\}", "\n".join(codes))
        return (lambda: compiled_fn(x)), meta

    rows, metas = {}, {}
    rows["aten_copy"] = lambda: x.clone()
    rows["aten_gelu"] = lambda: F.gelu(x)
    for dynamic in (True, False):
        shape = "dynamic" if dynamic else "static"
        rows[f"inductor_gelu_{shape}"], metas[f"inductor_gelu_{shape}"] = compiled(F.gelu, dynamic)
        rows[f"inductor_x2_{shape}"], metas[f"inductor_x2_{shape}"] = compiled(lambda t: t * 2, dynamic)
    for block, warps in ((1024, 4), (2048, 4), (4096, 8), (8192, 8)):
        rows[f"triton_gelu_{block}_{warps}"] = (lambda b, w: lambda: specialised[(cdiv(n, b),)](
            x, y, n, block=b, exact=True, num_warps=w))(block, warps)
    rows["triton_gelu_1024_4_size_not_specialised"] = lambda: unspecialised[(cdiv(n, 1024),)](
        x, y, n, block=1024, exact=True, num_warps=4)
    rows["triton_x2_4096_8"] = lambda: specialised[(cdiv(n, 4096),)](x, y, n, block=4096, exact=False, num_warps=8)
    from virnucpro.models import gelu_kernel as erfc_kernel
    from virnucpro.models.gelu import gelu as erfc_gelu_op

    for block, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8)):
        rows[f"erfc_gelu_{block}_{warps}"] = (lambda b, w: lambda: erfc_kernel.launch(x, block=b, num_warps=w))(
            block, warps)
    rows["erfc_gelu_op_as_shipped"] = lambda: erfc_gelu_op(x)
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "shape": [ROWS, WIDTH],
              "inductor_divisibility": metas, "kernels": {}}
    for name, fn in rows.items():
        ms = time_ms(fn)
        result["kernels"][name] = {"ms": round(ms, 3), "TB_per_s": round(gigabytes / ms, 2)}
        print(name, result["kernels"][name], flush=True)
    specialised[(cdiv(n, 4096),)](x, y, n, block=4096, exact=True, num_warps=8)
    result["hand_gelu_equals_aten_bitwise"] = bool(torch.equal(y, F.gelu(x)))
    result["accuracy_vs_exact_float64"] = accuracy(x, {"aten_erf_gelu": F.gelu(x), "erfc_gelu": erfc_gelu_op(x)})
    print(json.dumps(result["accuracy_vs_exact_float64"], indent=1))
    print(json.dumps(metas, indent=1))
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
