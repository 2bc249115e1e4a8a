"""Attention over packed proteins on the GPU, with the kernel chosen per batch.

PyTorch ships two varlen attention kernels for half precision: flash (torch.nn.attention.varlen)
and the memory-efficient one. Which is faster depends on the proteins' length. Measured on an
H200 in whole ESM-2 batches of 65,520 packed tokens (benchmarks/bench_engine.py --profile, 36
layers): on 150 bp reads' proteins (~52 tokens) the memory-efficient kernel took 26 ms against
flash's 52 (flash works in tiles of 128 queries, which short proteins leave mostly empty); on
500 bp contig chunks (168 tokens) flash was the faster, 51 ms against 57. The crossover
between the two was not measured: 128 tokens splits them.

The choice depends on the batch's longest protein, a host-side int. Branching on it inside
torch.compile's graph would make Dynamo guard on it and recompile for every new length, so the
choice lives inside a custom op that the compiled graph calls as one opaque node. Both kernels
compute exact attention with fp32 softmax accumulation and neither uses atomics: each is
deterministic, and a batch's kernel depends only on the batch, never on the device count.
"""

from __future__ import annotations

import torch
from torch.nn.attention.varlen import varlen_attn

# Longest protein (tokens) for which the memory-efficient kernel is used; above it, flash.
EFFICIENT_UP_TO_TOKENS = 128


@torch.library.custom_op("virnucpro::packed_attention", mutates_args=())
def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_len: int) -> torch.Tensor:
    """softmax(q k^T) v within each protein; q, k, v [N, H, hd] (q already scaled), CUDA,
    bf16 or fp16; cu_seqlens [B+1] int32 offsets; max_len the longest protein."""
    if max_len <= EFFICIENT_UP_TO_TOKENS:
        out = torch.ops.aten._efficient_attention_forward(
            q[None], k[None], v[None], None, cu_seqlens, cu_seqlens, max_len, max_len,
            0.0, 0, False, scale=1.0)[0]  # [1, N, H, hd]
        return out[0]
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, scale=1.0)


@packed_attention.register_fake
def _(q, k, v, cu_seqlens, max_len):
    return q.new_empty(q.shape)  # contiguous, as both kernels return it, whatever q's strides
