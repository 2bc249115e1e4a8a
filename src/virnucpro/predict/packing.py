"""Right-padded protein tokens -> the packed (padding-free) layout ESM-2's fast path reads.
Host-side work, with numpy, on the worker's preparing thread."""

from __future__ import annotations

import numpy as np
import torch

from virnucpro.models.esm2 import MAX_POOLED_RESIDUES, PackedBatch


def pack_proteins(tokens: torch.Tensor, lengths: torch.Tensor) -> PackedBatch:
    """Right-padded [B, T] tokens -> a PackedBatch (host-side, numpy-speed)."""
    lens = lengths.numpy().astype(np.int64)
    width = tokens.shape[1]
    keep = np.arange(width)[None, :] < lens[:, None]  # [B, T]
    flat = tokens.numpy()[keep]  # [N], row-major keeps proteins back to back
    cu = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=cu[1:])
    seq_index = np.repeat(np.arange(len(lens)), lens)  # [N]
    positions = np.arange(cu[-1]) - cu[:-1][seq_index]  # [N]
    pooled = np.minimum(lens - 2, MAX_POOLED_RESIDUES)  # [B] residues averaged per protein
    width_p = max(int(pooled.max()), 1)
    p = np.arange(width_p)[None, :]
    pool_index = np.where(p < pooled[:, None], cu[:-1, None] + 1 + p, cu[-1])  # [B, P]
    return PackedBatch(
        tokens=torch.from_numpy(flat.astype(np.int64)),
        cu_seqlens=torch.from_numpy(cu.astype(np.int32)),
        positions=torch.from_numpy(positions),
        seq_index=torch.from_numpy(seq_index),
        pool_index=torch.from_numpy(pool_index),
        pool_count=torch.from_numpy(pooled),
        max_len=int(lens.max()),
        cu_seqlens_host=tuple(int(c) for c in cu),
    )
