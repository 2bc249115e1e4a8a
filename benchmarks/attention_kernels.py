"""ESM-2 3B attention shapes (40 heads of 64) on the kernels PyTorch ships: where does the
~7% of a batch spent in attention go, and would another kernel do better?

    python benchmarks/attention_kernels.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.varlen import varlen_attn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402

HEADS, HEAD_DIM, BUDGET = 40, 64, 65_536


def time_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    return bench_engine.mean_ms(fn, repeats)


def main() -> None:
    results = {}
    for seq_len in (168, 51):
        batch = BUDGET // seq_len
        tokens = batch * seq_len
        flops = 4 * batch * seq_len * seq_len * HEADS * HEAD_DIM
        q, k, v = (torch.randn(tokens, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        cu = torch.arange(0, tokens + 1, seq_len, device="cuda", dtype=torch.int32)
        row = {"varlen_flash": time_ms(lambda: varlen_attn(q, k, v, cu, cu, seq_len, seq_len, scale=1.0))}
        qb, kb, vb = (t.view(batch, seq_len, HEADS, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
        for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                              ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    row[name] = time_ms(lambda: F.scaled_dot_product_attention(qb, kb, vb, scale=1.0))
            except RuntimeError as exc:
                row[name] = f"unavailable: {str(exc).splitlines()[0][:80]}"
        results[f"T={seq_len}"] = {k: (f"{v:.3f} ms, {flops / v / 1e9:.0f} TFLOP/s" if isinstance(v, float) else v)
                                   for k, v in row.items()}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
