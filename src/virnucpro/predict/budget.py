"""How many tokens one batch may hold on a device, from the memory the models leave free."""

from __future__ import annotations

import torch

CPU_BATCH_TOKENS = 8_192
# ~64k tokens per batch keeps an H200 at full matmul rate; larger batches gain nothing.
MAX_GPU_BATCH_TOKENS = 65_536
MIN_GPU_BATCH_TOKENS = 2_048
# Peak activation memory of ESM-2 per token and per unit of model width, in bytes: bf16
# temporaries of one layer (qkv 3D, fc1/GELU 2 x 4D, residual and norms ~4D: ~15D elements x 2)
# plus the fp32 last hidden state and pooling gather (2 x 4D). Measured about 27 D on an H200
# (benchmarks/RESULTS.md, check_small_gpu); 64 leaves room for fragmentation and the
# DNABERT-S batches.
ACTIVATION_BYTES_PER_TOKEN_PER_DIM = 64
# Leave this share of the free memory alone (DNABERT-S batches, fragmentation, other tenants).
FREE_MEMORY_SHARE = 0.6


def usable_device_memory(device: torch.device) -> int:
    """Bytes this process may still allocate: the device's free memory, capped by any
    per-process memory fraction (how a 24 GB card is emulated on a larger one)."""
    if device.index is None:  # "cuda" means the current device
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.empty_cache()  # memory cached from loading the models is free to use
    free, total = torch.cuda.mem_get_info(device)
    fraction = torch.cuda.get_per_process_memory_fraction(device)
    allowed = int(fraction * total) - torch.cuda.memory_reserved(device)
    return max(0, min(free, allowed))


def batch_tokens_for(device: torch.device, model_dim: int) -> int:
    """Token budget per batch, from the memory left once the models are resident."""
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    per_token = ACTIVATION_BYTES_PER_TOKEN_PER_DIM * model_dim
    budget = int(usable_device_memory(device) * FREE_MEMORY_SHARE) // per_token
    return max(MIN_GPU_BATCH_TOKENS, min(MAX_GPU_BATCH_TOKENS, budget))
