"""Registers a thread of the rotary attention kernel (models/rotary_attention_kernel.py), found
without a GPU: Triton compiles it for an H100/H200 (sm_90) with the ptxas it ships, and the
CUDA binary's resource table gives registers, stack (spilled) bytes and shared memory.

    python benchmarks/kernel_registers.py                          # this tree, the op's launch
    python benchmarks/kernel_registers.py --tree ../before . --launch 64,64,4,1 64,32,4,1 64,64,4,1,128

A launch is BLOCK_M,BLOCK_N,warps,stages[,register limit]. Registers decide how many programs
an SM runs at once (65,536 a SM: four programs of 128 threads at 128 registers, three at 130 or
more), and with them the kernel's speed: benchmarks/RESULTS.md, issue 15, sixth and ninth
sessions. The figures match what the kernel reports on an H200 when launched by the op
(`n_regs`, checked against rotary_attention_launch.py in the same session), because the
signature below gives the pointers the 16-byte alignment Triton finds on PyTorch's tensors.
Needs Triton (it comes with CUDA builds of PyTorch; `pip install triton` beside a CPU build).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rotary_attention_launch import load_tree  # noqa: E402 - the tree's kernel and the op's LAUNCH

ROOT = Path(__file__).resolve().parents[1]
HEADS, HEAD_DIM = 40, 64  # ESM-2 3B
# Types of the kernel's arguments by name; a tree's kernel takes those it names (q_shift: the
# kernels before the tenth session, one program a query block)
ARGUMENT_TYPES = {"qkv_ptr": "*bf16", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "cu_ptr": "*i32", "out_ptr": "*bf16",
                  "scale": "fp32", "q_shift": "i32", "H": "constexpr", "HD": "constexpr", "BLOCK_M": "constexpr",
                  "BLOCK_N": "constexpr"}


def resources(kernel, block_m: int = 64, block_n: int = 64, num_warps: int = 4, num_stages: int = 1,
              max_registers: int = 0) -> dict:
    """Registers a thread, stack bytes a thread (spills) and shared memory of the rotary
    attention kernel (a tree's `_rotary_attention_kernel`) compiled for sm_90 with this launch."""
    import triton
    from triton.backends.compiler import GPUTarget

    source = triton.compiler.ASTSource(
        fn=kernel, signature={name: ARGUMENT_TYPES[name] for name in kernel.arg_names},
        constexprs={"H": HEADS, "HD": HEAD_DIM, "BLOCK_M": block_m, "BLOCK_N": block_n},
        attrs={(i,): [["tt.divisibility", 16]] for i in range(5)})  # the five tensors' pointers
    options = dict(num_warps=num_warps, num_stages=num_stages, **({"maxnreg": max_registers} if max_registers else {}))
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "kernel.cubin"
        binary.write_bytes(compiled.asm["cubin"])
        table = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(binary)],
                               capture_output=True, text=True, check=True).stdout
    return {"registers": int(re.search(r"REG:(\d+)", table).group(1)),
            "stack_bytes": int(re.search(r"STACK:(\d+)", table).group(1)),
            "shared_bytes": compiled.metadata.shared}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, nargs="+", default=[ROOT])
    ap.add_argument("--launch", nargs="*", default=[], help="BLOCK_M,BLOCK_N,warps,stages[,register limit]")
    args = ap.parse_args()
    for index, tree in enumerate(args.tree):
        module, op_launch = load_tree(tree, index)
        launches = [dict(zip(("block_m", "block_n", "num_warps", "num_stages", "max_registers"),
                             map(int, text.split(",")))) for text in args.launch] or [op_launch]
        for launch in launches:
            used = resources(module._rotary_attention_kernel, **launch)
            print(json.dumps({"tree": str(tree), "launch": launch, **used}), flush=True)

if __name__ == "__main__":
    main()
