"""Parse --devices and pick each device's numeric precision and batch budget."""

from __future__ import annotations

import torch

from virnucpro.errors import InputError

CPU_BATCH_TOKENS = 8_192
# ~64k tokens per batch keeps an H200 at full matmul rate; larger batches gain nothing.
MAX_GPU_BATCH_TOKENS = 65_536
MIN_GPU_BATCH_TOKENS = 2_048
# Peak activation memory of ESM-2 per token and per unit of model width, in bytes: bf16
# temporaries of one layer (qkv 3D, fc1/GELU 2 x 4D, residual and norms ~4D: ~15D elements x 2)
# plus the fp32 last hidden state and pooling gather (2 x 4D). Measured about 27 D on an H200
# (benchmarks/check_small_gpu.py: 9.95 GiB peak with ~5.7 GiB of weights and 64k-token
# batches); 64 leaves room for fragmentation and the DNABERT-S batches.
ACTIVATION_BYTES_PER_TOKEN_PER_DIM = 64
# Leave this share of the free memory alone (DNABERT-S batches, fragmentation, other tenants).
FREE_MEMORY_SHARE = 0.6


def resolve_devices(spec: str) -> list[torch.device]:
    """'auto' -> every visible GPU, else the CPU; or a comma list: 'cuda:0,cuda:2', 'cpu,cpu'."""
    spec = spec.strip().lower()
    if spec == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device(f"cuda:{i}") for i in range(count)] or [torch.device("cpu")]
    devices = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            device = torch.device(part)
        except RuntimeError:
            raise InputError(f"--devices: {part!r} is not a device (use auto, cpu, cuda:N)") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise InputError(f"--devices: {part} asked for, but no CUDA GPU is visible")
            index = 0 if device.index is None else device.index
            if index >= torch.cuda.device_count():
                raise InputError(
                    f"--devices: {part} does not exist ({torch.cuda.device_count()} GPU(s) visible)"
                )
            device = torch.device("cuda", index)
        elif device.type != "cpu":
            raise InputError(f"--devices: {part!r} is not supported (use auto, cpu, cuda:N)")
        devices.append(device)
    if not devices:
        raise InputError("--devices is empty")
    return devices


def resolve_dtype(precision: str, device: torch.device, reference: bool) -> torch.dtype:
    """fp32 for the reference path and on CPUs by default; bf16 on GPUs by default."""
    if reference:
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


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
