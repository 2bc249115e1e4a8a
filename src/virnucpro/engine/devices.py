"""Parse --devices and pick each device's numeric precision and batch budget."""

from __future__ import annotations

import torch

from virnucpro.errors import InputError

CPU_BATCH_TOKENS = 8_192
GPU_BATCH_TOKENS = 65_536


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


def default_batch_tokens(device: torch.device) -> int:
    return GPU_BATCH_TOKENS if device.type == "cuda" else CPU_BATCH_TOKENS
