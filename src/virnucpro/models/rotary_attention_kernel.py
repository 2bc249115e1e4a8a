"""The Triton kernel behind virnucpro::rotary_attention (models/rotary_attention.py): exact
softmax attention within each packed protein, reading q, k and v straight from the qkv
projection's output and applying the query scaling and the rotary embedding as it loads them.

One program per protein and head, walking the protein's blocks of BLOCK_M queries in turn
(the pipeline's proteins are at most 168 tokens, three blocks, from 500 bp chunks), the
programs of one protein's heads launched next to each other, so the rows they read are still
in L2 for the next. Before, one program took one query block, the blocks of a protein counted
up to a power of two so a shift and a mask found them (a division had cost registers), and the
spare programs returned at once: a quarter of the programs on contigs. Walking the blocks
instead took 1.4-3.3 % off a call, with the same bits and the same 128 registers (H200,
benchmarks/RESULTS.md, tenth session). The keys of the protein are visited in
blocks of BLOCK_N with the running-maximum ("online") softmax in fp32; the probabilities are
rounded to the inputs' dtype for the product with v, as flash attention does. The rotation
("rotate half") is applied to the two halves of the head separately, so q k^T is the sum of
two products over head_dim / 2. Each output is computed by one program in one fixed order: no
atomics, deterministic, and a protein's result does not depend on the rest of its batch.

Its time goes to per-element instructions (the keys' rotation, redone for every query block,
and the softmax) and to waiting on memory, not to its matrix products: exp2 with log2e folded
into one multiply-add, and keys rotated without a multiplication by 1.0, took 2-5 % off a call
at the same 128 registers (H200, benchmarks/RESULTS.md, ninth session), while a loop that left
the whole key blocks unmasked took it to 132 registers and was slower. Registers are checked
without a GPU by benchmarks/kernel_registers.py and pinned by a test.
"""

# ruff: noqa: N803 - Triton kernels name their compile-time constants (tile sizes, flags) in capitals

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotated(ptr, cos_ptr, sin_ptr, rows, mask, row_stride, HALF: tl.constexpr, scale, SCALED: tl.constexpr):
    """The two halves of each row's head vector, scaled (SCALED: the queries), rotated in fp32
    and rounded to the input dtype: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) (cos and
    sin are the same for both halves, which share their angles). The keys skip the scaling
    outright rather than multiply by 1.0 and round: they are rotated again for every query block."""
    cols = tl.arange(0, HALF)
    at = rows[:, None] * row_stride + cols[None, :]
    x1 = tl.load(ptr + at, mask=mask[:, None], other=0.0)
    x2 = tl.load(ptr + at + HALF, mask=mask[:, None], other=0.0)
    dtype = x1.dtype
    # scaled in the input dtype first, as the model does (q * scaling, then the rotation)
    if SCALED:
        x1 = (x1 * scale).to(dtype)
        x2 = (x2 * scale).to(dtype)
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    trig = rows[:, None] * (2 * HALF) + cols[None, :]
    cos = tl.load(cos_ptr + trig, mask=mask[:, None], other=0.0)
    sin = tl.load(sin_ptr + trig, mask=mask[:, None], other=0.0)
    return (x1 * cos - x2 * sin).to(dtype), (x2 * cos + x1 * sin).to(dtype)


LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _rotary_attention_kernel(qkv_ptr, cos_ptr, sin_ptr, cu_ptr, out_ptr, scale,
                             H: tl.constexpr, HD: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pair = tl.program_id(0)  # heads vary fastest: neighbouring programs read the same protein's rows
    protein = pair // H  # H is a compile-time constant: a multiplication and a shift
    head = pair % H
    start = tl.load(cu_ptr + protein)
    length = tl.load(cu_ptr + protein + 1) - start
    HALF: tl.constexpr = HD // 2
    row_stride = 3 * H * HD  # qkv is [N, 3, H, hd]
    base = qkv_ptr + start.to(tl.int64) * row_stride + head * HD
    cos_ptr += start * HD  # cos and sin have a row per packed token
    sin_ptr += start * HD
    d = tl.arange(0, HD)
    for q_first in range(0, length, BLOCK_M):
        q_rows = q_first + tl.arange(0, BLOCK_M)
        q_mask = q_rows < length
        q1, q2 = _rotated(base, cos_ptr, sin_ptr, q_rows, q_mask, row_stride, HALF, scale, SCALED=True)
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HD), dtype=tl.float32)
        for k_start in range(0, length, BLOCK_N):
            k_rows = k_start + tl.arange(0, BLOCK_N)
            k_mask = k_rows < length
            k1, k2 = _rotated(base + H * HD, cos_ptr, sin_ptr, k_rows, k_mask, row_stride, HALF, 1.0, SCALED=False)
            v = tl.load(base + 2 * H * HD + k_rows[:, None] * row_stride + d[None, :], mask=k_mask[:, None], other=0.0)
            s = tl.dot(q1, tl.trans(k1)) + tl.dot(q2, tl.trans(k2))  # [BLOCK_M, BLOCK_N] fp32
            s = tl.where(k_mask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # exp(s - m) as exp2(s log2e - m log2e): one fused multiply-add before the hardware's
            # exp2, where tl.exp takes a subtraction, then a multiplication by log2e
            p = tl.math.exp2(s * LOG2E - (m_new * LOG2E)[:, None])
            alpha = tl.math.exp2((m_i - m_new) * LOG2E)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / l_i[:, None]
        at = (start + q_rows).to(tl.int64)[:, None] * (H * HD) + head * HD + d[None, :]
        tl.store(out_ptr + at, out.to(out_ptr.dtype.element_ty), mask=q_mask[:, None])


def launch(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor,
           scale: float, *, block_m: int = 64, block_n: int = 64,
           num_warps: int = 4, num_stages: int = 1) -> torch.Tensor:
    """softmax(rot(q s) rot(k)^T) v within each protein; qkv [N, 3, H, hd] (the projection's
    output), cos and sin [N, hd] fp32 at each token's position, cu_seqlens [B+1] int32;
    returns [N, H, hd] in qkv's dtype. One program per protein and head walks the protein's
    query blocks, so the grid needs no longest length."""
    tokens, three, heads, head_dim = qkv.shape
    assert three == 3 and head_dim % 32 == 0, qkv.shape
    qkv, cos, sin = qkv.contiguous(), cos.contiguous(), sin.contiguous()
    out = qkv.new_empty(tokens, heads, head_dim)
    grid = ((cu_seqlens.numel() - 1) * heads,)
    # Triton launches on the current device: make it qkv's (a worker's GPU need not be device 0)
    with torch.cuda.device(qkv.device if qkv.is_cuda else -1):  # -1: no-op (CPU interpreter)
        _rotary_attention_kernel[grid](qkv, cos, sin, cu_seqlens, out, scale, H=heads, HD=head_dim,
                                       BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
                                       num_stages=num_stages)
    return out
