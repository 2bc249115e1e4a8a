"""The fused rotary attention kernel (models/rotary_attention_kernel.py) of one or more source
trees, side by side: registers a thread, spilled registers, ms per call and whether its bits
match the first tree's, on batches of 150 bp reads' proteins (~52 tokens), 300 bp contig
chunks' (102) and 500 bp chunks' (168), ~65.5k tokens of 40 heads of 64 each.

    python benchmarks/rotary_attention_launch.py --tree ../before . --out F.json
    python benchmarks/rotary_attention_launch.py --tree ../before . --stages 1,2 --maxnreg 0,120,96 --out F.json
    python benchmarks/rotary_attention_launch.py --tree . --block-m 32,64 --block-n 32,64 --num-warps 4,8 --out F.json

Each tree's kernel is run through its own `launch` with the op's launch configuration
(models/rotary_attention.py LAUNCH), the query and key blocks, the warps, the stages and the
register limit (Triton's maxnreg; 0 = none) varied on top, every combination of those given.
Each result is also compared with fp32 attention on the same inputs (the largest and the mean
|difference|), so launches or kernels whose bits differ are judged by their error, not by
agreement with each other. The calls are interleaved, 50 timed each after 10 untimed, median
reported, so the trees see the same clocks. Registers decide how many programs an SM holds at once: on an
H200 a kernel of 128 registers a thread runs four of 128 threads, one of 130 or more three
(benchmarks/RESULTS.md, issue 15, sixth session).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HEADS, HEAD_DIM, TOKENS = 40, 64, 65_520
REPS = 60  # timed calls of each launch, the first sixth untimed
DEVICE, DTYPE = torch.device("cuda"), torch.bfloat16  # as the pipeline runs ESM-2 on a GPU


class _Recording:
    """Stands in for a Triton kernel: launches it as asked, with a register limit added, and
    keeps the compiled kernel the launch returns (its registers and spills)."""

    def __init__(self, kernel, maxnreg: int) -> None:
        self.kernel, self.maxnreg, self.compiled = kernel, maxnreg, None

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            if self.maxnreg:
                kwargs["maxnreg"] = self.maxnreg
            self.compiled = self.kernel[grid](*args, **kwargs)
            return self.compiled
        return run


def load_tree(tree: Path, index: int) -> tuple:
    """The tree's kernel module (loaded from its file under a name of its own) and its op's
    launch configuration, read from the op's source (importing the op itself would register
    the same custom op twice)."""
    models = tree / "src" / "virnucpro" / "models"
    spec = importlib.util.spec_from_file_location(f"rotary_attention_kernel_{index}", models / "rotary_attention_kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    launch_config = {}  # older trees named their tiles apart: launch's defaults, the same values
    for node in ast.parse((models / "rotary_attention.py").read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["LAUNCH"]:
            launch_config = {kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords}
    return module, launch_config


def batch_of(kind: str, rng: np.random.Generator):
    """Packed inputs as the model hands them to the op: qkv [N, 3, H, hd] bf16, cos and sin
    [N, hd] fp32 at each token's position, cu_seqlens, the longest protein."""
    from virnucpro.models.esm2 import RotaryEmbedding

    lengths: list[int] = []
    while sum(lengths) < TOKENS:
        if kind == "reads":
            lengths.append(int(rng.integers(48, 52)) + 2)
        else:
            longest = 168 if kind == "contigs" else 102
            lengths.append(longest if rng.random() < 0.85 else int(rng.integers(20, longest - 1)) + 2)
    lengths = lengths[:-1]
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32).to(DEVICE)
    qkv = torch.randn(int(cu[-1]), 3, HEADS, HEAD_DIM).to(DEVICE, DTYPE)
    positions = torch.cat([torch.arange(n) for n in lengths]).to(DEVICE)
    cos, sin = RotaryEmbedding(HEAD_DIM).to(DEVICE).cos_sin(max(lengths), DEVICE)
    return qkv, cos[positions].contiguous(), sin[positions].contiguous(), cu, max(lengths)


def fp32_reference(qkv, cos, sin, cu, scale: float) -> torch.Tensor:
    """The model's arithmetic in fp32 on the same bf16 inputs: q scaled in bf16 (as the model
    scales it), both rotated in fp32, then each protein's own softmax attention; [N, H, hd]."""
    from virnucpro.models.esm2 import _apply_rotary, attention_one_by_one

    q, k, v = qkv.unbind(1)
    q = _apply_rotary((q * scale).float(), cos[:, None], sin[:, None])
    k = _apply_rotary(k.float(), cos[:, None], sin[:, None])
    return attention_one_by_one(q, k, v.float(), cu.tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, nargs="+", required=True, help="source trees; bits compared to the first")
    ap.add_argument("--stages", default="", help="pipeline stages to try, comma-separated (default: the op's)")
    ap.add_argument("--block-m", default="", help="query blocks to try, comma-separated (default: the op's)")
    ap.add_argument("--block-n", default="", help="key blocks to try, comma-separated (default: the op's)")
    ap.add_argument("--num-warps", default="", help="warps a program to try, comma-separated (default: the op's)")
    ap.add_argument("--maxnreg", default="0", help="register limits to try, comma-separated (0 = none)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("rotary_attention_launch needs a CUDA GPU")
    trees = [(tree, *load_tree(tree, i)) for i, tree in enumerate(args.tree)]
    def choices(text: str, name: str) -> list[dict]:  # [{}] (the op's own) where none are given
        return [{name: int(value)} for value in text.split(",") if value] or [{}]
    overrides = [{k: v for choice in combination for k, v in choice.items()} for combination in itertools.product(
        choices(args.block_m, "block_m"), choices(args.block_n, "block_n"), choices(args.num_warps, "num_warps"),
        choices(args.stages, "num_stages"))]
    limits = [int(m) for m in args.maxnreg.split(",") if m]
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "rows": []}
    rng = np.random.default_rng(0)
    for kind in ("reads", "chunks_300bp", "contigs"):
        qkv, cos, sin, cu, longest = batch_of(kind, rng)
        reference = fp32_reference(qkv, cos, sin, cu, 0.125)
        runs = []  # (row, call)
        for tree, module, config in trees:
            for override, limit in itertools.product(overrides, limits):
                launch_config = {**config, **override}
                recording = _Recording(module._rotary_attention_kernel, limit)

                # trees before the kernel walked its query blocks also took the longest protein
                lengths = (longest,) if "max_len" in inspect.signature(module.launch).parameters else ()

                def call(module=module, launch_config=launch_config, recording=recording, lengths=lengths):
                    module._rotary_attention_kernel = recording  # launch finds it by name
                    try:
                        return module.launch(qkv, cos, sin, cu, *lengths, 0.125, **launch_config)
                    finally:
                        module._rotary_attention_kernel = recording.kernel
                out = call()
                error = (out.float() - reference).abs()
                row = {"kind": kind, "tree": str(tree), "launch": launch_config, "maxnreg": limit,
                       "registers": recording.compiled.n_regs, "spilled": recording.compiled.n_spills,
                       "same_bits_as_first": torch.equal(out, runs[0][2]) if runs else True,
                       "max_abs_error_vs_fp32": float(error.max()), "mean_abs_error_vs_fp32": float(error.mean()),
                       "times": []}
                runs.append((row, call, out))
        for rep in range(REPS):  # interleaved, so every launch sees the same clocks
            for row, call, _ in runs:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                torch.cuda.synchronize()
                if rep >= REPS // 6:
                    row["times"].append(start.elapsed_time(end))
        for row, _, _ in runs:
            row["ms"] = round(float(np.median(row.pop("times"))), 4)
            row["tokens"], row["longest"] = int(cu[-1]), longest
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
