"""ESM-2's attention over packed proteins with the rotary embedding applied inside the kernel:
one op from the qkv projection's output to the attention's, in place of a pointwise kernel
that scales and rotates q and k (writing them out) and PyTorch's varlen attention reading them
back.

Measured on an H200 in one batch of reads (65,520 tokens, 36 layers): attention 6.3 % and the
rotation about 2 % of the batch's CUDA time (benchmarks/RESULTS.md). The proteins are short
(~52 tokens from 150 bp reads, 168 from 500 bp contig chunks), so most of that time is memory
traffic and mostly-empty tiles, not arithmetic. The kernel (models/rotary_attention_kernel.py)
reads q, k and v once from the projection's output, rotates in fp32 as the model does, and
computes exact softmax attention in fp32 with blocks of 64 queries and keys.

Off the GPU (tests, CPU runs) the op is the unfused arithmetic: rotation, then each protein's
own SDPA. Where the fused op is used is decided where the model is placed
(predict/placement.py).
"""

from __future__ import annotations

import torch

# Launch configuration: queries and keys per block, warps, pipeline stages. One for every
# batch, so a protein's arithmetic never depends on its batch. Measured on an H200 on batches
# of 150 bp reads' proteins (~52 tokens), 300 bp and 500 bp contig chunks' (102 and 168)
# (benchmarks/esm_layer_kernels.py --rotary-attention, and whole batches in bench_engine.py
# --profile). While the kernel divided to find its query block, one stage took 134 registers
# a thread and two stages (126) were the faster; with a shift and a mask one stage takes 128
# and is the faster on all three (two stages need 57 KB of shared memory a program, one 24 KB).
# Stages change when data is loaded, not the arithmetic: the same bits (checked on an H200).
LAUNCH = dict(block_m=64, block_n=64, num_warps=4, num_stages=1)


@torch.library.custom_op("virnucpro::rotary_attention", mutates_args=())
def rotary_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """softmax(rot(q * scale) rot(k)^T) v within each protein; qkv [N, 3, H, hd] the
    projection's output, cos and sin [N, hd] fp32 at each token's own position, cu_seqlens
    [B+1] int32 offsets; returns [N, H, hd] in qkv's dtype. The grid is one program per
    protein and head, so no longest length is needed (and none is guarded on)."""
    if qkv.is_cuda:
        from virnucpro.models.rotary_attention_kernel import launch

        return launch(qkv, cos, sin, cu_seqlens, scale, **LAUNCH)
    return _unfused(qkv, cos, sin, cu_seqlens, scale)


@rotary_attention.register_fake
def _(qkv, cos, sin, cu_seqlens, scale):
    return qkv.new_empty(qkv.shape[0], qkv.shape[2], qkv.shape[3])


def _unfused(qkv, cos, sin, cu_seqlens, scale):
    from virnucpro.models.esm2 import _apply_rotary, attention_one_by_one

    q, k, v = qkv.unbind(1)  # each [N, H, hd]
    q = _apply_rotary(q * scale, cos[:, None, :], sin[:, None, :])
    k = _apply_rotary(k, cos[:, None, :], sin[:, None, :])
    return attention_one_by_one(q, k, v, cu_seqlens.tolist())
